"""Overhead of the app's SAE training path over calling SAELens directly, same config, same run.

app:    `fra_core.jobs.run_job_dir` on a train-sae job folder -> `run_train_sae` (job status/metrics files,
        live metrics every `log_every` steps, cancellation checks, final evaluation, atomic save).
direct: `LanguageModelSAETrainingRunner(same runner config, override_model=, override_dataset=).run()`
        with `output_path` set (it saves too).
Both get the same already-loaded model and the same dataset, so model loading is not in either figure.
Both build their dataset from the demo texts inside the timing. Runs alternate (direct, app, app, direct,
...) after one untimed warm-up of each, and the minimum of each is compared: on a shared machine the
minimum is the least disturbed measurement (CPU time is printed too; OpenMP spin-waits inflate it under load).

    python benchmarks/bench_sae_overhead.py [--repeats 3] [--tokens 51200] [--model demo|tiny]

Ends with ``overhead_pct=<value>`` (goal: <= 10).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")


def tiny_model(folder: Path):
    """A random 2-layer model with a word tokenizer (saved and reloaded: TL re-reads tokenizers by path)."""
    from fra_core.models import load_local_model, save_local_model
    from fra_core.models.tiny import make_tiny_model
    from fra_core.models.tokenizers import build_tokenizer

    save_local_model(make_tiny_model(n_ctx=64, d_model=64, n_heads=4), folder,
                     tokenizer=build_tokenizer([f"w{i}" for i in range(46)], "word"))
    return load_local_model(folder, "cpu")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=51_200)
    parser.add_argument("--model", default="auto", help="demo | tiny | auto (demo if its weights ship)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-sae-"))
    os.environ["FRA_WORKSPACE"] = str(root / "workspace")
    import datasets
    import torch
    from sae_lens import LanguageModelSAETrainingRunner

    from fra_core.jobs import new_job_dir, run_job_dir
    from fra_core.models.demo import ASSET_DIR, demo_texts
    from fra_core.sae.loaders import hook_width
    from fra_core.sae.train import TrainSAEConfig, build_runner_config, run_train_sae
    from fra_core.workspace import Workspace

    ws = Workspace.from_env()
    use_demo = args.model == "demo" or (args.model == "auto" and
                                        (ASSET_DIR / "model.safetensors").is_file())
    if use_demo:
        from fra_core.models.demo import load_demo_model

        model, model_ref = load_demo_model("cpu", ws), "demo"
    else:
        model, model_ref = tiny_model(ws.models / "tiny"), "tiny"
    base = TrainSAEConfig(model=model_ref, hook_name="blocks.1.ln1.hook_normalized", architecture="topk", k=4,
                          d_sae=512, training_tokens=args.tokens, lr=3e-3, train_batch_size_tokens=512,
                          context_size=64, dataset="demo", n_texts=2000, device="cpu", seed=0, log_every=10,
                          eval_batches=2)
    d_in = hook_width(model, base.hook_name)
    print(f"model={model_ref} hook={base.hook_name} d_in={d_in} d_sae={base.d_sae} arch={base.architecture} "
          f"tokens={base.training_tokens} batch={base.train_batch_size_tokens} threads={torch.get_num_threads()}")

    def direct(i: int) -> float:
        rcfg = build_runner_config(base, d_in, "cpu")
        rcfg.output_path = str(root / f"direct-{i}")
        torch.manual_seed(base.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        dataset = datasets.Dataset.from_dict({"text": demo_texts(base.n_texts, base.seed)})  # as a user would
        LanguageModelSAETrainingRunner(rcfg, override_dataset=dataset, override_model=model).run()
        return time.perf_counter() - t0, time.process_time() - c0

    def app(i: int) -> float:
        cfg = TrainSAEConfig.from_dict({**base.to_dict(), "output_name": f"app-{i}"})
        job_dir = new_job_dir(ws.jobs, "train-sae", cfg)
        t0, c0 = time.perf_counter(), time.process_time()
        code = run_job_dir(job_dir, run_fn=functools.partial(run_train_sae, model=model))
        elapsed = time.perf_counter() - t0, time.process_time() - c0
        if code != 0:
            raise SystemExit(f"app path failed: {(job_dir / 'status.json').read_text()}")
        return elapsed

    warm = base
    base = TrainSAEConfig.from_dict({**base.to_dict(), "training_tokens": 2048})
    direct("warmup"), app("warmup")                                  # first-call costs (lazy imports, allocator)
    base = warm
    times: dict[str, list[tuple[float, float]]] = {"direct": [], "app": []}
    for i in range(args.repeats):
        order = (("direct", direct), ("app", app))
        for name, fn in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
            times[name].append(fn(i))
            wall, cpu = times[name][-1]
            print(f"run {i + 1}/{args.repeats} {name:<6} wall {wall:8.2f} s  cpu {cpu:8.2f} s", flush=True)
    wall = {k: min(t[0] for t in v) for k, v in times.items()}
    cpu = {k: min(t[1] for t in v) for k, v in times.items()}
    print(f"direct_wall_min_s={wall['direct']:.2f} app_wall_min_s={wall['app']:.2f} "
          f"direct_cpu_min_s={cpu['direct']:.2f} app_cpu_min_s={cpu['app']:.2f}")
    print(f"cpu_overhead_pct={100.0 * (cpu['app'] - cpu['direct']) / cpu['direct']:.1f}")
    print(f"overhead_pct={100.0 * (wall['app'] - wall['direct']) / wall['direct']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Restoration benchmark: train a small model for a fixed time budget on eBL fragments, evaluate it on
held-out fragments next to the character n-gram baseline (context on both sides of the gap).

    python benchmarks/bench_restoration.py [--data <eBL JSON>] [--budget 420] [--layers 3] ...

Everything is written to a temporary workspace that is removed at the end. The default budget keeps
the whole run (dataset build, training, evaluation, conversion check) under 10 minutes on 2 CPU cores.
The last line is exactly ``top1=<model> ngram_top1=<baseline> cer=<model CER>`` (test split,
masked characters, known-length gaps).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ebl" / "ebl_fragments_800.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="eBL JSON / JSONL / ATF file")
    p.add_argument("--budget", type=float, default=420.0, help="training time budget in seconds")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="count the budget in wall seconds, or in process CPU seconds (for a busy shared machine: "
                        "with 1 thread, a CPU-second budget is what a dedicated core would do in that wall time)")
    p.add_argument("--max-steps", type=int, default=100_000, help="step cap (the budget usually ends first)")
    p.add_argument("--max-len", type=int, default=128, help="context length (chunks of whole lines)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-mask-rate", type=float, default=0.3,
                   help="mask rate while training (evaluation keeps the dataset's 15 %%)")
    p.add_argument("--ngram-order", type=int, default=6,
                   help="n-gram baseline order (0: choose 3..7 on the validation split; 6 ~ 7 > 5 > 4 on eBL)")
    p.add_argument("--rope-quirk", action="store_true", help="train with the seed's RoPE slicing quirk")
    p.add_argument("--no-convert", action="store_true", help="skip the TransformerLens conversion check")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 is several times faster than 2 for this size on a busy machine")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-restoration-") as tmp:
        os.environ["FRA_WORKSPACE"] = tmp
        import datasets

        datasets.disable_progress_bars()
        from fra_core.restoration.dataset import BuildDatasetConfig, build_restoration_dataset, load_restoration_dataset
        from fra_core.restoration.train import ConsoleProgress, TrainRestorationConfig, run_train_restoration

        build = BuildDatasetConfig(source=args.data, name="bench", max_len=args.max_len, seed=args.seed)
        build_restoration_dataset(build)
        _, vocab, settings = load_restoration_dataset("bench")
        stats = settings["stats"]
        print(f"data: {args.data}")
        print("splits: " + ", ".join(f"{k} {v['fragments']} fragments / {v['examples']} chunks / {v['masked']} masked"
                                     for k, v in stats.items()) + f"; vocab {vocab.size} ids")
        cfg = TrainRestorationConfig(
            dataset="bench", name="bench", n_layers=args.layers, d_model=args.d_model, n_heads=args.heads,
            batch_size=args.batch_size, lr=args.lr, train_mask_rate=args.train_mask_rate, warmup_steps=30,
            max_steps=args.max_steps,
            time_budget_s=args.budget, budget_clock=args.clock, log_every=10, eval_every=10**9, val_examples=32,
            ngram_order=args.ngram_order, rope_quirk=args.rope_quirk, convert=not args.no_convert,
            seed=args.seed, device="cpu", threads=args.threads)
        print(f"model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, context {args.max_len}; "
              f"budget {args.budget:.0f} {args.clock} s")
        result = run_train_restoration(cfg, ConsoleProgress(every_s=30))
    train, ev = result["train"], result["eval"]
    cpu_s = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    print(f"trained {train['steps']} steps in {train['train_s']:.0f} s, final loss {train['final_loss']:.3f} "
          f"(process CPU time so far {cpu_s:.0f} s, {args.threads} thread(s))")
    print(f"{'metric':<22}{'model':>10}{'n-gram':>10}")
    for name in ("top1", "top5", "cer"):
        print(f"{name:<22}{ev['model'][name]:>10.4f}{ev['ngram'][name]:>10.4f}")
    for bucket, row in ev["model"]["cer_by_gap"].items():
        if row["chars"]:
            print(f"{'cer gap ' + bucket:<22}{row['cer']:>10.4f}{ev['ngram']['cer_by_gap'][bucket]['cer']:>10.4f}")
    print(f"held-out: {ev['n_fragments']} fragments, {ev['model']['masked_chars']} masked characters; "
          f"n-gram order {ev['ngram_order']}")
    if "max_abs_dlogit" in result:
        print(f"conversion to TransformerLens: max |dlogit| {result['max_abs_dlogit']:.2e}")
    print(f"wall {time.time() - t_start:.0f} s")
    print(f"top1={ev['model']['top1']:.4f} ngram_top1={ev['ngram']['top1']:.4f} cer={ev['model']['cer']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

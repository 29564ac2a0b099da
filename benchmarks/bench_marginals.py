"""The all-pair marginals against a git reference of fra_core, in ONE process, on the same samples.

    python benchmarks/bench_marginals.py [--ref main] [--reps 5] [--threads 2] [--samples 2]

The GPT-2-shaped case of `bench_allpairs_paths` (12 heads, d_head 64, K = L = 32 active features per
position, T 128, d_sae 24 576, causal mask, diagonal and BOS included), the reference's fra_core extracted
as `fra_core_ref` (`bench_allpairs_compute.extract_ref`). Timed per sample, ref and new alternating, best
of --reps: `sample_marginals` alone (the arguments `batch_marginals` passes it), the whole
`batch_marginals`, and `batch_cotable_and_marginals` (sides + the co-activation table in a worker thread
racing the marginals). It checks that both give the same marginals (float64 rounding: ≤ 1e-12 of the
largest |value|) and prints `ref_s=… new_s=… ratio=…` (ref / new: > 1 is faster) with `uptime`.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))


def captured_args(ab, mg, model, bs, plan, options) -> list[tuple]:
    """The arguments `batch_marginals` passes `sample_marginals`, one tuple per sample of bs."""
    calls, real = [], mg.sample_marginals

    def keep(*args):
        calls.append(args)
        return real(*args)

    mg.sample_marginals = keep
    try:
        ab.batch_marginals(model, 0, bs, plan.projectors, options)
    finally:
        mg.sample_marginals = real
    return calls


def max_rel(a: dict, b: dict) -> float:
    """max over the result's tensors of max |a − b| / max |b|."""
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-300)) for k in b
               if torch.is_tensor(b[k]))


def best(fns: dict, reps: int) -> dict:
    """Best seconds of each callable over reps rounds, the callables alternating within a round."""
    out = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[name] = min(out[name], time.perf_counter() - t)
    return out


def report(what: str, t: dict, n: int) -> None:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    print(f"{what}: ref_s={t['ref'] / n:.4f} new_s={t['new'] / n:.4f} per sample, ratio={t['ref'] / t['new']:.2f}"
          f"  (load{load})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default="main")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from bench_allpairs_compute import extract_ref
    from bench_allpairs_paths import gpt2_shaped, id_texts

    from fra_core.accumulate import AccumulateFRAConfig
    from fra_core.accumulate.run import prepare

    tmp = tempfile.TemporaryDirectory()
    extract_ref(args.ref, Path(tmp.name))
    sys.path.insert(0, tmp.name)
    pkgs = {"ref": "fra_core_ref", "new": "fra_core"}
    ab = {k: importlib.import_module(f"{p}.fra.allpairs_batch") for k, p in pkgs.items()}
    mg = {k: importlib.import_module(f"{p}.fra.marginals") for k, p in pkgs.items()}
    model, sae, _ = gpt2_shaped(T=128)
    cfg = AccumulateFRAConfig(model="bench", q_saes=("bench-sae",), layer=0, n_samples=args.samples, batch_size=1,
                              shard_size=args.samples, k_active=32, context_length=128, top_m=8,
                              include_diagonal=True, exclude_bos_key=False, exclude_bos_query=False,
                              statistics="all_pairs")
    runner = prepare(cfg, model, [sae])
    plan, opts = runner.plans[0], runner.options
    n = args.samples
    with torch.no_grad():
        toks = [model.to_tokens(t) for t in id_texts(n, 128)]
        sides = [ab["new"].batch_sides(model, t, 0, plan.heads, plan.qd, plan.kd, opts) for t in toks]
        calls = [a for bs in sides for a in captured_args(ab["new"], mg["new"], model, bs, plan, opts)]
        worst = max(max_rel(mg["new"].sample_marginals(*a), mg["ref"].sample_marginals(*a)) for a in calls)
        print(f"sample_marginals new vs ref: max relative difference {worst:.2g} "
              f"({'ok' if worst <= 1e-12 else 'DIFFERENT'})", flush=True)

        sm = {k: (lambda a, m=m: m.sample_marginals(*a)) for k, m in mg.items()}
        bm = {k: (lambda bs, m=m: m.batch_marginals(model, 0, bs, plan.projectors, opts)) for k, m in ab.items()}
        bcm = {k: (lambda t, m=m: m.batch_cotable_and_marginals(model, t, 0, plan.heads, plan.qd, plan.kd, opts,
                                                                 plan.projectors)) for k, m in ab.items()}
        for what, fns, inputs in (("sample_marginals", sm, calls), ("batch_marginals", bm, sides),
                                  ("batch_cotable_and_marginals", bcm, toks)):
            runs = {k: (lambda f=f, xs=inputs: [f(x) for x in xs]) for k, f in fns.items()}
            report(what, best(runs, args.reps), n)
    tmp.cleanup()


if __name__ == "__main__":
    main()

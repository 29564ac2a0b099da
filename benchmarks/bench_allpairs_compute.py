"""The all-pair shard body against a git reference of fra_core, in ONE process, on the same samples.

    python benchmarks/bench_allpairs_compute.py [--ref main] [--reps 3] [--threads 2] [--case gpt2|demo]
                                                [--samples 2]

The reference's fra_core (`git show REF:fra_core/...`) is extracted into a temporary folder as the
package `fra_core_ref` (its absolute imports renamed), so both versions run side by side in this
process: `compute_shard` of a --samples shard (default 2) of statistics='all_pairs' on the GPT-2-shaped case of
`bench_allpairs_paths` (12 heads, d_sae 24 576, T 128, Zipf(1.1) activations), alternating ref / new,
best of --reps, after one warm-up shard each (of other samples); --case demo: the demo model, layer 1,
all heads, 32 demo texts in batches of 16 (case a of bench_accumulate).
It checks that both wrote the same numbers (coact counts, max/min and cells bit-identical, sums to
float64 rounding; marginals, node totals, completeness and feature share) and prints
`ref_s=… new_s=… ratio=…` (ratio = ref / new: > 1 is faster). Note `uptime` beside the figures.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))


def extract_ref(ref: str, dest: Path) -> None:
    """fra_core at git ref → dest/fra_core_ref, every `fra_core` import renamed."""
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", ref, "fra_core"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        text = subprocess.run(["git", "show", f"{ref}:{f}"], cwd=ROOT, check=True, capture_output=True).stdout
        out = dest / ("fra_core_ref" + f[len("fra_core"):])
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.endswith(".py"):
            text = re.sub(rb"\bfra_core\b", b"fra_core_ref", text)
        out.write_bytes(text)


def setup(pkg: str, model, sae, case: dict):
    acc = importlib.import_module(f"{pkg}.accumulate")
    run = importlib.import_module(f"{pkg}.accumulate.run")
    contracts = importlib.import_module(f"{pkg}.contracts")
    cfg = acc.AccumulateFRAConfig(model="bench", q_saes=("bench-sae",), top_m=8, include_diagonal=True,
                                  exclude_bos_key=False, exclude_bos_query=False, statistics="all_pairs", **case)
    runner = run.prepare(cfg, model, [sae])
    runner.process_s = []  # seconds of each shard's `process` (the compute; the rest is writing)
    process = runner.process

    def timed(items, buf):
        t = time.perf_counter()
        process(items, buf)
        runner.process_s.append(time.perf_counter() - t)

    runner.process = timed
    return cfg, runner, run, contracts


def shard(state, items, job: Path, part: int) -> float:
    cfg, runner, run, contracts = state
    t = time.perf_counter()
    with torch.no_grad():
        run.compute_shard(runner, cfg, part, items, job)
    return time.perf_counter() - t


def compare(contracts, job_ref: Path, job_new: Path) -> list[str]:
    """Differences between the two shard-0 outputs (empty: the same numbers)."""
    bad = []
    for kind in ("coact", "proj", "marginals", "node_totals", "features"):
        a, b = (contracts.read_shard_table(j, 0, kind).to_pandas() for j in (job_ref, job_new))
        if len(a) != len(b):
            bad.append(f"{kind}: {len(a)} vs {len(b)} rows")
            continue
        for c in a.columns:
            x, y = a[c].to_numpy(), b[c].to_numpy()
            if x.dtype.kind == "f" and c not in ("max", "min", "mx", "mn") and not c.startswith("n"):
                if not np.allclose(x, y, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(x).max(initial=0)))):
                    bad.append(f"{kind}.{c}: max |diff| {np.abs(x - y).max():.3g}")
            elif x.dtype.kind == "O":
                if not all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(x, y)):
                    bad.append(f"{kind}.{c}: not identical")
            elif not np.array_equal(x, y):
                bad.append(f"{kind}.{c}: not identical")
    ia, ib = (contracts.read_run_info(j) for j in (job_ref, job_new))
    for key, rtol in (("feature_share", 1e-6), ("completeness", None)):
        va, vb = ia.get(key, {}), ib.get(key, {})
        for L, hs in va.items():
            for h, v in hs.items():
                w = vb.get(L, {}).get(h)
                if w is None or (rtol is not None and abs(v - w) > rtol * abs(v)) or (rtol is None and w > 1e-4):
                    bad.append(f"{key}[{L}][{h}]: {v} vs {w}")
    return bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default="main")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--case", choices=("gpt2", "demo"), default="gpt2")
    ap.add_argument("--samples", type=int, default=2, help="samples in the GPT-2-shaped shard (its one batch each)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from bench_allpairs_paths import gpt2_shaped, id_texts

    if args.case == "gpt2":
        model, sae, _ = gpt2_shaped(T=128)
        n = args.samples
        items = list(enumerate(id_texts(n + 1, 128)))
        case = dict(layer=0, n_samples=n, batch_size=1, shard_size=n, k_active=32, context_length=128)
    else:  # the demo model, layer 1, all heads, 32 demo texts in batches of 16 (as bench_accumulate's case a)
        from fra_core.models.demo import demo_texts, load_demo_model
        from fra_core.sae import load_sae
        from fra_core.sae.demo import ensure_demo_saes
        from fra_core.workspace import Workspace

        workspace = Workspace.from_env()
        model = load_demo_model("cpu", workspace=workspace)
        ensure_demo_saes(workspace)
        sae = load_sae("demo-l1-ln1", "cpu", workspace)
        n = 32
        items = list(enumerate(demo_texts(n + 16, seed=0)))
        case = dict(layer=1, n_samples=n, batch_size=16, shard_size=n, k_active=min(64, getattr(sae.cfg, "k", 64)),
                    context_length=64)
    with tempfile.TemporaryDirectory() as tmp:
        extract_ref(args.ref, Path(tmp))
        sys.path.insert(0, tmp)
        states = {"ref": setup("fra_core_ref", model, sae, case), "new": setup("fra_core", model, sae, case)}
        jobs = {name: Path(tmp) / f"job-{name}" for name in states}
        for name, st in states.items():
            jobs[name].mkdir()
            st[3].write_run_info(jobs[name], st[1].run_info())
            shard(st, items[n:], jobs[name], 1)  # warm-up: other samples' shard
        times = {name: [] for name in states}
        for _ in range(args.reps):
            for name, st in states.items():
                times[name].append(shard(st, items[:n], jobs[name], 0))
        bad = compare(states["new"][3], jobs["ref"], jobs["new"])
    best = {name: min(t) for name, t in times.items()}
    proc = {name: min(st[1].process_s[1:]) for name, st in states.items()}  # [0]: the warm-up shard
    print("times (s):", {name: [round(x, 3) for x in t] for name, t in times.items()})
    print("process (s, best):", {name: round(x, 3) for name, x in proc.items()},
          f"ratio={proc['ref'] / proc['new']:.2f}; the rest (writing the shard):",
          {name: round(best[name] - proc[name], 3) for name in best})
    print("same numbers" if not bad else "DIFFERENCES: " + "; ".join(bad))
    print(f"ref_s={best['ref']:.3f} new_s={best['new']:.3f} ratio={best['ref'] / best['new']:.2f}")


if __name__ == "__main__":
    main()

r"""Exact FRA engine vs the float64 reference on a GPT-2-Small-shaped random model.

    python benchmarks/bench_fra.py [--T 128] [--k 64] [--d-sae 24576] [--layer 5] [--top-m 8] [--samples 2]
                                   [--threads 2] [--device cpu|cuda] [--baseline DIR]

Model: d_model 768, 12 heads of d_head 64, d_mlp 3072, LayerNorm, GPT-2 vocabulary and n_ctx; only
layers 0..L are built (layers above L never influence layer L's scores). Dictionary: a random sae_lens
TopK SAE (k = 64, so L0 = 64 exactly) with d_sae 24 576 on blocks.L.ln1.hook_normalized, on both
sides. Engine work timed = compute_fra for all 12 heads (top-m per (i, j), diagonal excluded) + every
(sample, head)'s dense node×node terms (so the whole decomposition) + pair_aggregates; seconds per
sample-head = that / (samples · 12), best of --repeats calls after one warm-up call (which also fills
the engine's cache of projected decoder rows), as wall-clock and as CPU seconds of this process (on a
loaded machine the wall clock mostly measures the neighbours; with several threads the CPU figure
includes OpenMP spin-waits, so compare CPU figures at --threads 1).
--baseline DIR: DIR/fra_orig is an older copy of fra_core/fra with its imports rewritten to fra_orig
(e.g. `cp -r fra_core/fra DIR/fra_orig && sed -i s/fra_core\.fra/fra_orig/g DIR/fra_orig/*.py`); it is
timed alternately with the current engine in the same process, and its T = 512 peak measured too.

Reference (`fra_core.fra.reference_fra`, float64, a Python loop over (query, key) pairs): measured on
one head and a few query rows, then extrapolated to all T(T+1)/2 causal pairs: its per-position setup
is timed separately (query_rows=[]) and added once; per-pair time = (rows run − setup) / pairs visited.

Peak memory: each T runs in a fresh subprocess; a thread samples the process RSS (/proc/self/statm)
every 2 ms during compute_fra + pair_aggregates of one sample × 12 heads; reported = peak RSS − RSS just
before the call (torch allocations included; tracemalloc would miss them).
The last line is: s_per_sample_head=<s> reference_s=<s> speedup=<x> peak_mb_T512=<MB>
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(layer: int, d_sae: int, k: int, seed: int = 0, device: str = "cpu"):
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=layer + 1, d_model=768, n_heads=12, d_head=64, d_mlp=3072,
                                  d_vocab=50257, n_ctx=1024, act_fn="gelu_new", normalization_type="LN",
                                  device=device, seed=seed)
    model = HookedTransformer(cfg).eval()
    sae = TopKSAE(TopKSAEConfig(d_in=768, d_sae=d_sae, k=k,
                                metadata=SAEMetadata(hook_name=f"blocks.{layer}.ln1.hook_normalized"))).eval()
    with torch.no_grad():
        sae.W_enc.normal_(0, 768 ** -0.5)
        sae.W_dec.normal_(0, 768 ** -0.5)
        sae.b_dec.normal_(0, 0.05)
    return model, sae.to(device)


def fra_api(baseline: str | None = None):
    """The engine package: fra_core.fra, or (`--baseline DIR`) an older copy saved as DIR/fra_orig (its
    imports rewritten from fra_core.fra to fra_orig), to time old and new in the same process."""
    if baseline is None:
        import fra_core.fra as api
    else:
        sys.path.insert(0, baseline)
        import fra_orig as api
    return api


def engine_run(model, sae, tokens, layer, opts, api=None):
    if api is None:
        import fra_core.fra as api

    result = api.compute_fra(model, tokens, layer, None, sae, None, opts)
    # the dense node×node terms (Σ features, SAE error, b_dec, truncation, ln1.b, bias) are computed on
    # demand: materialise every (sample, head)'s, so the time covers the whole decomposition
    for b in range(tokens.shape[0]):
        for hi in range(len(result.heads)):
            result.node_terms(b, hi)
    return result, api.pair_aggregates(result)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(T: int, args) -> None:
    """Run in a subprocess: print {"T": T, "peak_mb": ...} as JSON."""
    import gc

    import torch

    torch.set_num_threads(args.threads)
    model, sae = build(args.layer, args.d_sae, args.k, device=args.device)
    tokens = torch.randint(0, 50257, (1, T), generator=torch.Generator().manual_seed(1))
    api = fra_api(args.baseline)
    opts = options(args, api)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    gc.collect()
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    with torch.no_grad():
        result, agg = engine_run(model, sae, tokens, args.layer, opts, api)
    sync(args)
    seconds = time.perf_counter() - t0
    gpu_peak = (torch.cuda.max_memory_allocated() - gpu_base) / 2**20 if cuda else None
    done.set()
    thread.join()
    peak[0] = max(peak[0], rss_mb())
    print(json.dumps({"T": T, "peak_mb": peak[0] - base, "gpu_peak_mb": gpu_peak, "seconds": seconds,
                      "entries": result.n_entries, "pairs": int(agg["n"].numel())}))


def measure_memory(T: int, args, baseline: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", str(T), "--layer", str(args.layer), "--d-sae",
           str(args.d_sae), "--k", str(args.k), "--top-m", str(args.top_m), "--threads", str(args.threads),
           "--device", args.device] + (["--baseline", baseline] if baseline else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_engine(model, sae, args):
    """Best-of-`repeats` seconds per sample-head (wall and CPU); with --baseline, old and new alternate."""
    import torch

    tokens = torch.randint(0, 50257, (args.samples, args.T), generator=torch.Generator().manual_seed(0))
    apis = {"engine": fra_api()}
    if args.baseline:
        apis["baseline"] = fra_api(args.baseline)
    best = {name: [float("inf"), float("inf")] for name in apis}
    with torch.no_grad():
        for api in apis.values():  # warm-up (allocator, rotary caches, projected decoder rows)
            engine_run(model, sae, tokens, args.layer, options(args, api), api)
        for _ in range(args.repeats):
            for name, api in apis.items():
                sync(args)
                t0, c0 = time.perf_counter(), time.process_time()
                result, agg = engine_run(model, sae, tokens, args.layer, options(args, api), api)
                sync(args)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
                if name == "engine":
                    out = result, agg
    n = args.samples * 12
    for name, (wall, cpu) in best.items():
        print(f"{name}: {args.samples} samples x 12 heads, T={args.T}, K={args.k}, top_m={args.top_m}: best of "
              f"{args.repeats} = {wall:.3f} s wall ({wall / n:.4f} s per sample-head), {cpu:.3f} s CPU "
              f"({cpu / n:.4f} CPU-s per sample-head, {args.threads} threads)")
    result, agg = out
    print(f"engine: {result.n_entries} entries, {agg['n'].numel()} distinct pairs, max L0 {result.q_side.max_l0}, "
          f"completeness error {result.completeness_error():.2e}")
    if args.baseline:
        print(f"engine vs baseline (same run): wall x{best['baseline'][0] / best['engine'][0]:.2f}, "
              f"CPU x{best['baseline'][1] / best['engine'][1]:.2f}")
    return best["engine"][0] / n, tokens


def options(args, api=None):
    if api is None:
        import fra_core.fra as api

    # GPUs want bigger blocks than CPU caches do; the baseline keeps the block size it was tuned with
    if args.device.startswith("cuda"):
        chunk = 1 << 26
    else:
        chunk = 1 << 23 if api.__name__ == "fra_orig" else api.FRAOptions.chunk_elements
    return api.FRAOptions(k_active=args.k, top_m=args.top_m, chunk_elements=chunk)


def sync(args) -> None:
    if args.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_reference(model, sae, tokens, args):
    import torch

    from fra_core.fra import FRAOptions, reference_fra, reference_pair_aggregates

    opts = FRAOptions(k_active=args.k, top_m=args.top_m)
    T = args.T
    rows = sorted({T - 1, (3 * T) // 4, T // 2, T // 4})[-args.ref_rows:]
    with torch.no_grad():
        ref = reference_fra(model, tokens[:1], args.layer, [0], sae, None, opts, query_rows=rows)
        t0 = time.perf_counter()
        reference_pair_aggregates(ref["entries"])
        agg = time.perf_counter() - t0
    per_pair = (ref["pairs_s"] + agg) / ref["n_pairs"]
    total_pairs = T * (T + 1) // 2
    estimate = ref["setup_s"] + per_pair * total_pairs
    print(f"reference (extrapolated): measured on head 0, query rows {rows} = {ref['n_pairs']} of {total_pairs} "
          f"causal pairs; per-position setup {ref['setup_s']:.2f} s (all {T} positions, counted once) + "
          f"{per_pair * 1e3:.2f} ms/pair x {total_pairs} pairs = {estimate:.1f} s per sample-head")
    return estimate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=128)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--d-sae", type=int, default=24576)
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument("--top-m", type=int, default=8)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ref-rows", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the reference always runs on the CPU)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-lengths", default="128,512",
                        help="comma-separated sequence lengths of the peak-memory runs (the last line reports 512)")
    parser.add_argument("--skip-reference", action="store_true", help="engine timings only (speedup = nan)")
    parser.add_argument("--baseline", default=None,
                        help="folder holding an older engine copy as fra_orig/ (timed in the same run)")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    import torch

    if args.memory_child is not None:
        memory_child(args.memory_child, args)
        return 0
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} (shared machine: timings are noisy)")
    model, sae = build(args.layer, args.d_sae, args.k, device=args.device)
    engine_s, tokens = time_engine(model, sae, args)
    if args.device != "cpu":
        print(f"device {args.device}: {torch.cuda.get_device_name()}; reference on the CPU")
        model, sae = model.to("cpu"), sae.to("cpu")
    reference_s = float("nan") if args.skip_reference else time_reference(model, sae, tokens, args)
    peaks = {}
    if not args.skip_memory:
        for T in (int(t) for t in args.memory_lengths.split(",")):
            m = measure_memory(T, args)
            peaks[T] = m["peak_mb"]
            gpu = f", GPU peak allocated +{m['gpu_peak_mb']:.0f} MB" if m["gpu_peak_mb"] is not None else ""
            print(f"memory T={T}: peak RSS increase {m['peak_mb']:.0f} MB during compute_fra + pair_aggregates "
                  f"(1 sample x 12 heads, {m['seconds']:.2f} s, {m['entries']} entries){gpu}")
            if m["gpu_peak_mb"] is not None:
                peaks[T] = max(peaks[T], m["gpu_peak_mb"])
            if args.baseline:
                mb = measure_memory(T, args, args.baseline)
                print(f"memory T={T} baseline: peak RSS increase {mb['peak_mb']:.0f} MB ({mb['seconds']:.2f} s, "
                      f"{mb['entries']} entries)")
    print(f"engine {engine_s:.4f} s per sample-head, reference {reference_s:.2f} s, ratio {reference_s / engine_s:.0f}x")
    # four significant figures, so the printed speedup is the printed reference over the printed engine time
    print(f"s_per_sample_head={engine_s:.4g} reference_s={reference_s:.4g} speedup={reference_s / engine_s:.4g} "
          f"peak_mb_T512={peaks.get(512, float('nan')):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

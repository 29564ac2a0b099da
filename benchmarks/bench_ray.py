"""Accumulation on Ray vs the local executor: demo model, all heads of layer 1, the same config three times.

    python benchmarks/bench_ray.py [--samples 192] [--shard-size 16] [--batch-size 16] [--threads 1]
                                   [--address ADDR]

Runs the local executor (this process, --threads torch threads), then `executor: ray` with 1 and 2
worker actors (1 CPU and 1 torch thread each; on a GPU cluster each worker takes a GPU) on a local Ray
cluster started here (or the cluster at --address / $RAY_ADDRESS), checks that all three wrote identical
shards, and prints samples/s two ways: "compute" counts from the first shard submitted (workers loaded),
"wall" includes starting the workers (process start, imports, model + SAE load). Also the bytes the
shards take per million samples (for the capacity model in the README). On 2 shared cores expect
overhead, not speed-up: two 1-thread workers compete with the same two cores that one 2-thread local
run uses. The last line is `local_samples_per_s=… ray1_samples_per_s=… ray2_samples_per_s=…` (compute).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()[0]:.2f}"


def _shard_bytes(job_dir: Path) -> tuple[int, int]:
    from fra_core import contracts

    files = [p for p in contracts.shards_dir(job_dir).iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(len(m["samples"]) for m in contracts.complete_shards(job_dir))


def _same_shards(a: Path, b: Path) -> bool:
    from fra_core import contracts

    ma, mb = contracts.complete_shards(a), contracts.complete_shards(b)
    if [m["samples"] for m in ma] != [m["samples"] for m in mb]:
        return False
    return all(contracts.read_shard_table(a, m["shard"], k).equals(contracts.read_shard_table(b, m["shard"], k))
               for m in ma for k in contracts.KINDS)


def _run(cfg, root: Path, name: str) -> tuple[Path, dict, float]:
    from fra_core.accumulate.job import run_accumulate
    from fra_core.jobs import Progress

    job = root / name
    job.mkdir()
    t0 = time.perf_counter()
    result = run_accumulate(cfg, Progress(job))
    return job, result, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch (and OpenMP) threads of the local executor; 1 = like each Ray worker")
    parser.add_argument("--address", default="", help="an existing Ray cluster (default: $RAY_ADDRESS, else local)")
    parser.add_argument("--local-child", default="", help=argparse.SUPPRESS)  # internal: the local run's job folder
    args = parser.parse_args(argv)

    import dataclasses

    import ray
    import torch

    from fra_core import contracts
    from fra_core.accumulate import AccumulateFRAConfig
    from fra_core.models.demo import load_demo_model
    from fra_core.sae.demo import ensure_demo_saes
    from fra_core.workspace import Workspace

    torch.set_num_threads(args.threads)
    workspace = Workspace.from_env()
    load_demo_model("cpu", workspace=workspace)
    if not (workspace.saes / "demo-l1-ln1" / "sae_weights.safetensors").is_file() \
            and "demo-l1-ln1" not in ensure_demo_saes(workspace):
        raise SystemExit("the demo SAE demo-l1-ln1 is not available (training failed?)")
    cfg = AccumulateFRAConfig(model="demo", q_saes=("demo-l1-ln1",), layer=1, dataset="demo", n_samples=args.samples,
                              context_length=args.context_length, batch_size=args.batch_size,
                              shard_size=args.shard_size)
    if args.local_child:
        job, result, wall = _run(cfg, Path(args.local_child), "local")
        print(f"child: {result['samples_per_s']} {result['samples'] / wall} {wall}")
        return 0
    print(f"config: {args.samples} samples, shards of {args.shard_size}, batch {args.batch_size}, "
          f"context {args.context_length}; {os.cpu_count()} cores; {_load()}", flush=True)
    rates, walls = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # the local executor as a job process runs it: its own process, OpenMP sized by the environment (a
        # thread count set only by torch.set_num_threads leaves OpenMP's spinning threads behind, which on
        # busy shared cores costs up to 3x; Ray sets OMP_NUM_THREADS for its workers)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        child = subprocess.run([sys.executable, __file__, "--local-child", str(root), *(argv or sys.argv[1:])],
                               env=env, capture_output=True, text=True, check=False)
        line = next((x for x in child.stdout.splitlines() if x.startswith("child: ")), None)
        if child.returncode or line is None:
            raise SystemExit(f"local run failed:\n{child.stderr[-2000:]}")
        rates["local"], walls["local"], wall = (float(v) for v in line.split()[1:])
        local = root / "local"
        print(f"local ({args.threads} threads, own process): {wall:.1f} s wall; {_load()}", flush=True)

        t0 = time.perf_counter()
        address = args.address or os.environ.get("RAY_ADDRESS") or None
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False)
        resources = ray.cluster_resources()
        print(f"Ray {ray.__version__} cluster up in {time.perf_counter() - t0:.1f} s: "
              f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs", flush=True)
        try:
            for n in (1, 2):
                ray_cfg = dataclasses.replace(cfg, executor="ray", ray_workers=n, ray_cpus_per_worker=1)
                job, result, wall = _run(ray_cfg, root, f"ray{n}")
                rates[f"ray{n}"], walls[f"ray{n}"] = result["samples_per_s"], result["samples"] / wall
                devices = ", ".join(sorted({w.get("device", "?") for w in result["workers"]}))
                print(f"ray{n} ({n} workers on {devices}): {wall:.1f} s wall incl. worker start; identical shards "
                      f"to local: {_same_shards(job, local)}; {_load()}", flush=True)
        finally:
            ray.shutdown()
        size, n_samples = _shard_bytes(local)
        rows = contracts.complete_shards(local)[0]["rows"]
    for name in rates:
        print(f"{name}: compute {rates[name]:.1f} samples/s, wall {walls[name]:.1f} samples/s; "
              f"vs local x{rates[name] / rates['local']:.2f} (compute)")
    print(f"scaling ray2 / ray1: x{rates['ray2'] / rates['ray1']:.2f} compute, x{walls['ray2'] / walls['ray1']:.2f} wall")
    print(f"shards: {size / n_samples * 1e6 / 1e9:.1f} GB per million samples (all shard files, zstd Parquet, "
          f"{args.shard_size}-sample shards of this config; shard 0 rows: {rows})")
    print(f"local_samples_per_s={rates['local']:.1f} ray1_samples_per_s={rates['ray1']:.1f} "
          f"ray2_samples_per_s={rates['ray2']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

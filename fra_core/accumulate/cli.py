"""Headless accumulation: ``python -m fra_core accumulate --config run.yaml [--job-dir DIR] [--ingest]``.

Runs the same job as the accumulation page, in this process, writing into a job folder of the workspace;
bad input exits 2 with a one-line reason. `--ingest` then loads the shards into the workspace database.
`--executor ray [--ray-address ADDR] [--ray-workers N]` spreads the shards over a Ray cluster (the
config's executor fields, overridden; on `--job-dir` the job's config.yaml is updated: either executor
writes the same shards, so a job may be resumed on the other one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from fra_core.accumulate.config import EXECUTORS, KIND, AccumulateFRAConfig
from fra_core.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fra_core accumulate",
                                description="Accumulate FRA pair statistics over a dataset (resumable).")
    p.add_argument("--config", help="YAML file (AccumulateFRAConfig, e.g. saved from the app)")
    p.add_argument("--job-dir", help="resume this existing job folder instead of creating a new one")
    p.add_argument("--ingest", action="store_true",
                   help="ingest the shards into the workspace database at the end (skipped if the app holds it)")
    ray = p.add_argument_group("executor (overrides the config's fields)")
    ray.add_argument("--executor", choices=EXECUTORS, help="local: this process; ray: shard tasks on Ray workers")
    ray.add_argument("--ray-address", help="Ray cluster address ('auto', 'ray://head:10001'); default $RAY_ADDRESS, "
                     "else a local cluster started by the job")
    ray.add_argument("--ray-workers", type=int, help="worker actors (0 = one per GPU, else one per CPU)")
    ray.add_argument("--ray-gpus-per-worker", type=float, help="GPUs per worker (-1 = 1 if the cluster has GPUs)")
    ray.add_argument("--ray-cpus-per-worker", type=float, help="CPUs per worker (its torch threads)")
    return p


def _overrides(args) -> dict:
    names = ("executor", "ray_address", "ray_workers", "ray_gpus_per_worker", "ray_cpus_per_worker")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _ingest(job_dir: Path) -> int:
    """Ingest through the store's own CLI in a child process: fra_core never imports store (imports run
    one way, store → fra_core.contracts), and the DuckDB file is opened only by the process that writes."""
    from fra_core.workspace import Workspace

    repo_root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "store", "ingest", str(job_dir), str(Workspace.from_env().db_path)]
    return subprocess.run(cmd, check=False, env=env).returncode


def cli_main(argv: list[str]) -> int:
    from fra_core import jobs
    from fra_core.datasets import open_texts
    from fra_core.workspace import Workspace

    args = _parser().parse_args(argv)
    try:
        if args.job_dir:
            job_dir = Path(args.job_dir)
            cfg = AccumulateFRAConfig.load_yaml(job_dir / "config.yaml")
        elif args.config:
            cfg = AccumulateFRAConfig.load_yaml(args.config)
            job_dir = None
        else:
            raise ConfigError("give --config <file.yaml> (or --job-dir <folder> to resume)")
        overrides = _overrides(args)
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)  # validated again by the config itself
            if job_dir is not None:  # resume with another executor: the job's files say so too
                cfg.save_yaml(job_dir / "config.yaml")
                meta = jobs.read_json(job_dir / "job.json", {}) or {}
                jobs.write_json_atomic(job_dir / "job.json", {**meta, "run": jobs.JOB_KINDS[KIND][1]})
        open_texts(cfg.dataset, cfg.text_column, cfg.split, cfg.seed)  # fail fast on a bad dataset
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if job_dir is None:
        job_dir = jobs.new_job_dir(Workspace.from_env().jobs, KIND, cfg)
    print(f"job folder: {job_dir}", flush=True)
    for var, n in jobs.thread_env(job_dir).items():  # before torch loads; an explicit environment wins
        os.environ.setdefault(var, n)
    # the traceback of a failure goes to the job's log; the terminal gets one line
    with open(job_dir / "log.txt", "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
        code = jobs.run_job_dir(job_dir)
    status = jobs.job_status(job_dir)
    if code != 0:
        print(f"error: {status.get('message', 'failed')} (details: {job_dir / 'log.txt'})", file=sys.stderr)
        return code
    result = status.get("result", {})
    from fra_core.accumulate.run import fmt_rate

    print(f"done: {result.get('samples')} samples in {result.get('shards')} shards, "
          f"{status.get('wall_s', 0):.1f} s ({fmt_rate(result.get('samples_per_s') or 0.0)} after loading)", flush=True)
    return _ingest(job_dir) if args.ingest else 0

"""Accumulation on a Ray cluster (config `executor: ray`, chosen by `job.run_accumulate`): the same shards as the local job, computed by
worker actors on many GPUs or machines.

Map: the driver (the job process) reads the dataset in its fixed order and cuts it into the same shards
as the local loop (shard i = samples [i·shard_size, (i+1)·shard_size), `run.shard_items`). It starts
`ray_workers` actors (`ShardWorker`); each loads the model and SAEs once (`run.prepare`, on its GPU when
it has one) and computes a shard with `run.compute_shard` — the very function the local loop calls — so
either executor writes identical shards, atomically (temp name + os.replace, manifest last) into the job
folder, which must therefore be a path every worker can write (one machine, or a shared filesystem).
Only the shard's texts travel to the worker; only a small receipt comes back.

Reduce: unchanged. The app (or `python -m fra_core accumulate --ingest`) ingests the shards as they land;
`status.json` (the job's Progress) counts the finished shards of the whole cluster, and the cancel file
kills the actors.

Faults: a killed worker is restarted by Ray and its shard retried (`RETRIES` times; max_restarts /
max_task_retries). A shard with a manifest is never redone: the driver skips complete shards before
submitting, and the task itself returns at once when the manifest exists (a retry of a task that had
already written its shard), so nothing is counted twice. A killed driver leaves complete shards behind;
rerunning the same job folder computes only the missing ones.
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from fra_core import contracts
from fra_core.accumulate.config import AccumulateError, AccumulateFRAConfig
from fra_core.accumulate.run import _report, clear_temp_files, shard_items, start_run_info
from fra_core.datasets import open_texts
from fra_core.errors import FRAStudioError

RETRIES = 3  # worker restarts and task retries after a worker process dies
POLL_S = 0.5  # how often the driver reports progress and checks the cancel file while shards run
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2  # a local cluster only moves texts and receipts through it
PASS_ENV = ("FRA_WORKSPACE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERLENS_ALLOW_MPS")
REPO_ROOT = Path(__file__).resolve().parents[2]


class ShardWorker:
    """One worker (a Ray actor): loads the model and SAEs once, then computes shards on request.

    A load failure (bad SAE, model mismatch) is kept and reported by `info()` as one line, so the driver
    fails with the reason instead of Ray's actor-death traceback."""

    def __init__(self, cfg: dict[str, Any], threads: int):
        import torch

        from fra_core.accumulate.run import prepare

        torch.set_num_threads(max(1, threads))
        self.cfg, self.parts, self.error = AccumulateFRAConfig.from_dict(cfg), None, None
        try:
            self.parts = prepare(self.cfg)
        except Exception as exc:  # noqa: BLE001 - reported to the driver by info()
            self.error = f"{type(exc).__name__}: {exc}"

    def info(self) -> dict[str, Any]:
        out = {"pid": os.getpid(), "node": socket.gethostname(), "error": self.error}
        if self.parts is not None:
            out.update(device=str(self.parts.model.cfg.device), run_info=self.parts.run_info())
        return out

    def compute(self, shard: int, items: list[tuple[int, str]], job_dir: str) -> dict[str, Any]:
        """Write shard `shard` unless its manifest exists; a receipt {shard, samples, skipped, pid, seconds}."""
        from fra_core.accumulate.run import compute_shard

        t0 = time.time()
        manifest = contracts.read_json(contracts.shard_path(job_dir, shard, "manifest"))
        if manifest is not None:  # written by an earlier attempt of this task (or another run): never redo it
            n, skipped = len(manifest["samples"]), True
        else:
            if self.parts is None:
                raise AccumulateError(f"worker could not load the model and SAEs: {self.error}")
            n, skipped = compute_shard(self.parts, self.cfg, shard, items, Path(job_dir)), False
        return {"shard": shard, "samples": n, "skipped": skipped, "pid": os.getpid(), "seconds": time.time() - t0}


def _connect(cfg: AccumulateFRAConfig):
    """Attach to the cluster (ray_address, else $RAY_ADDRESS) or start a local one. Returns the ray
    module and whether this call initialised Ray (then the job disconnects / stops it at the end)."""
    import ray

    if ray.is_initialized():  # a notebook or test that started Ray itself
        return ray, False
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=True)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ... : one line for the user
        where = f"the Ray cluster at {address!r}" if address else "a local Ray cluster"
        raise AccumulateError(f"could not start or reach {where}: {type(exc).__name__}: {exc}") from exc
    return ray, True


def _runtime_env() -> dict[str, Any]:
    """What a worker needs of the driver's environment: the workspace (models and SAEs by name) and this
    code on its import path (on other machines: the same paths, i.e. a shared or identical checkout)."""
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    from fra_core.workspace import Workspace

    env["FRA_WORKSPACE"] = str(Workspace.from_env().root.resolve())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {"env_vars": env}


def plan_workers(cfg: AccumulateFRAConfig, resources: dict[str, float], missing_shards: int) -> tuple[int, float, float]:
    """(workers, GPUs each, CPUs each) for a cluster with `resources` (ray.cluster_resources())."""
    n_gpus, n_cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    gpus = cfg.ray_gpus_per_worker if cfg.ray_gpus_per_worker >= 0 else (1.0 if n_gpus > 0 else 0.0)
    cpus = cfg.ray_cpus_per_worker
    fit = int(n_gpus // gpus) if gpus > 0 else int(n_cpus // cpus)
    workers = cfg.ray_workers or fit
    if workers > fit or fit == 0:
        raise AccumulateError(f"ray_workers={workers} × ({gpus:g} GPU, {cpus:g} CPU) does not fit the Ray cluster "
                              f"({n_gpus:g} GPUs, {n_cpus:g} CPUs): lower ray_workers or the per-worker resources")
    return max(1, min(workers, missing_shards)), gpus, cpus


def _start_workers(ray, cfg: AccumulateFRAConfig, n: int, gpus: float, cpus: float, progress, n_done: int):
    options = dict(num_gpus=gpus, num_cpus=cpus, max_restarts=RETRIES, max_task_retries=RETRIES,
                   runtime_env=_runtime_env())
    Worker = ray.remote(ShardWorker).options(**options)
    actors = [Worker.remote(cfg.to_dict(), int(math.ceil(cpus))) for _ in range(n)]
    pending = {a.info.remote(): i for i, a in enumerate(actors)}
    infos: dict[int, dict] = {}
    try:
        while pending:  # loading takes a while: keep reporting and honour cancel meanwhile
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            for ref in ready:
                infos[pending.pop(ref)] = ray.get(ref)
            progress.update(n_done, cfg.n_samples, message=f"Ray: {len(infos)}/{n} workers loaded the model and SAEs")
    except BaseException:
        _kill(ray, actors)
        raise
    workers = [infos[i] for i in range(n)]
    bad = next((w for w in workers if w["error"]), None)
    if bad is not None:
        _kill(ray, actors)
        raise AccumulateError(f"Ray worker on {bad['node']} (pid {bad['pid']}) could not load the model and SAEs: "
                              f"{bad['error']}")
    return actors, workers


def _kill(ray, actors) -> None:
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001, S110 - already dead
            pass


def _receipt(ray, ref, shard: int) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # an error inside compute_shard (e.g. disk full): its own message
        cause = getattr(exc, "cause", None)
        if isinstance(cause, FRAStudioError):
            raise cause from None
        raise AccumulateError(f"shard {shard} failed on a Ray worker: {cause or exc}") from exc
    except ray.exceptions.RayActorError as exc:
        raise AccumulateError(f"the Ray worker computing shard {shard} died {RETRIES + 1} times ({exc.__class__.__name__}); "
                              "complete shards are kept: resume the job to compute the rest") from exc


def accumulate_ray(cfg: AccumulateFRAConfig, progress) -> dict[str, Any]:
    """Job body for `executor: ray` (called by `job.run_accumulate`): same result keys as the local loop,
    plus executor, workers, worker_restarts and computed_shards."""
    job_dir = Path(progress.job_dir).resolve()
    source = open_texts(cfg.dataset, cfg.text_column, cfg.split, cfg.seed)  # fail fast before Ray starts
    progress.update(0, cfg.n_samples, message="connecting to Ray", force=True)
    ray, owned = _connect(cfg)
    try:
        return _drive(ray, cfg, progress, job_dir, source)
    finally:
        if owned:
            ray.shutdown()


def _drive(ray, cfg: AccumulateFRAConfig, progress, job_dir: Path, source) -> dict[str, Any]:
    done = {int(m["shard"]): len(m["samples"]) for m in contracts.complete_shards(job_dir)}
    clear_temp_files(job_dir)  # a killed run's half-written files (no worker of this job runs yet)
    n_done = n_start = sum(done.values())
    missing = max(0, math.ceil(cfg.n_samples / cfg.shard_size) - len(done))
    progress.update(n_done, cfg.n_samples, force=True,
                    message=f"resuming after {n_done} samples ({len(done)} shards)" if n_done else "starting Ray workers")
    todo = ((s, items) for s, items in shard_items(source, cfg) if s not in done)
    nxt = next(todo, None)
    actors, workers, in_flight, computed, restarts = [], [], {}, [], set()
    t0 = time.time()
    try:
        if nxt is not None:
            n, gpus, cpus = plan_workers(cfg, ray.cluster_resources(), missing)
            actors, workers = _start_workers(ray, cfg, n, gpus, cpus, progress, n_done)
            start_run_info(job_dir, workers[0]["run_info"])
            t0 = time.time()
        idle, clock, first_pids = list(actors), 0.0, {w["pid"] for w in workers}
        while nxt is not None or in_flight:
            while idle and nxt is not None:  # one shard in flight per worker; the dataset is read as needed
                actor = idle.pop()
                in_flight[actor.compute.remote(nxt[0], nxt[1], str(job_dir))] = (actor, nxt[0])
                nxt = next(todo, None)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
            for ref in ready:
                actor, shard = in_flight.pop(ref)
                receipt = _receipt(ray, ref, shard)
                idle.append(actor)
                if receipt["pid"] not in first_pids:
                    restarts.add(receipt["pid"])
                if shard not in done:  # counted once, whoever wrote it
                    done[shard] = receipt["samples"]
                    n_done += receipt["samples"]
                    if not receipt["skipped"]:
                        computed.append(shard)
            clock = _report(progress, cfg, n_done, n_start, t0, clock, shards=len(done), workers=workers,
                            shards_in_flight=sorted(s for _, s in in_flight.values()))
    finally:
        _kill(ray, actors)  # normal end, cancel (JobCancelled from progress) or failure: stop every worker
    rate = (n_done - n_start) / max(time.time() - t0, 1e-9)
    seen = sum(len(m["samples"]) for m in contracts.complete_shards(job_dir))
    note = "" if seen >= cfg.n_samples else f" (the dataset has only {seen} texts)"
    progress.update(n_done, cfg.n_samples, message=f"finished: {n_done} samples on {len(workers)} Ray workers{note}",
                    force=True)
    return {"samples": n_done, "shards": len(done), "new_samples": n_done - n_start, "samples_per_s": rate,
            "dataset_texts": seen, "executor": "ray", "workers": workers, "worker_restarts": len(restarts),
            "computed_shards": sorted(computed)}

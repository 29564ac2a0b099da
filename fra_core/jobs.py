"""Background jobs: one process per job, talking to the app only through files in its job folder.

A job folder (``$FRA_WORKSPACE/jobs/<job_id>/``) holds::

    job.json       {"kind": ..., "created": ...}            written once at launch
    config.yaml    the frozen job config (runs unchanged in the CLI)
    status.json    {"state", "done", "total", "rate", "eta_s", "message", "pid", "updated", ...}
    metrics.jsonl  one JSON object per logged step (loss, l0, ...)
    log.txt        the process's stdout/stderr
    cancel         present => the job stops at its next progress check
    shards/ ...    job-specific outputs (written atomically: temp name, then os.replace)

The job process is started with ``start_new_session=True`` so it survives a closed browser tab and an
app restart. States: queued -> running -> done | failed | cancelled; a "running" job whose pid is gone
reads as "died" and can be resumed (jobs are written to be idempotent on resume).

This module imports no torch: pages that only watch jobs stay light.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# the job-status file format lives in the torch-free contracts module (the store reads it too); jobs re-exports it
from fra_core.config import JobConfig
from fra_core.contracts import TERMINAL_STATES, job_status, pid_alive, read_json, runner_active, write_json_atomic
from fra_core.errors import FRAStudioError
from fra_core.jobqueue import JobBusy, device_slot, job_device, runner_lock

# kind -> ("module:ConfigClass", "module:run_function"); run_function(cfg, progress) -> dict (result).
# A launched job records its two specs in job.json, and its process resolves them from there, so a kind
# added with `register_job_kind` (tests, plugins) runs without being listed here.
JOB_KINDS: dict[str, tuple[str, str]] = {
    "train-sae": ("fra_core.sae.train:TrainSAEConfig", "fra_core.sae.train:run_train_sae"),
    "accumulate": ("fra_core.accumulate:AccumulateFRAConfig", "fra_core.accumulate.job:run_accumulate"),
    "train-restoration": (
        "fra_core.restoration.train:TrainRestorationConfig",
        "fra_core.restoration.train:run_train_restoration",
    ),
}


__all__ = ["JOB_KINDS", "TERMINAL_STATES", "ConsoleProgress", "JobCancelled", "JobInfo", "NullProgress", "Progress",
           "cancel_job", "config_class", "fmt_rate", "job_status", "launch_job", "list_jobs", "new_job_dir", "pid_alive",
           "read_json", "read_metrics", "register_job_kind", "run_job_dir", "start_process", "write_json_atomic"]


def fmt_rate(rate: Any, unit: str = "samples", unknown: str = "—") -> str:
    """A job's rate for people: '2.35 samples/s', or '20 s per sample' below 0.1/s (a fixed '.1f' printed
    0.05/s as '0.0'); `unknown` when the rate is None, 0 or not a finite number."""
    try:
        r = float(rate)
    except (TypeError, ValueError):
        return unknown
    if not (math.isfinite(r) and r > 0):
        return unknown
    return f"{r:.3g} {unit}/s" if r >= 0.1 else f"{1 / r:.3g} s per {unit.rstrip('s')}"


class JobCancelled(Exception):
    """Raised inside a job when its cancel file appears."""


def _resolve(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def register_job_kind(kind: str, config_spec: str, run_spec: str) -> None:
    """Add a job kind ("module:ConfigClass", "module:run_function") to this process's registry."""
    JOB_KINDS[kind] = (config_spec, run_spec)


def _specs(kind: str) -> tuple[str, str]:
    if kind not in JOB_KINDS:
        raise FRAStudioError(f"unknown job kind {kind!r}; known: {sorted(JOB_KINDS)}")
    return JOB_KINDS[kind]


def config_class(kind: str) -> type[JobConfig]:
    return _resolve(_specs(kind)[0])


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


class Progress:
    """Handed to a job's run function: report progress, log metrics, check for cancellation."""

    def __init__(self, job_dir: Path, min_interval_s: float = 0.5):
        self.job_dir = Path(job_dir)
        self.min_interval_s = min_interval_s
        self._t0 = time.time()
        self._last_write = 0.0
        self._status = read_json(self.job_dir / "status.json", {}) or {}
        self._start_done: float | None = None  # progress already made before this process (resume)

    @property
    def cancel_requested(self) -> bool:
        return (self.job_dir / "cancel").exists()

    def check_cancel(self) -> None:
        if self.cancel_requested:
            raise JobCancelled("cancelled by user")

    def update(self, done: float, total: float | None = None, message: str = "", force: bool = False,
               **extra: Any) -> None:
        """Record progress (throttled to one write per `min_interval_s`) and honour cancellation.

        extra `rate=` (units/s) is the job's own measured rate (e.g. from its first sample, after the
        model loaded); without it the rate is progress since this Progress was made, loading included."""
        now = time.time()
        elapsed = max(now - self._t0, 1e-9)
        if self._start_done is None:
            self._start_done = done
        rate = extra.pop("rate", None)
        rate = (done - self._start_done) / elapsed if rate is None else float(rate)
        eta = (total - done) / rate if total is not None and rate > 0 else None
        self._status.update(state="running", done=done, total=total, rate=rate, eta_s=eta,
                            elapsed_s=elapsed, message=message, updated=_now(), pid=os.getpid(), **extra)
        if force or now - self._last_write >= self.min_interval_s:
            write_json_atomic(self.job_dir / "status.json", self._status)
            self._last_write = now
        self.check_cancel()

    def log_metrics(self, step: int, **metrics: float) -> None:
        with open(self.job_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")

    def log(self, text: str) -> None:
        print(text, flush=True)


class NullProgress:
    """The Progress interface doing nothing: for in-process calls (tests, benchmarks, library use)."""

    def update(self, done, total=None, message="", force=False, **extra) -> None:
        pass

    def log_metrics(self, step, **metrics) -> None:
        pass

    def log(self, text: str) -> None:
        pass


class ConsoleProgress(NullProgress):
    """Progress for the CLI: one line every `every_s` seconds, prefixed with the job kind."""

    def __init__(self, prefix: str = "job", every_s: float = 5.0):
        self.prefix, self.every_s, self._last = prefix, every_s, 0.0

    def update(self, done, total=None, message="", force=False, **extra) -> None:
        if force or time.time() - self._last >= self.every_s:
            self._last = time.time()
            print(f"[{self.prefix}] {message or f'{done}/{total}'}", flush=True)

    def log(self, text: str) -> None:
        print(text, flush=True)


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    kind: str
    path: Path
    status: dict[str, Any]

    @property
    def state(self) -> str:
        return self.status.get("state", "unknown")


def new_job_dir(jobs_root: Path, kind: str, cfg: JobConfig, owner: str | None = None) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    job_dir = Path(jobs_root) / f"{kind}-{stamp}-{cfg.config_hash()[:8]}"
    suffix = 1
    while job_dir.exists():
        suffix += 1
        job_dir = job_dir.with_name(f"{job_dir.name.split('~')[0]}~{suffix}")
    job_dir.mkdir(parents=True)
    config_spec, run_spec = _specs(kind)
    write_json_atomic(job_dir / "job.json", {"kind": kind, "created": _now(), "config_hash": cfg.config_hash(),
                                             "config_class": config_spec, "run": run_spec, "owner": owner})
    cfg.save_yaml(job_dir / "config.yaml")
    write_json_atomic(job_dir / "status.json", {"state": "queued", "updated": _now()})
    return job_dir


def start_process(job_dir: Path, env: dict[str, str] | None = None) -> int:
    """Start (or restart, for resume) the job process for an existing job folder; returns its pid.
    JobBusy if a process is running it now (one runner per job: `fra_core.jobqueue`)."""
    job_dir = Path(job_dir)
    if runner_active(job_dir):
        raise JobBusy(f"job {job_dir.name} is already running; cancel it first or wait")
    (job_dir / "cancel").unlink(missing_ok=True)
    log = open(job_dir / "log.txt", "ab")
    repo_root = Path(__file__).resolve().parent.parent
    # the job's own CPU thread count, set BEFORE torch loads in the child: OpenMP sizes its pool at import,
    # and on a busy machine OMP_NUM_THREADS=1 ran ≈ 3.5× faster than torch.set_num_threads(1) alone
    full_env = {**os.environ, **thread_env(job_dir), **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), full_env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fra_core.jobs", "run", str(job_dir)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=full_env, cwd=os.getcwd(),
    )
    log.close()
    status = read_json(job_dir / "status.json", {}) or {}
    write_json_atomic(job_dir / "status.json", {**status, "state": "queued", "pid": proc.pid, "updated": _now()})
    return proc.pid


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def auto_threads() -> int:
    """min(usable CPU cores, 4): the default of a job config's `threads` field (0 = auto)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def job_threads(job_dir: Path) -> int | None:
    """The CPU threads a job folder's config asks for (`threads`; 0 = `auto_threads()`), None when its
    config has no `threads` field (job kinds without one keep the environment's setting)."""
    import yaml

    try:
        data = yaml.safe_load((Path(job_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    value = data.get("threads") if isinstance(data, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return None
    return value or auto_threads()


def thread_env(job_dir: Path) -> dict[str, str]:
    """{OMP/MKL/OpenBLAS_NUM_THREADS: n} for the job process (empty without a `threads` field)."""
    n = job_threads(job_dir)
    return {} if n is None else {v: str(n) for v in THREAD_VARS}


def launch_job(jobs_root: Path, kind: str, cfg: JobConfig, env: dict[str, str] | None = None,
               owner: str | None = None) -> Path:
    """Create a job folder for `cfg` (owned by `owner`) and start its process in the background."""
    if not isinstance(cfg, config_class(kind)):
        raise TypeError(f"job kind {kind!r} needs a {config_class(kind).__name__}, got {type(cfg).__name__}")
    job_dir = new_job_dir(jobs_root, kind, cfg, owner)
    start_process(job_dir, env)
    return job_dir


def _cancel_if_asked(job_dir: Path, message: str) -> None:
    if (Path(job_dir) / "cancel").exists():
        raise JobCancelled(message)


def cancel_job(job_dir: Path) -> None:
    (Path(job_dir) / "cancel").write_text(_now(), encoding="utf-8")


def list_jobs(jobs_root: Path, kind: str | None = None) -> list[JobInfo]:
    """Newest first."""
    out = []
    root = Path(jobs_root)
    if not root.is_dir():
        return out
    for job_dir in sorted(root.iterdir(), reverse=True):
        meta = read_json(job_dir / "job.json")
        if not meta or (kind and meta.get("kind") != kind):
            continue
        out.append(JobInfo(job_dir.name, meta["kind"], job_dir, job_status(job_dir)))
    return out


def read_metrics(job_dir: Path) -> list[dict[str, Any]]:
    path = Path(job_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now
    return rows


def run_job_dir(job_dir: Path, run_fn: Callable | None = None) -> int:
    """Body of the job process (also callable in-process by tests). Returns an exit code; 4 (and the job
    untouched) when another process is running this job."""
    try:
        with runner_lock(job_dir):
            return _run_locked(Path(job_dir), run_fn)
    except JobBusy as exc:
        print(f"not started: {exc}", file=sys.stderr, flush=True)
        return 4


def _run_locked(job_dir: Path, run_fn: Callable | None) -> int:
    meta = read_json(job_dir / "job.json") or {}
    kind = meta.get("kind", "?")
    status = read_json(job_dir / "status.json", {}) or {}
    base = {"pid": os.getpid(), "started": _now(), "kind": kind}
    write_json_atomic(job_dir / "status.json", {**status, **base, "state": "running", "message": "starting"})
    t0 = time.time()
    try:
        config_spec, run_spec = (meta["config_class"], meta["run"]) if "run" in meta else _specs(kind)
        cfg = _resolve(config_spec).load_yaml(job_dir / "config.yaml")
        run = run_fn or _resolve(run_spec)
        with device_slot(job_dir, job_device(cfg), lambda: _cancel_if_asked(job_dir, "cancelled while queued")):
            progress = Progress(job_dir)
            result = run(cfg, progress) or {}
        final = {**progress._status, **base, "state": "done", "message": "finished",
                 "result": result, "wall_s": time.time() - t0, "updated": _now()}
        code = 0
    except JobCancelled as exc:
        final = {**read_json(job_dir / "status.json", {}), "state": "cancelled", "message": str(exc),
                 "updated": _now(), "wall_s": time.time() - t0}
        code = 3
    except Exception as exc:  # noqa: BLE001 - the job reports every failure in its status
        traceback.print_exc()
        final = {**read_json(job_dir / "status.json", {}), "state": "failed",
                 "message": f"{type(exc).__name__}: {exc}", "updated": _now(), "wall_s": time.time() - t0}
        code = 1
    write_json_atomic(job_dir / "status.json", final)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m fra_core.jobs run <job_dir>", file=sys.stderr)
        return 2
    # run in the imported module, not in __main__: other modules raise fra_core.jobs.JobCancelled, which
    # `python -m fra_core.jobs` would otherwise see as a different class
    return importlib.import_module("fra_core.jobs").run_job_dir(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main())

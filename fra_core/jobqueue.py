"""One runner per job, job owners, and a per-device queue (no torch, no streamlit).

* Runner lock: the job process holds an exclusive `flock` on `<job>/runner.lock` for as long as it runs
  (the OS drops it when the process dies, kill -9 included). A second runner of the same job (two resumes
  at once) cannot take it and exits without touching the job; `start_process` refuses while it is held,
  and `job_status` reads a job whose lock is held as alive whatever pid its status names.
* Owners: `job.json` records who launched the job; `authorize` lets admins act on any job, researchers
  on their own, viewers on none.
* Queue: with a cap per device (server mode: `gpu_jobs`, `cpu_jobs` of the server config; or
  `FRA_JOB_CAPS="cuda=1,cpu=2"`), a job process waits in state "queued" for one of the device's slot
  locks (`jobs/.slots/<device>-<i>.lock`), first come first served, showing its queue position; a
  cancel while queued stops it. Jobs survive app restarts: queue and locks live in the job processes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from fra_core.contracts import RUNNER_LOCK as LOCK_FILE
from fra_core.contracts import runner_active
from fra_core.errors import FRAStudioError
from fra_core.server import ServerConfig

SLOTS_DIR = ".slots"
POLL_S = 0.5


class JobBusy(FRAStudioError):
    """Another process is already running this job."""


class JobPermissionError(FRAStudioError):
    """The user may not do this to this job."""


def _try_lock(path: Path, exclusive: bool = True):
    """An open fd holding the lock, or None if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def runner_lock(job_dir: Path) -> Iterator[None]:
    fd = _try_lock(Path(job_dir) / LOCK_FILE)
    if fd is None:
        raise JobBusy(f"job {Path(job_dir).name} is already running in another process")
    try:
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- owners
def job_owner(job_dir: Path) -> str | None:
    from fra_core.contracts import read_json

    return (read_json(Path(job_dir) / "job.json") or {}).get("owner")


def authorize(job_dir: Path, user: str, role: str | None, action: str) -> None:
    """Raise JobPermissionError unless `user` (with `role`) may `action` (cancel/resume/delete) the job."""
    if role == "admin":
        return
    owner = job_owner(job_dir)
    if role == "researcher" and owner is not None and owner == user:
        return
    who = f"{user or 'nobody'} ({role or 'no role'})"
    raise JobPermissionError(f"{who} may not {action} job {Path(job_dir).name}: it belongs to "
                             f"{owner or 'nobody recorded'}; only its owner or an admin may")


# ----------------------------------------------------------------------------- device queue
def device_caps() -> dict[str, int] | None:
    """{device: concurrent jobs} or None (no cap: local mode without FRA_JOB_CAPS)."""
    text = os.environ.get("FRA_JOB_CAPS", "").strip()
    if text:
        caps = {}
        for part in text.split(","):
            device, _, n = part.partition("=")
            if not n.strip().isdigit() or int(n) < 1:
                raise ValueError(f"FRA_JOB_CAPS entry {part.strip()!r}: expected <device>=<whole number >= 1>")
            caps[device.strip()] = int(n)
        return caps
    cfg = ServerConfig.load()
    if cfg is None:
        return None
    return {"cuda": cfg.gpu_jobs, "mps": cfg.gpu_jobs, "cpu": cfg.cpu_jobs}


def job_device(cfg: Any) -> str:
    """The device type a job config will run on ('cpu', 'cuda', 'mps')."""
    requested = str(getattr(cfg, "device", "cpu") or "auto")
    if requested in ("cpu", "cuda", "mps") or requested.startswith("cuda:"):
        return requested.split(":")[0]
    from fra_core.devices import pick_device  # imports torch: the job process needs it anyway

    return pick_device(None).type


def queue_position(jobs_root: Path, job_dir: Path, device: str) -> int:
    """1 + the number of jobs waiting for `device` that were queued before this one."""
    from fra_core.contracts import read_json

    mine = read_json(Path(job_dir) / "status.json", {}) or {}
    key = (mine.get("queued_at", ""), Path(job_dir).name)
    ahead = 0
    for other in Path(jobs_root).iterdir():
        if other == Path(job_dir) or not (other / LOCK_FILE).exists():
            continue
        status = read_json(other / "status.json", {}) or {}
        if status.get("state") == "queued" and status.get("waiting_for") == device and runner_active(other):
            ahead += (status.get("queued_at", ""), other.name) < key
    return ahead + 1


@contextlib.contextmanager
def device_slot(job_dir: Path, device: str, check_cancel: Callable[[], None],
                caps: dict[str, int] | None = None) -> Iterator[None]:
    """Hold one of `device`'s slots while the block runs; wait for one first in state "queued", with
    the queue position in the status; `check_cancel()` runs while waiting (it raises when the user
    cancels)."""
    caps = device_caps() if caps is None else caps
    cap = (caps or {}).get(device)
    if not cap:
        yield
        return
    job_dir = Path(job_dir)
    slots = [job_dir.parent / SLOTS_DIR / f"{device}-{i}.lock" for i in range(cap)]
    _status(job_dir, state="queued", waiting_for=device, queued_at=now())
    fd = None
    while fd is None:
        position = queue_position(job_dir.parent, job_dir, device)
        free = [s for s in slots if not _held(s)]
        if position <= len(free):
            fd = next((f for f in (_try_lock(s) for s in free) if f is not None), None)
        if fd is None:
            _status(job_dir, state="queued", queue_position=position,
                    message=f"queued: position {position} for {cap} {device} slot{'s' * (cap > 1)}")
            check_cancel()
            time.sleep(POLL_S)
    try:
        _status(job_dir, state="running", waiting_for=None, queue_position=None, started=now(),
                message=f"started on a {device} slot")
        yield
    finally:
        os.close(fd)


def _status(job_dir: Path, **changes: Any) -> None:
    from fra_core.contracts import read_json, write_json_atomic

    status = read_json(job_dir / "status.json", {}) or {}
    write_json_atomic(job_dir / "status.json", {**status, **changes, "pid": os.getpid(), "updated": now()})


def _held(path: Path) -> bool:
    fd = _try_lock(path)
    if fd is None:
        return True
    os.close(fd)
    return False


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="microseconds")

"""A trivial job kind for testing the job machinery itself (registered by the tests, not in production)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fra_core import jobs
from fra_core.config import JobConfig
from fra_core.jobs import Progress, register_job_kind

KIND = "test-sleep"


@dataclass(frozen=True)
class SleepConfig(JobConfig):
    """A trivial job used to test the job machinery itself (steps of `step_s` seconds)."""

    steps: int = 5
    step_s: float = 0.1


def run_sleep(cfg: SleepConfig, progress: Progress) -> dict:
    for step in range(cfg.steps):
        time.sleep(cfg.step_s)
        progress.log_metrics(step, value=float(step))
        progress.update(step + 1, cfg.steps, message=f"step {step + 1}/{cfg.steps}")
    return {"steps": cfg.steps}


def register() -> str:
    register_job_kind(KIND, f"{__name__}:SleepConfig", f"{__name__}:run_sleep")
    return KIND


def wait_for_state(job_dir, states=jobs.TERMINAL_STATES, timeout: float = 60.0) -> dict:
    """Poll a job's status until its state is one of `states`; its status dict (AssertionError on timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = jobs.job_status(job_dir)
        if status.get("state") in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{job_dir.name} stuck in {jobs.job_status(job_dir)}")

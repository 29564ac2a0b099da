"""One runner per job (two concurrent resumes: one runs, one exits untouched), owners (researchers act on
their own jobs only, admins on any, viewers on none), and the per-device queue (cap 1: the second job waits,
queued with its position, and the two never overlap)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fra_core import jobs
from fra_core.jobqueue import JobBusy, JobPermissionError, authorize, device_caps, runner_active, runner_lock
from tests.conftest import REPO_ROOT
from tests.fra_core.sleep_job import SleepConfig
from tests.fra_core.sleep_job import register as register_sleep
from tests.fra_core.sleep_job import wait_for_state as _wait

KIND = register_sleep()  # the test-only job kind


def _runner(job_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "fra_core.jobs", "run", str(job_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_resumes_run_the_job_once(workspace):
    job_dir = jobs.new_job_dir(workspace.jobs, KIND, SleepConfig(steps=10, step_s=0.1))
    first, second = _runner(job_dir), _runner(job_dir)
    codes = sorted([first.wait(60), second.wait(60)])
    assert codes == [0, 4], codes
    assert jobs.job_status(job_dir)["state"] == "done"
    assert [row["step"] for row in jobs.read_metrics(job_dir)] == list(range(10))  # each step once


def test_start_process_refuses_a_running_job_and_status_trusts_the_lock(workspace):
    job_dir = jobs.launch_job(workspace.jobs, KIND, SleepConfig(steps=40, step_s=0.05))
    _wait(job_dir, ("running",))
    with pytest.raises(JobBusy, match="already running"):
        jobs.start_process(job_dir)
    with pytest.raises(JobBusy):
        with runner_lock(job_dir):
            pass
    assert _wait(job_dir)["state"] == "done"  # written by the runner just before it exits
    deadline = time.time() + 60
    while runner_active(job_dir) and time.time() < deadline:
        time.sleep(0.05)
    with runner_lock(job_dir):  # free again once the runner is gone
        status = jobs.read_json(job_dir / "status.json")
        jobs.write_json_atomic(job_dir / "status.json", {**status, "state": "running", "pid": 999_999_999})
        assert jobs.job_status(job_dir)["state"] == "running"  # a dead pid, but a runner holds the lock
    assert jobs.job_status(job_dir)["state"] == "died"


def test_owners_and_roles(workspace):
    job_dir = jobs.new_job_dir(workspace.jobs, KIND, SleepConfig(), owner="alice@example.org")
    assert jobs.read_json(job_dir / "job.json")["owner"] == "alice@example.org"
    authorize(job_dir, "alice@example.org", "researcher", "cancel")
    authorize(job_dir, "root@example.org", "admin", "delete")
    with pytest.raises(JobPermissionError, match="may not cancel job .* belongs to alice@example.org"):
        authorize(job_dir, "bob@example.org", "researcher", "cancel")
    with pytest.raises(JobPermissionError):
        authorize(job_dir, "alice@example.org", "viewer", "resume")
    legacy = jobs.new_job_dir(workspace.jobs, KIND, SleepConfig(steps=1))
    with pytest.raises(JobPermissionError, match="nobody recorded"):
        authorize(legacy, "bob@example.org", "researcher", "delete")


def test_device_cap_queues_the_second_job(workspace, monkeypatch):
    monkeypatch.setenv("FRA_JOB_CAPS", "cpu=1")
    assert device_caps() == {"cpu": 1}
    a = jobs.launch_job(workspace.jobs, KIND, SleepConfig(steps=12, step_s=0.1))
    _wait(a, ("running",))
    b = jobs.launch_job(workspace.jobs, KIND, SleepConfig(steps=3, step_s=0.05))
    deadline = time.time() + 30
    while "position 1" not in str(jobs.job_status(b).get("message")) and time.time() < deadline:
        time.sleep(0.05)
    status = jobs.job_status(b)
    assert status["state"] == "queued" and status["queue_position"] == 1, status
    assert _wait(a)["state"] == "done" and _wait(b)["state"] == "done"
    last_a = max(r["time"] for r in jobs.read_metrics(a))
    first_b = min(r["time"] for r in jobs.read_metrics(b))
    assert first_b > last_a  # never both on the device at once


def test_cancel_while_queued(workspace, monkeypatch):
    monkeypatch.setenv("FRA_JOB_CAPS", "cpu=1")
    a = jobs.launch_job(workspace.jobs, KIND, SleepConfig(steps=30, step_s=0.1))
    _wait(a, ("running",))
    b = jobs.launch_job(workspace.jobs, KIND, SleepConfig(steps=3, step_s=0.05))
    _wait(b, ("queued",))
    jobs.cancel_job(b)
    assert _wait(b)["state"] == "cancelled" and jobs.read_metrics(b) == []
    jobs.cancel_job(a)
    assert _wait(a)["state"] == "cancelled"


def test_bad_caps_are_refused(monkeypatch):
    monkeypatch.setenv("FRA_JOB_CAPS", "cuda=zero")
    with pytest.raises(ValueError, match="FRA_JOB_CAPS entry 'cuda=zero'"):
        device_caps()


from fra_core import jobs
from tests.fra_core import sleep_job
from tests.fra_core.sleep_job import SleepConfig
from tests.fra_core.sleep_job import wait_for_state as _wait

KIND = sleep_job.register()


def test_job_runs_in_background_process(workspace):
    job_dir = jobs.launch_job(workspace.jobs, KIND, SleepConfig(steps=3, step_s=0.05))
    status = _wait(job_dir, jobs.TERMINAL_STATES)
    assert status["state"] == "done", status
    assert status["result"] == {"steps": 3}
    assert [m["step"] for m in jobs.read_metrics(job_dir)] == [0, 1, 2]
    assert jobs.list_jobs(workspace.jobs)[0].job_id == job_dir.name
    assert SleepConfig.load_yaml(job_dir / "config.yaml") == SleepConfig(steps=3, step_s=0.05)


def test_cancel_stops_the_job(workspace):
    job_dir = jobs.launch_job(workspace.jobs, KIND, SleepConfig(steps=200, step_s=0.05))
    _wait(job_dir, ("running",))
    jobs.cancel_job(job_dir)
    status = _wait(job_dir, jobs.TERMINAL_STATES)
    assert status["state"] == "cancelled"


def test_failure_is_reported_not_raised(workspace):
    job_dir = jobs.new_job_dir(workspace.jobs, KIND, SleepConfig(steps=1))

    def boom(cfg, progress):
        raise ValueError("dataset is empty")

    assert jobs.run_job_dir(job_dir, run_fn=boom) == 1
    status = jobs.job_status(job_dir)
    assert status["state"] == "failed" and "dataset is empty" in status["message"]


def test_dead_process_reads_as_died(workspace):
    job_dir = jobs.new_job_dir(workspace.jobs, KIND, SleepConfig(steps=1))
    jobs.write_json_atomic(job_dir / "status.json", {"state": "running", "pid": 999_999_99})
    assert jobs.job_status(job_dir)["state"] == "died"

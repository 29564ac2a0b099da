"""Accumulation on Ray (executor: ray) against a local cluster this module starts on loopback: the same
shards as the local executor, row for row; a worker killed during a task changes nothing; a resumed job
computes only the missing shards; a complete shard is never redone."""

import os
import signal

import pytest
import ray

from fra_core import contracts
from fra_core.accumulate import AccumulateError, AccumulateFRAConfig
from fra_core.accumulate.job import run_accumulate
from fra_core.config import ConfigError
from fra_core.jobs import JobCancelled, Progress
from tests.fra_core.accumulate_helpers import save_parts, tiny_demo_model, tiny_sae

CFG = dict(model="tiny", q_saes=("tiny-sae",), n_samples=20, batch_size=2, shard_size=4, top_m=3, k_active=6,
           context_length=24, examples_per_pair=2, device="cpu")
RAY = dict(executor="ray", ray_workers=2, ray_cpus_per_worker=1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A workspace holding the tiny model and SAE by name (Ray workers load them from there)."""
    from fra_core.workspace import Workspace

    root = tmp_path_factory.mktemp("ray-ws") / "workspace"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FRA_WORKSPACE", str(root))
        ws = Workspace(root)
        model = tiny_demo_model(ws.root)
        save_parts(ws, model, tiny_sae(model))
        yield ws


@pytest.fixture(scope="module")
def cluster(saved, tmp_path_factory):
    """A 2-CPU Ray cluster on this machine, small object store, its temp files under the test's tmp path."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2,
             _temp_dir=str(tmp_path_factory.mktemp("ray")), log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_reference(saved, tmp_path_factory):
    """The local executor's job folder for CFG (one torch thread, like each Ray worker)."""
    import torch

    job = tmp_path_factory.mktemp("local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_accumulate(AccumulateFRAConfig(**CFG), Progress(job))
    finally:
        torch.set_num_threads(threads)
    assert result["samples"] == 20 and result["shards"] == 5
    return job


def assert_same_shards(a, b, shards=None) -> None:
    """Every shard table of job folder `a` equals `b`'s, row for row (float64 sums to rounding, the rest exactly);
    `shards`: only those."""
    ma, mb = ([m for m in contracts.complete_shards(j) if shards is None or m["shard"] in shards] for j in (a, b))
    assert [(m["shard"], m["samples"], m["rows"]) for m in ma] == [(m["shard"], m["samples"], m["rows"]) for m in mb]
    sums = {"sum", "abs_sum", "diag_sum", "diag_abs_sum", "s", "abs", "diag_s", "diag_abs"}  # pairs and coact
    for m in ma:
        for kind in contracts.KINDS:
            ta = contracts.read_shard_table(a, m["shard"], kind)
            tb = contracts.read_shard_table(b, m["shard"], kind)
            exact = [c for c in ta.column_names if c not in sums]
            assert ta.num_rows == tb.num_rows and ta.select(exact).equals(tb.select(exact)), (kind, m["shard"])
            for col in sums & set(ta.column_names):
                assert ta[col].to_numpy() == pytest.approx(tb[col].to_numpy(), rel=1e-12, abs=1e-12), (kind, col)
    assert contracts.read_run_info(a)["sources"] == contracts.read_run_info(b)["sources"]


class KillWorkerOnce(Progress):
    """SIGKILLs one Ray worker process (the job's first worker) while it has a shard in flight."""

    def __init__(self, job_dir):
        super().__init__(job_dir)
        self.killed = None

    def update(self, done, total=None, message="", force=False, **extra):
        super().update(done, total, message, force, **extra)
        workers, in_flight = extra.get("workers"), extra.get("shards_in_flight")
        if self.killed is None and workers and in_flight and done >= CFG["shard_size"]:
            self.killed = workers[0]["pid"]
            os.kill(self.killed, signal.SIGKILL)


class CancelAfterShards(Progress):
    def __init__(self, job_dir, n_shards):
        super().__init__(job_dir)
        self.n_shards = n_shards

    def update(self, done, total=None, message="", force=False, **extra):
        super().update(done, total, message, force, **extra)
        if extra.get("shards", 0) >= self.n_shards:
            raise JobCancelled("test cancel")


def test_ray_run_equals_local_run(cluster, local_reference, tmp_path):
    job = tmp_path / "ray"
    job.mkdir()
    result = run_accumulate(AccumulateFRAConfig(**CFG, **RAY), Progress(job))
    assert result["samples"] == 20 and result["shards"] == 5 and result["computed_shards"] == [0, 1, 2, 3, 4]
    assert len({w["pid"] for w in result["workers"]}) == 2 and result["worker_restarts"] == 0
    assert_same_shards(job, local_reference)
    status = contracts.read_json(job / "status.json")
    assert status["done"] == 20 and status["shards"] == 5


@pytest.mark.slow  # a worker restart reloads torch + TransformerLens + SAELens: ~30 s on 2 busy cores
def test_killed_worker_is_retried_to_the_same_shards(cluster, local_reference, tmp_path):
    job = tmp_path / "kill"
    job.mkdir()
    progress = KillWorkerOnce(job)
    result = run_accumulate(AccumulateFRAConfig(**CFG, **RAY), progress)
    assert progress.killed is not None
    assert result["worker_restarts"] >= 1 and result["samples"] == 20
    samples = sorted(s for m in contracts.complete_shards(job) for s in m["samples"])
    assert samples == list(range(20))  # each sample exactly once
    assert_same_shards(job, local_reference)


@pytest.mark.slow  # two rounds of worker start-up: ~30 s on 2 busy cores
def test_resumed_ray_job_computes_only_missing_shards(cluster, local_reference, tmp_path):
    job = tmp_path / "resume"
    job.mkdir()
    cfg = AccumulateFRAConfig(**CFG, **RAY)
    with pytest.raises(JobCancelled):  # the driver stops (cancel, or a killed job process): workers are killed
        run_accumulate(cfg, CancelAfterShards(job, 2))
    first = {m["shard"]: contracts.shard_path(job, m["shard"], "manifest").stat().st_mtime_ns
             for m in contracts.complete_shards(job)}
    assert 2 <= len(first) < 5
    result = run_accumulate(cfg, Progress(job))
    assert result["computed_shards"] == sorted(set(range(5)) - set(first))
    assert result["new_samples"] == 20 - 4 * len(first) and result["samples"] == 20
    for shard, mtime in first.items():  # the earlier shards were not rewritten
        assert contracts.shard_path(job, shard, "manifest").stat().st_mtime_ns == mtime
    assert_same_shards(job, local_reference)
    again = run_accumulate(cfg, Progress(job))  # a finished job run again starts no worker
    assert again["new_samples"] == 0 and again["workers"] == [] and again["computed_shards"] == []


def test_local_resume_after_ray_fills_the_gaps(cluster, local_reference, tmp_path):
    """Shards finish out of order on a cluster; the local executor resumes the same folder shard by shard."""
    import shutil

    job = tmp_path / "gaps"
    shutil.copytree(local_reference, job)
    for shard in (1, 3):
        contracts.shard_path(job, shard, "manifest").unlink()
    result = run_accumulate(AccumulateFRAConfig(**CFG), Progress(job))
    assert result["new_samples"] == 8 and result["samples"] == 20
    assert_same_shards(job, local_reference)


def test_task_never_redoes_a_complete_shard(saved, local_reference, tmp_path):
    """The in-task guard, run in this process: a retried task whose shard has a manifest only reports it."""
    import shutil

    from fra_core.accumulate.ray_executor import ShardWorker

    job = tmp_path / "guard"
    shutil.copytree(local_reference, job)
    before = contracts.shard_path(job, 2, "pairs").stat().st_mtime_ns
    worker = ShardWorker(AccumulateFRAConfig(**CFG, **RAY).to_dict(), 1)
    receipt = worker.compute(2, [(s, "ignored") for s in range(8, 12)], str(job))
    assert receipt["skipped"] and receipt["samples"] == 4
    assert contracts.shard_path(job, 2, "pairs").stat().st_mtime_ns == before


def test_bad_worker_setup_fails_with_its_reason(cluster, tmp_path):
    job = tmp_path / "bad"
    job.mkdir()
    with pytest.raises(AccumulateError, match="could not load the model and SAEs: .*no-such-sae"):
        run_accumulate(AccumulateFRAConfig(**{**CFG, "q_saes": ("no-such-sae",)}, **RAY), Progress(job))
    with pytest.raises(AccumulateError, match="does not fit the Ray cluster"):
        run_accumulate(AccumulateFRAConfig(**{**CFG, **RAY, "ray_workers": 5}), Progress(job))


def test_executor_config_validation():
    with pytest.raises(ConfigError, match="executor must be one of"):
        AccumulateFRAConfig(executor="dask")
    with pytest.raises(ConfigError, match="ray_workers must be >= 0"):
        AccumulateFRAConfig(executor="ray", ray_workers=-1)
    with pytest.raises(ConfigError, match="ray_gpus_per_worker must be >= 0 or -1"):
        AccumulateFRAConfig(executor="ray", ray_gpus_per_worker=-0.5)
    with pytest.raises(ConfigError, match="ray_cpus_per_worker must be > 0"):
        AccumulateFRAConfig(executor="ray", ray_cpus_per_worker=0)
    with pytest.raises(ConfigError, match="need executor: ray"):
        AccumulateFRAConfig(ray_address="auto")
    cfg = AccumulateFRAConfig(executor="ray", ray_address="ray://head:10001", ray_workers=8)
    assert AccumulateFRAConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(AccumulateError, match="in-process objects"):
        run_accumulate(cfg, None, model=object())


def test_cli_executor_flags_run_on_ray_and_ingest(cluster, saved, local_reference, tmp_path, capsys):
    from fra_core.accumulate.cli import cli_main
    from store import Store

    cfg_path = tmp_path / "run.yaml"
    AccumulateFRAConfig(**CFG).save_yaml(cfg_path)
    assert cli_main(["--config", str(cfg_path), "--executor", "ray", "--ray-workers", "-1"]) == 2
    assert "ray_workers must be >= 0" in capsys.readouterr().err
    assert cli_main(["--config", str(cfg_path), "--ray-address", "auto"]) == 2
    assert "need executor: ray" in capsys.readouterr().err
    assert cli_main(["--config", str(cfg_path), "--executor", "ray", "--ray-workers", "1", "--ingest"]) == 0
    out = capsys.readouterr().out
    job = next(saved.jobs.glob("accumulate-*"))
    assert "done: 20 samples in 5 shards" in out and AccumulateFRAConfig.load_yaml(job / "config.yaml").executor == "ray"
    assert_same_shards(job, local_reference)
    store = Store(saved.db_path)
    with store.read() as cur:
        n_db, n_samples = cur.execute("SELECT (SELECT sum(n) FROM pair_rows), (SELECT count(*) FROM samples_done)"
                                      ).fetchone()
    store.close()
    from fra_core.accumulate.coact import shard_pairs

    n_ref = sum(shard_pairs(local_reference, m["shard"], 0)[0]["n"].to_numpy().sum()
                for m in contracts.complete_shards(local_reference))
    assert n_samples == 20 and n_db == n_ref


@pytest.mark.slow  # two job processes, each starting Ray workers: ~1-2 min on 2 busy cores
def test_killed_driver_resumes_with_only_the_missing_shards(cluster, saved, local_reference):
    """SIGKILL the job process (the driver, attached to this module's cluster through RAY_ADDRESS) mid-run;
    its workers die with it; the resumed job computes only the shards that have no manifest."""
    import time

    from fra_core import jobs

    def wait(predicate, timeout_s, what):
        t_end = time.time() + timeout_s
        while time.time() < t_end:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {(job / 'log.txt').read_text()[-3000:]}")

    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cfg = AccumulateFRAConfig(**{**CFG, **RAY, "n_samples": 200})  # 50 shards: the kill lands mid-run
    job = jobs.launch_job(saved.jobs, "accumulate", cfg, env=env)
    wait(lambda: contracts.complete_shards(job) or jobs.job_status(job).get("state") == "failed", 240, "a first shard")
    os.killpg(jobs.read_json(job / "status.json")["pid"], signal.SIGKILL)
    wait(lambda: jobs.job_status(job)["state"] == "died", 10, "the job to read as died")
    at_kill = {m["shard"] for m in contracts.complete_shards(job)}
    assert 1 <= len(at_kill) < 50
    jobs.start_process(job, env=env)
    wait(lambda: jobs.job_status(job)["state"] in ("done", "failed", "died"), 300, "the resumed job")
    status = jobs.job_status(job)
    assert status["state"] == "done", status.get("message")
    computed = set(status["result"]["computed_shards"])
    assert not computed & at_kill  # nothing complete at the kill was redone
    assert computed <= set(range(50)) - at_kill and status["result"]["samples"] == 200
    assert sorted(s for m in contracts.complete_shards(job) for s in m["samples"]) == list(range(200))
    assert_same_shards(job, local_reference, shards=set(range(5)))  # the first 20 samples: the same shards

"""The accumulation job as a real background process (SIGKILL + resume) and the headless CLI."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fra_core import contracts, jobs
from fra_core.accumulate import AccumulateFRAConfig
from fra_core.accumulate.cli import cli_main
from fra_core.accumulate.run import run_accumulate
from tests.fra_core.accumulate_helpers import assert_totals_equal, save_parts, shard_totals, tiny_demo_model, tiny_sae

REPO = Path(__file__).resolve().parents[2]
CFG = dict(model="tiny", q_saes=("tiny-sae",), n_samples=30, batch_size=2, shard_size=2, top_m=3, k_active=6,
           context_length=24, device="cpu")


@pytest.fixture
def saved(workspace):
    model = tiny_demo_model(workspace.root)
    save_parts(workspace, model, tiny_sae(model))
    return workspace


def _wait(predicate, timeout_s: float, what: str):
    t_end = time.time() + timeout_s
    while time.time() < t_end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.slow  # two job processes import torch + TransformerLens + SAELens: ~30 s on 2 busy cores
def test_sigkill_resumes_to_same_totals(saved, tmp_path):
    from store import Store, ingest_job_shards

    cfg = AccumulateFRAConfig(**CFG)
    job = jobs.launch_job(saved.jobs, "accumulate", cfg)
    _wait(lambda: contracts.complete_shards(job) or jobs.job_status(job).get("state") == "failed", 180, "a first shard")
    pid = jobs.read_json(job / "status.json")["pid"]
    os.killpg(pid, signal.SIGKILL)
    _wait(lambda: jobs.job_status(job)["state"] == "died", 10, "the job to read as died")
    at_kill = len(contracts.complete_shards(job))
    assert 1 <= at_kill < 15, (at_kill, (job / "log.txt").read_text()[-2000:])

    store = Store(saved.db_path)
    with store.write() as con:  # the app ingests what is there, while the job is dead
        first = ingest_job_shards(con, job)
    jobs.start_process(job)
    _wait(lambda: jobs.job_status(job)["state"] in ("done", "failed", "died"), 240, "the resumed job")
    assert jobs.job_status(job)["state"] == "done", (job / "log.txt").read_text()[-3000:]
    with store.write() as con:
        second = ingest_job_shards(con, job)
        n_db = con.execute("SELECT sum(n) FROM pair_rows WHERE run = ?", [first["run"]]).fetchone()[0]
        n_samples = con.execute("SELECT count(*) FROM samples_done WHERE run = ?", [first["run"]]).fetchone()[0]
    store.close()
    assert first["run"] == second["run"] and first["samples"] + second["samples"] == 30 == n_samples
    samples = sorted(s for m in contracts.complete_shards(job) for s in m["samples"])
    assert samples == list(range(30))

    reference = tmp_path / "reference"  # one uninterrupted in-process run, parts loaded by name
    reference.mkdir()
    run_accumulate(cfg, jobs.Progress(reference))
    totals = shard_totals(reference)
    assert_totals_equal(shard_totals(job), totals)
    assert n_db == totals["n"].sum()


def test_cli_bad_input_is_one_line(saved, tmp_path, capsys):
    cfg_path = tmp_path / "run.yaml"
    AccumulateFRAConfig(**{**CFG, "dataset": str(tmp_path / "missing.txt")}).save_yaml(cfg_path)
    assert cli_main(["--config", str(cfg_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: dataset file not found")
    assert cli_main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    cfg_path.write_text("model: tiny\nn_samples: -3\n")
    assert cli_main(["--config", str(cfg_path)]) == 2
    assert "n_samples must be >= 1, got -3" in capsys.readouterr().err
    AccumulateFRAConfig(**{**CFG, "q_saes": ("no-such-sae",)}).save_yaml(cfg_path)
    assert cli_main(["--config", str(cfg_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-sae" in err[0]


def test_cli_runs_ui_yaml_unchanged_and_ingests(saved, tmp_path):
    cfg = AccumulateFRAConfig(**{**CFG, "n_samples": 4})
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(cfg.to_yaml())  # what the app's "save YAML" button writes
    proc = subprocess.run([sys.executable, "-m", "fra_core", "accumulate", "--config", str(cfg_path), "--ingest"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done: 4 samples in 2 shards" in proc.stdout and "ingested run 1: 2 new shards, 4 samples" in proc.stdout
    from store import Store, list_runs

    store = Store(saved.db_path)
    with store.read() as cur:
        runs = list_runs(cur)
    store.close()
    assert list(runs["status"]) == ["done"] and list(runs["n_samples"]) == [4]
    job_dir = next(line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("job folder: "))
    assert cli_main(["--job-dir", job_dir, "--ingest"]) == 0  # resuming a finished job: nothing new, still exit 0

"""The accumulation page's job table shows each job's owner and its place in its device's queue (AppTest,
synthetic job folders; the queue fields are the ones `fra_core.jobqueue.device_slot` writes)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

from fra_core import jobs
from tests.store.fake_jobs import make_job
from ui.jobs_table import queue_cell

REPO = Path(__file__).resolve().parents[2]


def _own(job_dir: Path, owner: str) -> None:
    meta = jobs.read_json(job_dir / "job.json")
    jobs.write_json_atomic(job_dir / "job.json", {**meta, "owner": owner})


def test_queue_cell():
    assert queue_cell({"state": "queued", "queue_position": 2, "waiting_for": "cuda"}) == "2 · cuda"
    assert queue_cell({"state": "queued", "queue_position": 1}) == "1"
    assert queue_cell({"state": "running", "queue_position": 3, "waiting_for": "cuda"}) == "—"  # stale field
    assert queue_cell({"state": "queued"}) == "—"  # not yet placed


def test_owner_and_queue_columns(workspace):
    queued, _ = make_job(workspace.jobs, "accumulate-20260101-000002-queued", n_shards=1, state="queued", seed=1)
    status = jobs.read_json(queued / "status.json")
    jobs.write_json_atomic(queued / "status.json", {**status, "pid": os.getpid(), "waiting_for": "cuda",
                                                     "queue_position": 2, "queued_at": "2026-01-01T00:00:02"})
    running, _ = make_job(workspace.jobs, "accumulate-20260101-000001-running", n_shards=1, state="running", seed=2)
    status = jobs.read_json(running / "status.json")
    jobs.write_json_atomic(running / "status.json", {**status, "pid": os.getpid()})
    _own(queued, "alice@example.org")
    _own(running, "bob@example.org")
    gone, _ = make_job(workspace.jobs, "accumulate-20260101-000000-gone", n_shards=1, seed=3)  # unowned, local mode

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page("pages/fra_accumulate.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value.set_index("job")
    assert {"owner", "queue"} <= set(table.columns)
    assert table.loc[queued.name, ["state", "owner", "queue"]].tolist() == ["queued", "alice@example.org", "2 · cuda"]
    assert table.loc[running.name, ["state", "owner", "queue"]].tolist() == ["running", "bob@example.org", "—"]
    assert table.loc[gone.name, ["owner", "queue"]].tolist() == ["—", "—"]

    # a stored run whose job folder is gone keeps the owner recorded in the database
    from ui import store as ui_store

    with ui_store.get_store().write() as con:
        con.execute("UPDATE runs SET owner = 'carol@example.org' WHERE name = ?", [gone.name])
    shutil.rmtree(gone)
    at.run()
    table = at.dataframe[0].value.set_index("job")
    assert table.loc[gone.name, ["owner", "queue", "message"]].tolist() == ["carol@example.org", "—", "no job folder"]
    ui_store._handle.clear()

"""Ingest-on-view (`ui.store.sync_jobs`) opens no write session while no job folder and no database changed,
and still ingests every change: a new shard, a job whose process died, another process's write."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa

from fra_core import contracts
from fra_core.contracts import write_json_atomic
from tests.store.fake_jobs import aggregate, examples_for, make_job, pair_rows


def _sync(ui_store):
    ui_store._handle(ui_store.db_path()).last_sync = 0.0  # past the throttle
    return ui_store.sync_jobs()


def _add_shard(job, shard: int) -> None:
    occ = pair_rows(np.random.default_rng(shard), 50)
    samples = [100 + shard]
    contracts.write_shard(job, shard, {
        "pairs": aggregate(occ), "examples": examples_for(occ, samples),
        "samples": pa.table({"sample": pa.array(samples, pa.uint64()), "n_tokens": pa.array([10], pa.uint16()),
                             "tokens": pa.array([[f"w{i}" for i in range(10)]], pa.list_(pa.string()))}),
        "features": pa.table({"src": pa.array([0], pa.uint16()), "feature": pa.array([1], pa.uint32()),
                              "n_active": pa.array([5], pa.uint64()), "n_tokens": pa.array([10], pa.uint64())})},
        samples)


def test_no_write_session_while_nothing_changed(workspace):
    from ui import store as ui_store

    job, _ = make_job(workspace.jobs, "accumulate-live", n_shards=1, state="running")
    status = contracts.read_json(job / "status.json")
    write_json_atomic(job / "status.json", {**status, "pid": os.getpid()})
    try:
        done, errors = _sync(ui_store)
        assert not errors and [d["name"] for d in done] == ["accumulate-live"]
        store = ui_store.get_store()
        writes = store.generation
        for _ in range(3):
            assert _sync(ui_store) == ([], [])
        assert store.generation == writes  # no write session: nothing had changed

        _add_shard(job, 1)  # a new shard
        done, _ = _sync(ui_store)
        assert [d["name"] for d in done] == ["accumulate-live"] and store.generation > writes
        assert int(ui_store.runs().set_index("name").loc["accumulate-live", "n_samples"]) == 5

        write_json_atomic(job / "status.json", {**status, "pid": 2**22 + 12345})  # its process is gone
        done, _ = _sync(ui_store)
        assert done and ui_store.runs().set_index("name").loc["accumulate-live", "status"] == "died"
        writes = store.generation
        assert _sync(ui_store) == ([], []) and store.generation == writes

        # another process deletes the run (the CLI, a notebook): the database changed, so the runs list is read
        # again and the next pass opens its write session (and leaves the deleted run deleted)
        assert "accumulate-live" in set(ui_store.runs()["name"])
        code = ("import sys; sys.path.insert(0, sys.argv[2]); from store import Store, delete_run;"
                " s = Store(sys.argv[1], timeout_s=60); w = s.write(); delete_run(w.__enter__(), 'accumulate-live');"
                " w.__exit__(None, None, None); s.close()")
        subprocess.run([sys.executable, "-c", code, ui_store.db_path(), os.getcwd()], check=True, timeout=120)
        assert "accumulate-live" not in set(ui_store.runs()["name"])
        assert _sync(ui_store) == ([], []) and store.generation == writes + 1
        assert "accumulate-live" not in set(ui_store.runs()["name"])
    finally:
        ui_store._handle.clear()

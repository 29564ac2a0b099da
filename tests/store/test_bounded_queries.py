"""Bounded queries: a runaway SELECT from the SQL box stops at its time limit (in its own process) while
other queries keep working; page queries are interrupted at theirs; the SQL box's memory is capped and
its sandbox holds; short sessions leave other processes a way into the file."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from store import Store, StoreError, ingest_job_shards, top_pairs
from store.sql_worker import KILL_GRACE_S, run_sql_bounded
from store.watchdog import QueryTimeout, time_limit
from tests.conftest import REPO_ROOT
from tests.store.fake_jobs import make_job
from tests.store.test_sql_sandbox import refused_queries

RUNAWAY = "SELECT count(*) FROM range(1000000000) a, range(1000000000) b"


@pytest.fixture
def filled(tmp_path):
    store = Store(tmp_path / "fra.duckdb", linger_s=0.5, max_hold_s=1.0)
    job, _ = make_job(tmp_path / "jobs", "job-x")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
    yield store, run, tmp_path
    store.close()


def test_runaway_sql_stops_at_its_limit_while_other_queries_keep_working(filled):
    store, run, _ = filled
    outcome = {}

    def runaway():
        t0 = time.monotonic()
        try:
            run_sql_bounded(store.path, RUNAWAY, timeout_s=2.0)
        except StoreError as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=runaway)
    thread.start()
    served = 0
    while thread.is_alive():
        with store.read() as cur:
            assert len(top_pairs(cur, run, n=5)) == 5
        served += 1
        time.sleep(0.02)
    thread.join()
    assert isinstance(outcome.get("error"), QueryTimeout), outcome
    assert "time limit of 2 s" in str(outcome["error"])
    assert outcome["elapsed"] < 2.0 + KILL_GRACE_S + 20  # generous: stopped, not run to the end
    assert served > 5
    # the database and the SQL box work normally afterwards
    assert int(run_sql_bounded(store.path, f"SELECT count(*) AS n FROM runs WHERE id = {run}")["n"][0]) == 1


def test_page_query_is_interrupted_and_the_store_keeps_working(filled):
    store, run, _ = filled
    with store.read() as cur:
        with pytest.raises(QueryTimeout, match="time limit of 0.5 s"):
            with time_limit(cur, 0.5):
                cur.execute(RUNAWAY).fetchall()
        assert len(top_pairs(cur, run, n=3)) == 3  # the interrupted cursor runs the next statement
    with store.read() as cur, time_limit(cur, 30):
        assert len(top_pairs(cur, run, n=3)) == 3


def test_sql_box_memory_is_capped(filled):
    store, *_ = filled
    big = "SELECT count(DISTINCT s) FROM (SELECT i::VARCHAR || repeat('x', 100) AS s FROM range(3000000) t(i))"
    with pytest.raises(StoreError, match="more memory than its limit"):
        run_sql_bounded(store.path, big, timeout_s=60, memory_limit="30MB")
    assert len(run_sql_bounded(store.path, big.replace("3000000", "1000"), memory_limit="30MB")) == 1


def test_sql_box_process_keeps_the_sandbox(filled):
    store, _, tmp = filled
    secret = tmp / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    for sql in refused_queries(tmp, secret):
        with pytest.raises(StoreError) as info:
            run_sql_bounded(store.path, sql)
        assert "a,b" not in str(info.value), sql
    for sql in ("SELECT current_setting('enable_external_access') AS v",
                "SELECT current_setting('lock_configuration') AS v"):
        value = bool(run_sql_bounded(store.path, sql)["v"][0])
        assert value is ("lock" in sql), sql
    with pytest.raises(StoreError, match="SELECT"):
        run_sql_bounded(store.path, "SELECT 1; SET lock_configuration = false")


OTHER_PROCESS = """
import sys
from store.connection import connect
con = connect(sys.argv[1], read_only=False, timeout_s=15)
con.execute("CREATE TABLE IF NOT EXISTS notebook_note AS SELECT 42 AS x")
con.close()
"""


def test_a_busy_store_still_lets_another_process_write(filled):
    """A reader thread keeps the Store busy; a second process (a notebook, `--ingest`) still gets the file."""
    store, run, _ = filled
    stop = threading.Event()
    errors = []

    def keep_reading():
        while not stop.is_set():
            try:
                with store.read() as cur:
                    top_pairs(cur, run, n=5)
            except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                errors.append(exc)

    reader = threading.Thread(target=keep_reading)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(store.path)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        reader.join()
    assert proc.returncode == 0, proc.stderr[-500:]
    assert errors == []
    with store.read() as cur:
        assert cur.execute("SELECT x FROM notebook_note").fetchone() == (42,)

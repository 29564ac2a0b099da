"""A second process reads (read-only sessions) while a job writes shards and the app ingests them:
nobody sees a lock error (sessions are short and opening retries while another process holds the file)."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from store import Store, ingest_job_shards, list_runs
from tests.store.fake_jobs import make_job

READER = textwrap.dedent("""
    import sys, time
    from store import Store, list_runs, top_pairs
    store = Store(sys.argv[1])
    reads, t_end = 0, time.time() + float(sys.argv[2])
    while time.time() < t_end:
        with store.read() as cur:
            runs = list_runs(cur)
            for run in runs["id"]:
                top_pairs(cur, int(run), n=10, head=0)
        reads += 1
    print("reads", reads)
""")


def test_reader_process_sees_no_lock_error(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    store = Store(tmp_path / "fra.duckdb", timeout_s=20)
    store.ensure_schema()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(store.path), "4"], cwd=repo,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ingested = 0
        for i in range(6):  # the "job" writes a new job folder of shards, the "app" ingests it
            job, _ = make_job(tmp_path / "jobs", f"job-{i}", n_shards=2, seed=i)
            with store.write() as con:
                ingested += ingest_job_shards(con, job)["shards"]
            with store.read() as cur:
                assert len(list_runs(cur)) == i + 1
            time.sleep(0.2)
        out, err = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, err
    assert int(out.split()[-1]) > 3, out
    assert ingested == 12


def test_threads_share_one_connection_and_nested_write_is_refused(tmp_path):
    import threading

    import pytest

    store = Store(tmp_path / "fra.duckdb")
    job, _ = make_job(tmp_path / "jobs", "job-t")
    with store.write() as con:
        ingest_job_shards(con, job)
    errors = []

    def reader():
        try:
            for _ in range(20):
                with store.read() as cur:
                    assert len(list_runs(cur)) == 1
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        with store.write() as con:
            con.execute("UPDATE runs SET message = 'x'")
    for t in threads:
        t.join()
    assert errors == []
    with store.read():
        with pytest.raises(RuntimeError, match="inside a Store.read"):
            with store.write():
                pass
    store.close()


def test_linger_keeps_the_connection_then_lets_other_processes_in(tmp_path):
    store = Store(tmp_path / "fra.duckdb", linger_s=0.3)
    store.ensure_schema()
    with store.read() as cur:
        cur.execute("SELECT 1")
    assert store._con is not None  # still open right after a session (warm cache)
    time.sleep(0.8)
    assert store._con is None  # idle longer than linger_s: closed, the file lock released
    reader = subprocess.run([sys.executable, "-c", READER, str(store.path), "0.5"],
                            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60)
    assert reader.returncode == 0, reader.stderr
    store.close()

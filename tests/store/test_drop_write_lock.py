"""`Store.drop_write_lock()`: after it, another process opens the file read-only at once, while this
process keeps reading (the SQL box's child process after an ingest left the app's connection read-write)."""

from __future__ import annotations

import subprocess
import sys
import threading

from store import Store

OPEN_RO = ("import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True);"
           " print(con.execute('SELECT count(*) FROM runs').fetchone()[0])")


def _other_process_reads(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", OPEN_RO, str(path)], capture_output=True, text=True, timeout=60)


def test_other_process_gets_in_after_drop(tmp_path):
    path = tmp_path / "fra.duckdb"
    store = Store(path, linger_s=60.0)  # a busy app: its connection would stay open for a minute
    with store.write() as con:
        con.execute("SELECT 1")
    assert "lock" in _other_process_reads(path).stderr.lower()  # held read-write: refused

    assert store.drop_write_lock() is True
    with store.read() as cur:  # this process reads on, read-only now
        assert cur.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        other = _other_process_reads(path)  # while that read session is open
    assert other.returncode == 0 and other.stdout.strip() == "0", other.stderr
    assert store.drop_write_lock() is True  # nothing read-write left: returns at once
    store.close()


def test_drop_waits_for_open_sessions_and_holds_new_ones(tmp_path):
    store = Store(tmp_path / "fra.duckdb", linger_s=60.0)
    store.ensure_schema()
    entered, release, order = threading.Event(), threading.Event(), []

    def writer():
        with store.write() as con:
            entered.set()
            release.wait(10)
            con.execute("SELECT 1")
            order.append("write done")

    t = threading.Thread(target=writer)
    t.start()
    entered.wait(10)
    threading.Timer(0.3, release.set).start()
    assert store.drop_write_lock(timeout_s=10) is True
    order.append("dropped")
    t.join(10)
    assert order == ["write done", "dropped"]
    assert store.drop_write_lock(timeout_s=0.01) is True
    store.close()

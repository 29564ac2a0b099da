"""`Store.change_stamp()`: what the app's caches key on (the runs list, ingest-on-view's "nothing new"
check). It must move after every write of this process and after a commit of another process, and stay
put while only reads happen."""

from __future__ import annotations

import subprocess
import sys

from store import Store


def test_stamp_moves_on_writes_and_not_on_reads(tmp_path):
    store = Store(tmp_path / "fra.duckdb", linger_s=0.0)
    store.ensure_schema()
    before = store.change_stamp()
    with store.read() as cur:
        cur.execute("SELECT count(*) FROM runs").fetchall()
    assert store.change_stamp() == before
    with store.write() as con:
        con.execute("CREATE TABLE scratch (x INTEGER)")
    after = store.change_stamp()
    assert after != before
    with store.read() as cur:
        cur.execute("SELECT * FROM scratch").fetchall()
    assert store.change_stamp() == after
    store.close()


def test_stamp_moves_when_another_process_commits(tmp_path):
    path = tmp_path / "fra.duckdb"
    store = Store(path, linger_s=0.0)
    store.ensure_schema()
    before = store.change_stamp()
    code = ("import duckdb, sys; con = duckdb.connect(sys.argv[1]); con.execute('CREATE TABLE other (x INT)');"
            " con.execute('INSERT INTO other VALUES (1)'); con.close()")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    assert store.change_stamp() != before
    with store.read() as cur:
        assert cur.execute("SELECT x FROM other").fetchall() == [(1,)]
    store.close()

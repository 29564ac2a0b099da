"""The Pair tables page under bounded queries: a runaway SELECT in the SQL box ends in a one-line error at
its time limit (the page keeps working), and after a page view another process can write the database."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import REPO_ROOT
from tests.pages.test_pair_tables_page import _ok, _open, runs_ws  # noqa: F401 - fixture

RUNAWAY = "SELECT count(*) FROM range(1000000000) a, range(1000000000) b"
WRITER = """
import sys
from store.connection import connect
con = connect(sys.argv[1], read_only=False, timeout_s=15)
con.execute("CREATE TABLE IF NOT EXISTS notebook_note AS SELECT 1 AS x")
"""


def test_runaway_sql_box_query_stops_with_a_message(runs_ws, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FRA_SQL_TIMEOUT_S", "2")
    at = _open()
    _ok(at)
    at.radio(key="pt_view").set_value("SQL").run()
    at.text_area(key="pt_sql").set_value(RUNAWAY).run()
    t0 = time.monotonic()
    at.button(key="pt_sql_run").click().run()
    assert time.monotonic() - t0 < 60
    assert not at.exception
    assert any("time limit of 2 s" in e.value for e in at.error), [e.value for e in at.error]
    at.radio(key="pt_view").set_value("Top pairs").run()
    _ok(at)
    assert len(at.dataframe[0].value) == 100


def test_another_process_can_write_after_a_page_view(runs_ws):  # noqa: F811
    at = _open()
    _ok(at)
    proc = subprocess.run([sys.executable, "-c", WRITER, str(runs_ws.db_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-500:]
    at.run()  # and the app reads on afterwards
    _ok(at)

"""The SQL box's query, in a process of its own: `run_sql_bounded(db_path, sql)`.

Typed SQL can be arbitrarily expensive (a cross join of `range(1e9)` runs for hours). Running it in a child
process keeps the app's own connection free for every other user, and bounds it three ways: DuckDB's
`memory_limit` (and a thread cap) on the child's connection, a watchdog thread that calls `interrupt()`
when the time limit passes (`store.watchdog.time_limit`), and a hard kill of the child a few seconds after
that; it runs on one thread at a lower CPU priority (nice 10). The child opens the file read-only with
the SQL box's sandbox settings (`SANDBOX_CONFIG`: no files, extensions or settings), after the same
single-SELECT check as `store.sql`. Rows come back as Arrow IPC.

    python -m store.sql_worker <db_path> <timeout_s> <deadline> <memory_limit> <max_rows>   (SQL on stdin)

The limit counts from the click, not from the child's start: the parent passes the deadline (epoch
seconds), so a slow start on a busy machine comes out of the query's time, not on top of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from store.connection import SANDBOX_CONFIG, connect
from store.errors import StoreBusy, StoreError
from store.queries import MAX_UI_ROWS
from store.sql import check_select
from store.watchdog import QueryTimeout, sql_memory_limit, sql_timeout_s, time_limit

KILL_GRACE_S = 3.0
SQL_THREADS = 1  # the SQL box never takes every core from the pages
SQL_NICE = 10
_ROOT = Path(__file__).resolve().parent.parent


def run_sql_bounded(db_path: str | Path, sql: str, timeout_s: float | None = None,
                    memory_limit: str | None = None, limit: int = MAX_UI_ROWS) -> pd.DataFrame:
    """Run one SELECT from the SQL box in a child process; StoreError (QueryTimeout past the limit)."""
    check_select(sql)  # refuse the obvious at once, without a process
    timeout_s = sql_timeout_s() if timeout_s is None else float(timeout_s)
    memory_limit = memory_limit or sql_memory_limit()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-m", "store.sql_worker", str(db_path), str(timeout_s),
                               repr(time.time() + timeout_s), memory_limit,
                               str(int(limit))], input=sql.encode("utf-8"), capture_output=True, env=env,
                              timeout=timeout_s + KILL_GRACE_S, cwd=_ROOT)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        raise QueryTimeout(f"query killed at its time limit of {timeout_s:g} s") from None
    if proc.returncode == 0:
        return pa.ipc.open_stream(proc.stdout).read_all().to_pandas()
    try:
        error = json.loads(proc.stdout.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise StoreError(f"query process failed: {tail[0]}") from None
    raise {"timeout": QueryTimeout, "busy": StoreBusy}.get(error["kind"], StoreError)(error["message"])


def _query(db_path: str, sql: str, timeout_s: float, deadline: float, memory_limit: str, limit: int) -> pa.Table:
    query = check_select(sql)
    unlocked = {k: v for k, v in SANDBOX_CONFIG.items() if k != "lock_configuration"}
    con = connect(db_path, read_only=True, timeout_s=max(deadline - time.time(), 0.01),
                  config={**unlocked, "memory_limit": memory_limit, "threads": SQL_THREADS})
    # no progress bar (stdout carries the rows), then lock every setting as SANDBOX_CONFIG does
    con.execute("SET enable_progress_bar = false")
    con.execute("SET lock_configuration = true")
    try:
        with time_limit(con, max(deadline - time.time(), 0.01), "query", limit_s=timeout_s):
            result = con.sql(query).limit(limit).arrow()  # DuckDB 2 gives a RecordBatchReader
            return result.read_all() if isinstance(result, pa.RecordBatchReader) else result
    except duckdb.PermissionException as exc:
        raise StoreError("refused: the SQL box reads only this database's tables (no files, extensions "
                         f"or settings): {str(exc).splitlines()[0]}") from exc
    except duckdb.Error as exc:
        raise StoreError(f"query failed: {str(exc).splitlines()[0]}") from exc
    finally:
        con.close()


def main(argv: list[str]) -> int:
    db_path, timeout_s, deadline, memory_limit, limit = argv[0], float(argv[1]), float(argv[2]), argv[3], int(argv[4])
    os.nice(SQL_NICE)  # the pages' own queries come first on a busy CPU
    try:
        table = _query(db_path, sys.stdin.read(), timeout_s, deadline, memory_limit, limit)
    except (StoreError, StoreBusy) as exc:
        kind = "timeout" if isinstance(exc, QueryTimeout) else "busy" if isinstance(exc, StoreBusy) else "error"
        sys.stdout.write(json.dumps({"kind": kind, "message": str(exc)}))
        return 2
    with pa.ipc.new_stream(sys.stdout.buffer, table.schema) as writer:
        writer.write_table(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

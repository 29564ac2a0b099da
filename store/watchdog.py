"""Time limits for queries: a watchdog thread calls DuckDB's `interrupt()` on the query's cursor when its
limit passes, and the query fails with `QueryTimeout` (a one-line StoreError) instead of running on.

Every page query runs under `time_limit` (`ui.store`), with the limit from `FRA_QUERY_TIMEOUT_S`
(default 30 s). Other cursors of the same connection keep working while one is interrupted, and the
interrupted cursor can run the next statement. The SQL box runs in a process of its own
(`store.sql_worker`), under the same watchdog plus a hard kill.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import duckdb

from store.errors import StoreError

DEFAULT_QUERY_TIMEOUT_S = 30.0
DEFAULT_SQL_TIMEOUT_S = 10.0
DEFAULT_MEMORY_LIMIT = "2GB"
DEFAULT_SQL_MEMORY_LIMIT = "1GB"


class QueryTimeout(StoreError):
    """A query ran past its time limit and was stopped."""


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise StoreError(f"{name}={text!r} is not a number of seconds") from None
    if not value > 0:
        raise StoreError(f"{name}={text!r} must be > 0 seconds")
    return value


def query_timeout_s() -> float:
    """Time limit of one page query (`FRA_QUERY_TIMEOUT_S`)."""
    return _env_float("FRA_QUERY_TIMEOUT_S", DEFAULT_QUERY_TIMEOUT_S)


def sql_timeout_s() -> float:
    """Time limit of one SQL-box query (`FRA_SQL_TIMEOUT_S`)."""
    return _env_float("FRA_SQL_TIMEOUT_S", DEFAULT_SQL_TIMEOUT_S)


def memory_limit() -> str:
    """DuckDB memory_limit of the app's connection (`FRA_DB_MEMORY_LIMIT`, e.g. '2GB')."""
    return os.environ.get("FRA_DB_MEMORY_LIMIT", "").strip() or DEFAULT_MEMORY_LIMIT


def sql_memory_limit() -> str:
    """DuckDB memory_limit of the SQL box's process (`FRA_SQL_MEMORY_LIMIT`)."""
    return os.environ.get("FRA_SQL_MEMORY_LIMIT", "").strip() or DEFAULT_SQL_MEMORY_LIMIT


@contextlib.contextmanager
def time_limit(cur, seconds: float, what: str = "query", limit_s: float | None = None) -> Iterator[None]:
    """Interrupt `cur` (a DuckDB connection or cursor) if the block runs longer than `seconds`
    (`limit_s`: the limit named in the message, when `seconds` is what is left of it)."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        cur.interrupt()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except duckdb.InterruptException as exc:
        if fired.is_set():
            raise QueryTimeout(f"{what} stopped at its time limit of {limit_s or seconds:g} s (narrow it down: filter "
                               "by run, head or feature, or add a LIMIT)") from exc
        raise
    except duckdb.OutOfMemoryException as exc:
        raise StoreError(f"{what} needs more memory than its limit allows: {str(exc).splitlines()[0]}") from exc
    finally:
        timer.cancel()

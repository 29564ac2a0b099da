"""Connections to the DuckDB store without lock errors.

DuckDB lets one process open a database file read-write, or many processes open it read-only, never
both at once. FRA Studio keeps that rule by construction:

* job processes never open the database (they write Parquet shards into their job folder);
* the app ingests shards and deletes runs in short write sessions (`Store.write()`), and reads in
  short read sessions (`Store.read()`); between sessions this process holds no lock;
* a second process (another app, a viewer, a notebook) does the same, so a lock conflict only means
  "another process is in a session right now": opening retries for `timeout_s` instead of failing.

Within one process every session shares one DuckDB connection (DuckDB refuses two connections to one
file with different read-only settings in one process), and each use gets its own `.cursor()`
because a connection is not thread-safe. A read session that starts while a write session of the same
process is open reads through the writer's connection.
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator

import duckdb

from store.errors import StoreBusy, StoreError
from store.schema import migrate

YIELD_S = 0.25  # see Store.max_hold_s
_LOCK_MARKERS = ("Could not set lock", "Conflicting lock", "lock on file")


def _is_lock_error(exc: Exception) -> bool:
    return any(marker in str(exc) for marker in _LOCK_MARKERS)


# A connection for SQL typed by a user: no file system (read_text, read_csv, COPY, ATTACH, glob, ...), no
# scans of Python variables, no extension install/load, and a locked configuration so the SQL cannot
# SET any of it back. DuckDB holds these per database instance, hence a connection of its own.
SANDBOX_CONFIG = {"enable_external_access": False, "allow_community_extensions": False,
                  "autoinstall_known_extensions": False, "autoload_known_extensions": False,
                  "lock_configuration": True}


def connect(path: str | Path, read_only: bool = False, timeout_s: float = 30.0,
            config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """Open `path` (or ":memory:"), retrying while another process holds a conflicting lock.

    A read-write connection is migrated to the current schema. A read-only connection to a file
    that does not exist yet cannot be opened: create it read-write first (`Store.ensure_schema`).
    """
    path = str(path)
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            con = duckdb.connect(path, read_only=read_only and path != ":memory:", config=config or {})
            break
        except duckdb.Error as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                if _is_lock_error(exc):
                    raise StoreBusy(f"database {path} stayed locked by another process for {timeout_s:.0f} s: "
                                    f"{exc}") from exc
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    if not read_only or path == ":memory:":
        migrate(con)
    return con


class Store:
    """One process's handle on the database file; thread-safe; holds no lock between sessions.

    `hold=True` keeps the connection open after a session (faster repeated queries; right for a
    process that is the only user, e.g. the CLI or a benchmark), at the price of blocking other
    processes until `close()`. `linger_s` is the middle way for the app: the connection stays open
    (DuckDB's buffer cache warm) while sessions follow each other within `linger_s` seconds, and is
    closed once the process has been idle that long, so another process's viewer gets its turn.
    """

    def __init__(self, path: str | Path, timeout_s: float = 30.0, hold: bool = False,
                 linger_s: float = 0.0, max_hold_s: float | None = None, settings: dict | None = None):
        self.path = Path(path) if str(path) != ":memory:" else ":memory:"
        self.timeout_s = timeout_s
        self.hold = hold or self.path == ":memory:"
        self._cond = threading.Condition(threading.RLock())
        self._con: duckdb.DuckDBPyConnection | None = None
        self._read_only = True
        self._readers = 0
        self._writers = 0
        self._reading = threading.local()  # read-session depth of the current thread
        self._sandboxed = False  # a `sandboxed()` session owns the file: other sessions wait
        self._draining = False  # `drop_write_lock()` waits for open sessions to end: new ones wait for it
        self.linger_s = linger_s
        # a lingering connection is closed anyway once it has been open this long (at the end of a
        # session), so a busy app still leaves gaps in which other processes get the file
        self.max_hold_s = max_hold_s
        # DuckDB settings SET on each opening (memory_limit, ...): SET, not connect(config=), because DuckDB
        # refuses a second connection to one file with a different connect-time configuration
        self.settings = dict(settings or {})
        self._opened_at = 0.0
        self._reopen_after = 0.0  # after a max_hold_s close, the file is left alone for YIELD_S
        self._last_use = 0.0
        self._timer: threading.Timer | None = None
        # write sessions of this process finished so far: with the file's stamp (`change_stamp`) it tells
        # a cache whether the database may have changed since a result was read
        self.generation = 0

    def _open(self, read_only: bool, timeout_s: float | None = None) -> None:
        gap = self._reopen_after - time.monotonic()
        if gap > 0:  # leave the gap to another process's connect retries (every <= 0.1 s)
            time.sleep(gap)
        if read_only and self.path != ":memory:" and not Path(self.path).exists():
            read_only = False  # first use creates the file and its schema
        self._con = connect(self.path, read_only=read_only,
                            timeout_s=self.timeout_s if timeout_s is None else timeout_s)
        _OPEN_STORES.add(self)
        for name, value in self.settings.items():
            self._con.execute(f"SET {name} = '{str(value).replace(chr(39), '')}'")
        self._read_only = read_only and self.path != ":memory:"
        self._opened_at = time.monotonic()

    def _release_if_idle(self) -> None:
        self._last_use = time.monotonic()
        if self._con is not None and not self.hold and self._readers == 0 and self._writers == 0:
            held_long = self.max_hold_s is not None and self._last_use - self._opened_at >= self.max_hold_s
            if self.linger_s > 0 and not held_long:
                self._schedule_close(self.linger_s)
            else:
                self._con.close()
                self._con = None
                if held_long:
                    self._reopen_after = time.monotonic() + YIELD_S
        self._cond.notify_all()

    def _schedule_close(self, delay: float) -> None:
        if self._timer is None:
            self._timer = threading.Timer(delay, self._close_if_lingered)
            self._timer.daemon = True
            self._timer.start()

    def _close_if_lingered(self) -> None:
        if sys.is_finalizing():  # the atexit hook has closed it; DuckDB must not close during teardown
            return
        with self._cond:
            self._timer = None
            if self._con is None or self._readers or self._writers:
                return
            idle = time.monotonic() - self._last_use
            if idle >= self.linger_s:
                self._con.close()
                self._con = None
                self._cond.notify_all()
            else:
                self._schedule_close(self.linger_s - idle)

    @contextlib.contextmanager
    def read(self, strict: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for reading. `strict=True` insists on a read-only connection (waits for writers)."""
        nested = getattr(self._reading, "depth", 0) > 0  # this thread is inside a read session already
        with self._cond:
            self._cond.wait_for(lambda: not self._sandboxed and (nested or not self._draining))
            if strict and self.path != ":memory:":  # an in-memory database cannot be reopened read-only
                self._cond.wait_for(lambda: self._writers == 0)
                if self._con is not None and not self._read_only:
                    self._cond.wait_for(lambda: self._readers == 0 and self._writers == 0)
                    self._con.close()
                    self._con = None
            if self._con is None:
                self._open(read_only=True)
            self._readers += 1
            cur = self._con.cursor()
        self._reading.depth = getattr(self._reading, "depth", 0) + 1
        try:
            yield cur
        finally:
            self._reading.depth -= 1
            cur.close()
            with self._cond:
                self._readers -= 1
                self._release_if_idle()

    @contextlib.contextmanager
    def write(self, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor on a read-write connection; the caller manages transactions on it. `timeout_s`
        (default: the Store's) bounds the wait for another process's lock (StoreBusy after it)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._sandboxed and not self._draining)
            if self._con is not None and self._read_only:
                if getattr(self._reading, "depth", 0):
                    raise RuntimeError("Store.write() inside a Store.read() of the same thread would wait for "
                                       "itself: finish the read session first")
                self._cond.wait_for(lambda: self._readers == 0)
                if self._con is not None and self._read_only:
                    self._con.close()
                    self._con = None
            if self._con is None:
                self._open(read_only=False, timeout_s=timeout_s)
            self._writers += 1
            cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()
            with self._cond:
                self._writers -= 1
                self.generation += 1
                self._release_if_idle()

    def drop_write_lock(self, timeout_s: float = 5.0) -> bool:
        """Close a read-write connection of this process, so that another process can open the file read-only
        right now (DuckDB lets no other process in while one holds it read-write); later reads reopen it
        read-only, which other readers share. New sessions wait while the open ones end (sessions are short);
        after `timeout_s` it gives up. Returns whether no read-write connection is left open."""
        if getattr(self._reading, "depth", 0):
            raise RuntimeError("Store.drop_write_lock() inside a Store.read() of the same thread would wait for itself")
        with self._cond:
            if self._con is None or self._read_only:
                return True
            self._draining = True
            try:
                if self._cond.wait_for(lambda: self._readers == 0 and self._writers == 0, timeout=timeout_s) \
                        and self._con is not None and not self._read_only:
                    self._con.close()
                    self._con = None
                return self._con is None or self._read_only
            finally:
                self._draining = False
                self._cond.notify_all()

    def change_stamp(self) -> tuple:
        """Changes whenever the database may have changed: after each write session of this process
        (`generation`), and when another process commits (DuckDB appends each commit to the `.wal` file
        and a checkpoint rewrites the database file, so their size and mtime move). Costs two stat calls,
        no lock: what a cache keys on so that it never serves a result from before a change."""
        stamp: list = [self.generation]
        if self.path != ":memory:":
            for path in (Path(self.path), Path(f"{self.path}.wal")):
                try:
                    st = path.stat()
                    stamp.append((st.st_mtime_ns, st.st_size, st.st_ino))
                except FileNotFoundError:
                    stamp.append(None)
        return tuple(stamp)

    @contextlib.contextmanager
    def sandboxed(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection with `SANDBOX_CONFIG`, for SQL typed by a user (the SQL box).

        DuckDB refuses a second connection to one file with another configuration in one process,
        so this waits until no other session of this Store is open, closes the shared connection,
        and opens the locked-down one; other sessions wait until it is closed, then reopen the normal
        connection (its buffer cache starts cold: the price of a query from the SQL box).
        """
        if self.path == ":memory:":
            raise StoreError("the SQL box needs a database file (an in-memory database cannot be reopened)")
        if getattr(self._reading, "depth", 0):
            raise RuntimeError("Store.sandboxed() inside a Store.read() of the same thread would wait for itself")
        with self._cond:
            self._cond.wait_for(lambda: not self._sandboxed and self._readers == 0 and self._writers == 0)
            if self._con is not None:
                self._con.close()
                self._con = None
            self._sandboxed = True
        try:
            try:
                con = connect(self.path, read_only=True, timeout_s=self.timeout_s, config=SANDBOX_CONFIG)
            except duckdb.ConnectionException as exc:  # another handle on the file in this process
                raise StoreError(f"the SQL box cannot open the database now: {str(exc).splitlines()[0]}") from exc
            try:
                yield con
            finally:
                con.close()
        finally:
            with self._cond:
                self._sandboxed = False
                self._cond.notify_all()

    def ensure_schema(self) -> None:
        """Create the file and apply pending migrations (a write session)."""
        with self.write():
            pass

    def close(self) -> None:
        with self._cond:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._con is not None:
                self._con.close()
                self._con = None


# Lingering connections are closed by daemon timer threads. One that fires while the interpreter is being
# torn down makes DuckDB's Close() throw in C++, which aborts the process (exit 134) after everything else
# succeeded. So every store that opened a connection is closed at exit, on the main thread, first.
_OPEN_STORES: "weakref.WeakSet[Store]" = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    for store in list(_OPEN_STORES):
        try:
            store.close()
        except Exception:  # noqa: BLE001 - best effort at exit; nothing is left to report to
            pass

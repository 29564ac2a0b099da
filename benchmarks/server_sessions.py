"""The AppTest-sessions mode of `bench_server.py`: the users are Streamlit sessions in this process.

Each user is an `AppTest` of `app.py` on its own thread, with its own session state, switched to the Pair
tables page; all of them share this process's caches (`st.cache_data`, `st.cache_resource`: one `Store`,
one DuckDB connection), as the sessions of one `streamlit run` server share them. So this process is the
server, and nothing else competes with it for the 2 cores except the live job (a child process writing
shards) and the runaway query's own sandboxed child. What a browser adds (rendering, the WebSocket) is not
measured here; the browser mode measures it.

Two details make an AppTest run cost what a server's script run costs:
* AppTest builds new `ScriptCache`s per run, so it recompiles (and re-parses for "magic") app.py and the
  page on every rerun — about half of an AppTest rerun (and concurrent compiles trip a CPython 3.11 race,
  "AST constructor recursion depth mismatch"). A server keeps one ScriptCache for its life, so
  here every session shares one.
* A server's script runner ends each run with a full garbage collection when `runner.postScriptGC` is on
  (Streamlit's default; this repo's .streamlit/config.toml turns it off); AppTest's runner never does, so
  here it does what the server's does.
* AppTest sets a mock Runtime before each run and clears it after, and switches `global.appTest` on
  for the run only; with concurrent sessions one session's "after" would land in another's script run.
  Here one Runtime stands for the server for the whole benchmark (`_as_one_server`).

Each request's time is the wall time of `AppTest.run()` after a widget change; `script_s` is the time of
the script run alone, measured inside the script thread (what the server spends on the request).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _as_one_server() -> dict:
    """Patch AppTest so that concurrent sessions behave as the sessions of one server: one ScriptCache,
    one Runtime (AppTest sets a mock Runtime per run and clears it after, which would pull it from under
    another session's running script) and `global.appTest` left on; time each script run. Returns the
    timing record {user thread id: [script seconds, ...]}."""
    from unittest.mock import MagicMock

    from streamlit import config
    from streamlit.components.v2.component_manager import BidiComponentManager
    from streamlit.runtime import Runtime
    from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
    from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.runtime.scriptrunner import script_runner
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

    timings: dict[int, list[float]] = {}
    if getattr(app_test, "_bench_patched", None) is not None:
        return app_test._bench_patched
    shared = ScriptCache()
    app_test.ScriptCache = local_script_runner.ScriptCache = lambda: shared
    app_test.Runtime = type("PerRunRuntime", (Runtime,), {})  # its per-run set/clear no longer touches Runtime
    server = MagicMock(spec=Runtime)
    server.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    server.bidi_component_registry = BidiComponentManager()
    server.bidi_component_registry.discover_and_register_components(start_file_watching=False)
    server.dataframe_source_mgr = DataframeSourceManager()
    server.cache_storage_manager = MemoryCacheStorageManager()
    Runtime._instance = server
    config.set_option("global.appTest", True)
    run_script = script_runner.ScriptRunner._run_script
    on_finished = local_script_runner.LocalScriptRunner._on_script_finished

    def timed(self, *args, **kwargs):
        # AppTest joins the script thread before run() returns, so the record is complete by then
        t0 = time.perf_counter()
        try:
            return run_script(self, *args, **kwargs)
        finally:
            timings.setdefault(getattr(self, "_bench_owner", 0), []).append(time.perf_counter() - t0)

    def finished(self, *args, **kwargs):
        on_finished(self, *args, **kwargs)
        if config.get_option("runner.postScriptGC"):  # what a server's ScriptRunner does here; AppTest's does not
            gc.collect(2)

    script_runner.ScriptRunner._run_script = timed
    local_script_runner.LocalScriptRunner._on_script_finished = finished
    runner_init = local_script_runner.LocalScriptRunner.__init__

    def init(self, *args, **kwargs):
        runner_init(self, *args, **kwargs)
        self._bench_owner = threading.get_ident()  # the user thread that asked for this run

    local_script_runner.LocalScriptRunner.__init__ = init
    app_test._bench_patched = timings
    return timings


def _error_texts(at) -> list[str]:
    return [str(e.value)[:200] for e in at.exception] + [str(e.value)[:200] for e in at.error]


def _open(timeout_s: float):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout_s)
    at.switch_page("pages/pair_tables.py")
    at.run()
    return at


def session_user(user: int, n_requests: int, timeout_s: float, deadline: float, out: dict,
                 start: threading.Barrier) -> None:
    try:
        at = _open(timeout_s)
        if _error_texts(at):
            out["errors"].append(f"first render: {_error_texts(at)[0]}")
            return
    except Exception as exc:  # noqa: BLE001 - counted as an error
        out["errors"].append(f"first render: {type(exc).__name__}: {exc}"[:200])
        return
    finally:
        start.wait()
    i = 0
    # at least n_requests, and on until the runaway query has been stopped: the users' requests must overlap it
    while (i < n_requests or not out["runaway_done"].is_set()) and time.monotonic() < deadline:
        key = "pt_min_count" if i % 2 == 0 else "pt_rows"
        # always a new value, and "Rows" differs between users: every request misses the shared query cache
        value = 2 + (i // 2) % 4 if i % 2 == 0 else 50 + 10 * (i % 900) + user
        i += 1
        try:
            at.number_input(key=key).set_value(value)
            mine = out["timings"].setdefault(threading.get_ident(), [])
            seen = len(mine)
            t0 = time.monotonic()
            at.run()
            out["latencies"].append(time.monotonic() - t0)
            out["script_s"].append(sum(mine[seen:]))  # the script run(s) of this request, inside the "server"
            errors = _error_texts(at)
            if errors:
                out["errors"].append(f"request {i} ({key}={value}): {errors[0]}")
        except Exception as exc:  # noqa: BLE001 - a timed-out request is counted as an error
            out["errors"].append(f"request {i} ({key}={value}): {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")


def session_runaway(sql: str, sql_timeout: float, out: dict, start: threading.Barrier) -> None:
    try:
        try:
            at = _open(sql_timeout + 60)
        finally:
            start.wait()
        _runaway(at, sql, sql_timeout, out)
    except Exception as exc:  # noqa: BLE001 - reported in the figures
        out["runaway_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        out["runaway_done"].set()  # the users stop once they have made their requests


def _runaway(at, sql: str, sql_timeout: float, out: dict) -> None:
    try:
        time.sleep(3.0)  # start while the users are mid-way
        at.radio(key="pt_view").set_value("SQL").run()
        at.text_area(key="pt_sql").set_value(sql)
        t0 = time.monotonic()
        at.button(key="pt_sql_run").click().run(timeout=sql_timeout + 60)
        stopped = [str(e.value) for e in at.error if "time limit" in str(e.value)]
        if stopped:
            out["runaway_s"] = time.monotonic() - t0
            out["runaway_message"] = stopped[0][:160]
        else:
            out["runaway_error"] = f"no time-limit message; errors: {_error_texts(at)[:1]}"
    except Exception as exc:  # noqa: BLE001 - reported in the figures
        out["runaway_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"


def start_live_writer(job_dir: Path, every_s: float = 1.0) -> subprocess.Popen:
    """The live job's shard writer in a child process (not a thread of this "server" process)."""
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("bench_server.py")), "--live-writer",
                             str(job_dir), "--live-every-s", str(every_s)], cwd=str(REPO))


def run_sessions(workspace: Path, args, sql: str, live: bool, runaway: bool) -> dict:
    """`args.users` sessions making `args.requests` filter changes each (and a runaway SQL user when
    `runaway`); returns {"latencies", "script_s", "errors", "runaway_s"/"runaway_error", "wall_s"}."""
    os.environ["FRA_WORKSPACE"] = str(workspace)
    out: dict = {"latencies": [], "script_s": [], "errors": [], "timings": _as_one_server(),
                 "runaway_done": threading.Event()}
    if not runaway:
        out["runaway_done"].set()
    writer = start_live_writer(workspace / "jobs" / "accumulate-live") if live else None
    t0 = time.monotonic()
    try:
        start = threading.Barrier(args.users + int(runaway))
        deadline = time.monotonic() + args.budget_s
        threads = [threading.Thread(target=session_user, daemon=True,
                                    args=(u, args.requests, args.request_timeout_s, deadline, out, start))
                   for u in range(args.users)]
        if runaway:
            threads.append(threading.Thread(target=session_runaway, args=(sql, args.sql_timeout, out, start),
                                            daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline + 120 - time.monotonic()))
        if any(t.is_alive() for t in threads):
            out["errors"].append("a session was still running at the end of the budget")
    finally:
        if writer is not None:
            writer.terminate()
            writer.wait(timeout=30)
        from ui import store as ui_store

        ui_store._handle.clear()  # close the "server's" connection: the caller opens the file itself
    out["wall_s"] = time.monotonic() - t0
    return out

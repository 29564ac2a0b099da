"""Shared-server load test on loopback: concurrent users on the Pair tables page while a job's shards are
ingested and another user runs a runaway SQL query.

    python benchmarks/bench_server.py [--mode apptest|browser|both] [--users 8] [--requests 10]
                                      [--sql-timeout 5] [--budget-s 300]

A temporary workspace holds one finished synthetic run and a "live" job that writes a new shard every
second while the test runs (the pages ingest them). `--users` sessions each open the Pair tables page and
change filters (min count, rows; "Rows" differs between users, so every request misses the shared query
cache), one after another; meanwhile one more session runs
`SELECT count(*) FROM range(1e9) a, range(1e9) b` in the SQL box, which must stop at its limit
(`FRA_SQL_TIMEOUT_S`). Two ways to be the users:

* `apptest` (default): Streamlit sessions (`AppTest`) on threads of this process, which is the server
  (`benchmarks/server_sessions.py`): only the server's work is on the 2 cores. Each user makes at least
  `--requests` changes and goes on until the runaway query has been stopped, so they overlap it. It also
  reports the script-run time per request (the server's time) and, as the reference in the same run, one
  user alone (no live job, no runaway query).
* `browser`: `streamlit run app.py` on a free loopback port, driven by headless Chromium (Debian's, through
  Playwright), each request timed from the key press to the end of that script run: the 8 browsers share
  the 2 cores with the server, so this measures the browsers' rendering too.

Everything is bounded: requests per user, a per-request timeout and a wall-clock budget. Afterwards the
database must hold every shard the live job wrote.

Goals (issue 17): errors 0, p95 <= 2 s on 2 cores, the runaway query stopped at its limit. The last line is
`served=<n> errors=<n> p95_s=<s> runaway_stopped_s=<s> live_shards=<ingested>/<written>` (with `both`,
prefixed by the mode, after the other mode's line).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RUNAWAY = "SELECT count(*) FROM range(1000000000) a, range(1000000000) b"
APP = '[data-testid="stApp"]'
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
# finished script runs, counted from the mutation records themselves (each carries the old value), so runs
# that start and end inside one batch of mutations under load are counted too
DONE_COUNTER_JS = """
window.__stDone = 0;
new MutationObserver((records) => {
  for (const r of records) if (r.attributeName === 'data-test-script-state' && r.oldValue === 'running') window.__stDone++;
}).observe(document, {subtree: true, attributes: true, attributeOldValue: true,
                      attributeFilter: ['data-test-script-state']});
"""
IDLE_JS = ("([before]) => (window.__stDone || 0) > before && document.querySelector("
           "'[data-testid=\"stApp\"][data-test-script-state=\"notRunning\"]') !== null")


def build_workspace(root: Path) -> Path:
    from tests.store.fake_jobs import make_job

    workspace = root / "workspace"
    make_job(workspace / "jobs", "accumulate-base", n_shards=20, samples_per_shard=8, n_feat=400)
    make_job(workspace / "jobs", "accumulate-live", n_shards=1, samples_per_shard=8, n_feat=400, seed=5,
             state="running")
    return workspace


class LiveJob(threading.Thread):
    """Writes one more shard of the live job every `every_s` seconds (status 'running', this pid)."""

    def __init__(self, job_dir: Path, every_s: float = 1.0):
        from fra_core import contracts

        super().__init__(daemon=True)
        # on from the shards already there (a second run in one workspace must not rewrite ingested shards)
        self.written = len(contracts.complete_shards(job_dir))
        self.job_dir, self.every_s, self.stop = job_dir, every_s, threading.Event()

    def run(self) -> None:
        import numpy as np
        import pyarrow as pa

        from fra_core import contracts as shards
        from fra_core.contracts import write_json_atomic
        from tests.store.fake_jobs import FEATURE_TOKENS, aggregate, examples_for, pair_rows

        rng = np.random.default_rng(11)
        while not self.stop.wait(self.every_s):
            shard = self.written
            samples = list(range(shard * 8, (shard + 1) * 8))
            occ = pair_rows(rng, 200, n_feat=400)
            tokens = pa.array([[f"w{s}_{i}" for i in range(10)] for s in samples], pa.list_(pa.string()))
            shards.write_shard(self.job_dir, shard, {
                "pairs": aggregate(occ), "examples": examples_for(occ, samples),
                "samples": pa.table({"sample": pa.array(samples, pa.uint64()),
                                     "n_tokens": pa.array([10] * 8, pa.uint16()), "tokens": tokens}),
                "features": pa.table({"src": pa.array([0], pa.uint16()), "feature": pa.array([1], pa.uint32()),
                                      "n_active": pa.array([5], pa.uint64()), "n_tokens": pa.array([80], pa.uint64())}),
                "feature_tokens": FEATURE_TOKENS}, samples)
            self.written += 1
            write_json_atomic(self.job_dir / "status.json", {"state": "running", "pid": os.getpid(),
                                                             "done": self.written * 8, "updated": time.time()})


class RunWatch:
    """Counts the script runs the server finished for one browser session, from the `script_finished`
    messages on its WebSocket (protobuf ForwardMsg): exact, whatever the browser batches in its DOM."""

    def __init__(self, page):
        self.finished = 0
        self._event = asyncio.Event()
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        if isinstance(payload, str):
            return
        msg = ForwardMsg()
        try:
            msg.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - not a ForwardMsg (none expected)
            return
        if msg.WhichOneof("type") == "script_finished":
            self.finished += 1
            self._event.set()

    async def wait_after(self, before: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.finished <= before:
            self._event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no script run finished within {timeout_s:g} s")
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except asyncio.TimeoutError:
                pass


async def wait_run(page, before: int, timeout_s: float) -> None:
    await page.wait_for_function(IDLE_JS, arg=[before], timeout=timeout_s * 1000)


async def user(browser, url: str, n: int, n_requests: int, timeout_s: float, deadline: float, out: dict) -> None:
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    await context.add_init_script(DONE_COUNTER_JS)
    page = await context.new_page()
    runs = RunWatch(page)
    try:
        await page.goto(f"{url}/pair_tables", wait_until="domcontentloaded")
        await page.wait_for_selector(f'{APP}[data-test-script-state="notRunning"]', timeout=120_000)
        # by role: each widget's help button is labelled "Help for <label>" too
        await page.get_by_role("spinbutton", name="Min count").wait_for(timeout=120_000)
        await page.wait_for_function("() => (window.__stDone || 0) >= 1", timeout=120_000)
        await asyncio.sleep(2.0)  # let the first render settle: a key press before hydration is lost
        for i in range(n_requests):
            if time.monotonic() > deadline:
                break
            field = page.get_by_role("spinbutton", name="Min count" if i % 2 == 0 else "Rows")
            # always a new value (a rerun), and "Rows" differs between users: every request misses the query cache
            value = str(2 + (i // 2) % 4) if i % 2 == 0 else str(50 + 10 * i + n)
            t0 = time.monotonic()
            try:
                await field.fill(value)
                await expect(field).to_have_value(value, timeout=timeout_s * 1000)  # typed before committing
                before = runs.finished
                t0 = time.monotonic()
                await field.press("Enter")
                await runs.wait_after(before, timeout_s)
                await page.wait_for_selector(f'{APP}[data-test-script-state="notRunning"]', timeout=timeout_s * 1000)
                out["latencies"].append(time.monotonic() - t0)
                errors = await page.locator(ERRORS).all_inner_texts()
                if errors:
                    out["errors"].append(errors[0][:200])
            except Exception as exc:  # noqa: BLE001 - a timed-out request is counted as an error
                state = await page.evaluate("() => [document.querySelector('[data-testid=\"stApp\"]')"
                                            "?.getAttribute('data-test-script-state'), window.__stDone]") + [runs.finished]
                out["errors"].append(f"{type(exc).__name__} (request {i}, {value!r}, app state {state}): "
                                     f"{str(exc).splitlines()[0][:120]}")
    finally:
        await context.close()


async def runaway(browser, url: str, sql_timeout: float, out: dict) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    await context.add_init_script(DONE_COUNTER_JS)
    page = await context.new_page()
    try:
        await page.goto(f"{url}/pair_tables", wait_until="domcontentloaded")
        await page.get_by_text("SQL", exact=True).wait_for(timeout=120_000)
        await page.get_by_text("SQL", exact=True).click()
        box = page.locator("textarea")
        await box.wait_for(timeout=60_000)
        await asyncio.sleep(2.0)  # settle after the view switch (a key press before hydration is lost)
        await box.fill(RUNAWAY)
        before = await page.evaluate("() => window.__stDone || 0")
        await box.press("Tab")  # the text area commits on blur: let that rerun pass before the click
        await wait_run(page, before, 60)
        t0 = time.monotonic()
        await page.get_by_role("button", name="Run query").click()
        alert = page.locator('[data-testid="stAlertContentError"]').filter(has_text="time limit")
        await alert.wait_for(timeout=(sql_timeout + 60) * 1000)
        out["runaway_s"] = time.monotonic() - t0
        out["runaway_message"] = (await alert.first.inner_text())[:160]
    except Exception as exc:  # noqa: BLE001 - reported in the figures
        out["runaway_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        await context.close()


async def drive(url: str, args, out: dict) -> None:
    from playwright.async_api import async_playwright

    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        deadline = time.monotonic() + args.budget_s
        tasks = [user(browser, url, n, args.requests, args.request_timeout_s, deadline, out) for n in range(args.users)]

        async def delayed_runaway():
            await asyncio.sleep(3.0)  # start while the users are mid-way
            await runaway(browser, url, args.sql_timeout, out)

        extra = [] if args.quiet else [delayed_runaway()]
        await asyncio.wait_for(asyncio.gather(*tasks, *extra), timeout=args.budget_s + 120)
        await browser.close()


def p95(values: list[float]) -> float:
    lat = sorted(values)
    return lat[max(0, int(round(0.95 * len(lat))) - 1)] if lat else float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ingested_shards(workspace: Path) -> int:
    from store import Store

    store = Store(workspace / "fra.duckdb")
    try:
        with store.read() as cur:
            return cur.execute("SELECT count(*) FROM ingested_shards s JOIN runs r ON r.id = s.run"
                               " WHERE r.name = 'accumulate-live'").fetchone()[0]
    finally:
        store.close()


def report(mode: str, args, out: dict, wall: float, load: tuple[float, float], ingested: int, written: int) -> str:
    lat = out["latencies"]
    print(f"[{mode}] users={args.users} requests/user={args.requests} wall_s={wall:.1f} "
          f"load_1min start={load[0]:.2f} end={load[1]:.2f}")
    print(f"[{mode}] latency_s median={median(lat):.3f} p95={p95(lat):.3f} max={max(lat) if lat else float('nan'):.3f}")
    if out.get("script_s"):
        print(f"[{mode}] server time per request (script run) median={median(out['script_s']):.3f} "
              f"p95={p95(out['script_s']):.3f}")
    if out.get("baseline"):
        base = out["baseline"]
        print(f"[{mode}] reference, one user alone in the same run: median={median(base):.3f} p95={p95(base):.3f}; "
              f"loaded p95 / alone median = {p95(lat) / median(base):.1f}x")
    for message in out["errors"][:5]:
        print(f"[{mode}] error: {message}")
    print(f"[{mode}] runaway: {out.get('runaway_message') or out.get('runaway_error')}")
    print(f"[{mode}] live job: {written} shards written, {ingested} ingested while the users worked (the last few "
          "may land after the test stops)")
    return (f"served={len(lat)} errors={len(out['errors'])} p95_s={p95(lat):.3f} "
            f"runaway_stopped_s={out.get('runaway_s', float('nan')):.1f} live_shards={ingested}/{written}")


def run_browsers(args) -> tuple[dict, str, bool]:
    from tests.e2e.conftest import running_app

    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    workspace = build_workspace(root)
    live = LiveJob(workspace / "jobs" / "accumulate-live")
    out: dict = {"latencies": [], "errors": []}
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    with running_app(workspace, root / "streamlit.log") as server:
        if not args.quiet:
            live.start()
        asyncio.run(drive(server.url, args, out))
        live.stop.set()
        if live.is_alive():
            live.join()
    wall, load1 = time.monotonic() - t0, os.getloadavg()[0]
    line = report("browser", args, out, wall, (load0, load1), ingested_shards(workspace), live.written)
    return out, line, not out["errors"] and ("runaway_s" in out or args.quiet)


def run_apptest(args) -> tuple[dict, str, bool]:
    import json

    from benchmarks.server_sessions import run_sessions

    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    workspace = build_workspace(root)
    from streamlit import config

    load0 = os.getloadavg()[0]
    # the reference in the same run: one session alone, no live job, no runaway query
    alone = argparse.Namespace(**{**vars(args), "users": 1})
    base = run_sessions(workspace, alone, RUNAWAY, live=False, runaway=False)
    gc_setting = config.get_option("runner.postScriptGC")  # this repo's .streamlit/config.toml: off
    if args.gc_reference:  # the same load with Streamlit's default (a full gc.collect(2) after every script run)
        config.set_option("runner.postScriptGC", True)
        ref = run_sessions(workspace, args, RUNAWAY, live=not args.quiet, runaway=not args.quiet)
        config.set_option("runner.postScriptGC", gc_setting)
        print(f"[apptest] reference with runner.postScriptGC = true: served={len(ref['latencies'])} "
              f"errors={len(ref['errors'])} p95_s={p95(ref['latencies']):.3f} median_s={median(ref['latencies']):.3f} "
              f"server median={median(ref['script_s']):.3f} p95={p95(ref['script_s']):.3f}")
    out = run_sessions(workspace, args, RUNAWAY, live=not args.quiet, runaway=not args.quiet)
    if args.gc_reference:
        print(f"[apptest] runner.postScriptGC = {str(gc_setting).lower()}: p95 {p95(out['latencies']):.3f} s vs "
              f"{p95(ref['latencies']):.3f} s with it on ({p95(out['latencies']) / p95(ref['latencies']):.2f}x)")
    out["baseline"] = base["latencies"]
    out["errors"] = base["errors"] + out["errors"]
    status = json.loads((workspace / "jobs" / "accumulate-live" / "status.json").read_text())
    written = int(status.get("done", 8)) // 8
    line = report("apptest", args, out, out["wall_s"], (load0, os.getloadavg()[0]), ingested_shards(workspace), written)
    return out, line, not out["errors"] and ("runaway_s" in out or args.quiet)


def live_writer(job_dir: Path, every_s: float) -> int:
    """--live-writer: the live job's shard writer on its own (the AppTest mode's child process)."""
    live = LiveJob(job_dir, every_s)
    live.start()
    try:
        live.join()
    except KeyboardInterrupt:
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["apptest", "browser", "both"], default="apptest",
                        help="apptest: the users are Streamlit sessions in this process (the server alone on the "
                             "cores); browser: headless Chromium against `streamlit run` (the browsers share the "
                             "cores); both: one after the other")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--sql-timeout", type=float, default=5.0)
    parser.add_argument("--request-timeout-s", type=float, default=60.0)
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--quiet", action="store_true",
                        help="baseline: no live job and no runaway query (the same users alone)")
    parser.add_argument("--gc-reference", action="store_true",
                        help="apptest: first the same load with Streamlit's default runner.postScriptGC = true")
    parser.add_argument("--live-writer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--live-every-s", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.live_writer:
        return live_writer(args.live_writer, args.live_every_s)
    os.environ["FRA_SQL_TIMEOUT_S"] = str(args.sql_timeout)
    lines, ok = [], True
    for mode, run in (("apptest", run_apptest), ("browser", run_browsers)):
        if args.mode in (mode, "both"):
            _, line, passed = run(args)
            lines.append((mode, line))
            ok &= passed
    if len(lines) > 1:
        for mode, line in lines[:-1]:
            print(f"{mode}: {line}")
    print(f"{lines[-1][0]}: {lines[-1][1]}" if len(lines) > 1 else lines[-1][1])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

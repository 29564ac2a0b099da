"""Shared-server load test on loopback: concurrent users on the Pair tables page while a job's shards are
ingested and another user runs a runaway SQL query.

    python benchmarks/bench_server.py [--users 8] [--requests 10] [--sql-timeout 5] [--budget-s 300]

Starts `streamlit run app.py` on a free loopback port with a temporary workspace (one finished synthetic
run, and a "live" job that writes a new shard every second while the test runs: the pages ingest them),
then drives headless Chromium (Debian's, through Playwright): `--users` browser sessions each open the
Pair tables page and make `--requests` filter changes (min count, rows), one after another, each timed from
the key press to the end of that script run; meanwhile one more session runs
`SELECT count(*) FROM range(1e9) a, range(1e9) b` in the SQL box, which must stop at its limit
(`FRA_SQL_TIMEOUT_S`). Everything is bounded: a fixed number of requests per user, a per-request timeout
and a wall-clock budget. Afterwards the database must hold every shard the live job wrote.

Goals (issue 17): errors 0, p95 <= 2 s on 2 cores, the runaway query stopped at its limit. The last line is
`served=<n> errors=<n> p95_s=<s> runaway_stopped_s=<s> live_shards=<ingested>/<written>`.
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
        super().__init__(daemon=True)
        self.job_dir, self.every_s, self.written, self.stop = job_dir, every_s, 1, threading.Event()

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


async def user(browser, url: str, n_requests: int, timeout_s: float, deadline: float, out: dict) -> None:
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    await context.add_init_script(DONE_COUNTER_JS)
    page = await context.new_page()
    runs = RunWatch(page)
    try:
        await page.goto(f"{url}/pair_tables", wait_until="domcontentloaded")
        await page.wait_for_selector(f'{APP}[data-test-script-state="notRunning"]', timeout=120_000)
        await page.get_by_label("Min count").wait_for(timeout=120_000)
        await page.wait_for_function("() => (window.__stDone || 0) >= 1", timeout=120_000)
        await asyncio.sleep(2.0)  # let the first render settle: a key press before hydration is lost
        for i in range(n_requests):
            if time.monotonic() > deadline:
                break
            field = page.get_by_label("Min count") if i % 2 == 0 else page.get_by_label("Rows")
            value = str(2 + (i // 2) % 4) if i % 2 == 0 else str(50 + 10 * i)  # always a new value: a rerun
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
        tasks = [user(browser, url, args.requests, args.request_timeout_s, deadline, out) for _ in range(args.users)]

        async def delayed_runaway():
            await asyncio.sleep(3.0)  # start while the users are mid-way
            await runaway(browser, url, args.sql_timeout, out)

        extra = [] if args.quiet else [delayed_runaway()]
        await asyncio.wait_for(asyncio.gather(*tasks, *extra), timeout=args.budget_s + 120)
        await browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--sql-timeout", type=float, default=5.0)
    parser.add_argument("--request-timeout-s", type=float, default=60.0)
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--quiet", action="store_true",
                        help="baseline: no live job and no runaway query (the same users alone)")
    args = parser.parse_args()
    os.environ["FRA_SQL_TIMEOUT_S"] = str(args.sql_timeout)
    from tests.e2e.conftest import running_app

    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    workspace = build_workspace(root)
    live = LiveJob(workspace / "jobs" / "accumulate-live")
    out: dict = {"latencies": [], "errors": []}
    t0 = time.monotonic()
    with running_app(workspace, root / "streamlit.log") as server:
        if not args.quiet:
            live.start()
        asyncio.run(drive(server.url, args, out))
        live.stop.set()
        if live.is_alive():
            live.join()
    wall = time.monotonic() - t0
    from store import Store

    store = Store(workspace / "fra.duckdb")
    with store.read() as cur:
        ingested = cur.execute("SELECT count(*) FROM ingested_shards s JOIN runs r ON r.id = s.run"
                               " WHERE r.name = 'accumulate-live'").fetchone()[0]
    store.close()
    lat = sorted(out["latencies"])
    p95 = lat[max(0, int(round(0.95 * len(lat))) - 1)] if lat else float("nan")
    print(f"users={args.users} requests/user={args.requests} wall_s={wall:.1f} load={os.getloadavg()[0]:.2f}")
    print(f"latency_s median={statistics.median(lat) if lat else float('nan'):.3f} p95={p95:.3f} "
          f"max={max(lat) if lat else float('nan'):.3f}")
    for message in out["errors"][:5]:
        print(f"error: {message}")
    print(f"runaway: {out.get('runaway_message') or out.get('runaway_error')}")
    print(f"live job: {live.written} shards written, {ingested} ingested while the users worked (the last few "
          "may land after the test stops)")
    print(f"served={len(lat)} errors={len(out['errors'])} p95_s={p95:.3f} "
          f"runaway_stopped_s={out.get('runaway_s', float('nan')):.1f} live_shards={ingested}/{live.written}")
    return 0 if not out["errors"] and ("runaway_s" in out or args.quiet) else 1


if __name__ == "__main__":
    sys.exit(main())

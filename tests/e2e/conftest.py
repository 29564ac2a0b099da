"""Real-browser fixtures: `streamlit run app.py` on a free loopback port with a temporary workspace, and
Debian's Chromium driven by Playwright (never a downloaded browser).

Skip policy: without /usr/bin/chromium (or the playwright package) the e2e tests are skipped locally,
and fail when CI=true, so CI cannot pass by silently skipping them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = Path(os.environ.get("FRA_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
HEALTH_TIMEOUT_S = 30.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing_browser_reason() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (apt-get install chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not importable ({exc}); pip install -r requirements-dev.txt"
    return None


def pytest_collection_modifyitems(items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True, scope="session")
def _browser_available():
    reason = _missing_browser_reason()
    if reason and _in_ci():
        pytest.fail(f"e2e tests cannot run in CI: {reason}", pytrace=False)
    if reason:
        pytest.skip(reason)


@pytest.fixture(autouse=True, scope="session")
def _fresh_artifacts(_browser_available):
    """Screenshots always show this run: clear the old ones once, before any e2e module starts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM a process group, SIGKILL it if it is still there after `grace_s`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop_jobs(workspace: Path) -> None:
    """Job processes run in their own sessions (they survive the app); stop the ones this run started."""
    for status_file in (workspace / "jobs").glob("*/status.json"):
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            continue
        pid = status.get("pid")
        if status.get("state") in ("queued", "running") and isinstance(pid, int) and pid > 1:
            try:
                if os.getpgid(pid) == pid:  # a session leader started by fra_core.jobs
                    _kill_group(pid, grace_s=5.0)
            except ProcessLookupError:
                pass


class AppServer:
    def __init__(self, url: str, workspace: Path, log_path: Path, health_s: float, proc: subprocess.Popen):
        self.url, self.workspace, self.log_path, self.health_s, self.proc = url, workspace, log_path, health_s, proc

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@contextmanager
def running_app(workspace: Path, log_path: Path):
    """`streamlit run app.py` with FRA_WORKSPACE=workspace, logging to log_path; yields an AppServer once
    /_stcore/health answers, and stops the server and the jobs it started on exit."""
    port = _free_port()
    env = {**os.environ, "FRA_WORKSPACE": str(workspace), "PYTHONUNBUFFERED": "1",
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    log = open(log_path, "w", encoding="utf-8")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    health_s = None
    try:
        while time.monotonic() - t0 < HEALTH_TIMEOUT_S * 4:  # the test asserts the 30 s; wait longer here
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200 and resp.read().strip() == b"ok":
                        health_s = time.monotonic() - t0
                        break
            except OSError:
                pass
            time.sleep(0.25)
        server = AppServer(url, workspace, log_path, health_s, proc)
        if health_s is None:
            pytest.fail(f"streamlit did not answer {url}/_stcore/health (exit code {proc.poll()}):\n"
                        f"{server.log_tail()}", pytrace=False)
        yield server
    finally:
        _kill_group(proc.pid)
        proc.wait(timeout=30)
        _stop_jobs(workspace)
        log.close()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory) -> AppServer:
    """The walkthrough's server, with an empty temporary workspace."""
    workspace = tmp_path_factory.mktemp("e2e") / "workspace"
    workspace.mkdir()
    with running_app(workspace, ARTIFACTS / "e2e-streamlit.log") as server:
        yield server


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, app_server):
    """One browser tab for a whole test module, so a walkthrough keeps its Streamlit session."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1500, "height": 1300}, accept_downloads=True)
    context.set_default_timeout(60_000)
    from tests.e2e.helpers import RUN_COUNTER_JS

    context.add_init_script(RUN_COUNTER_JS)
    page = context.new_page()
    console_errors: list[str] = []
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    page.console_errors = console_errors
    page.app_url = app_server.url
    yield page
    context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed e2e step, save what the browser showed (FAILED-<test>.png) and the server log tail."""
    report = yield
    if report.when == "call" and report.failed:
        page = item.funcargs.get("page")
        if page is not None:
            try:
                from tests.e2e.helpers import screenshot

                screenshot(page, f"FAILED-{item.name}")
            except Exception as exc:  # a dead browser must not hide the real failure
                report.sections.append(("e2e screenshot", f"could not save a screenshot: {exc}"))
        server = item.funcargs.get("app_server")
        if server is not None:
            report.sections.append(("streamlit log (tail)", server.log_tail(40)))
    return report

"""Server mode against a real OIDC provider on loopback (oidc-provider-mock), in real Chromium: an
unauthenticated session sees only the sign-in, also on a deep link; a viewer signs in through the provider
and is routed to the pair tables only, never to a job page."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ARTIFACTS, REPO_ROOT, AppServer, _free_port, _kill_group
from tests.e2e.helpers import open_app, screenshot, wait_for_app
from tests.store.fake_jobs import make_job

pytestmark = pytest.mark.e2e
oidc_mock = pytest.importorskip("oidc_provider_mock")


@pytest.fixture(scope="module")
def provider():
    os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # loopback http, test only
    with oidc_mock.run_server_in_thread(port=_free_port()) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, provider):
    """`streamlit run app.py` in server mode (OIDC), a workspace with one finished run."""
    root = tmp_path_factory.mktemp("e2e-oidc")
    workspace = root / "workspace"
    make_job(workspace / "jobs", "accumulate-a", n_shards=2)
    port = _free_port()
    (root / "secrets.toml").write_text(
        f'[auth]\nredirect_uri = "http://localhost:{port}/oauth2callback"\ncookie_secret = "{secrets.token_hex(16)}"\n'
        f'client_id = "fra-studio"\nclient_secret = "not-a-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n')
    (root / "server.toml").write_text('auth = "oidc"\ndefault_role = "none"\n[roles]\nadmin = ["root@example.org"]\n'
                                      'viewer = ["*@viewers.example.org"]\n')
    env = {**os.environ, "FRA_WORKSPACE": str(workspace), "FRA_SERVER_CONFIG": str(root / "server.toml"),
           "PYTHONUNBUFFERED": "1"}
    log = open(ARTIFACTS / "e2e-oidc.log", "w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.fileWatcherType", "none", "--secrets.files", str(root / "secrets.toml")],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        yield AppServer(url, workspace, ARTIFACTS / "e2e-oidc.log", None, proc)
    finally:
        _kill_group(proc.pid)
        proc.wait(timeout=30)
        log.close()


def _titles(page) -> list[str]:
    return page.locator("h1").all_inner_texts()


def test_unauthenticated_deep_link_shows_only_the_sign_in(app_server, page):
    open_app(page, f"{app_server.url}/fra_accumulate")  # the server's very first request: a job page
    screenshot(page, "oidc-00-deep-link")
    assert _titles(page) == ["FRA Studio"]
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    body = page.locator('[data-testid="stApp"]').inner_text()
    assert "Dataset accumulation" not in body and "Launch" not in body


def test_viewer_signs_in_through_the_provider_and_sees_pair_tables_only(app_server, page):
    open_app(page, app_server.url)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector('input[name="sub"]', timeout=60_000)  # the provider's own form
    page.fill('input[name="sub"]', "vera@viewers.example.org")
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{app_server.url}/**", timeout=60_000)
    wait_for_app(page)
    screenshot(page, "oidc-01-viewer")
    expect(page.get_by_role("heading", name="Pair tables").first).to_be_visible()
    sidebar = page.locator('[data-testid="stSidebar"]')
    expect(sidebar.get_by_text("vera@viewers.example.org", exact=False).first).to_be_visible()
    links = page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
    # a viewer's read-only pages (ui.auth.ROLE_PAGES): the pair tables and the Feature dashboard; each menu
    # entry's text is "<icon name>\n\n<title>"
    assert [t.strip().split("\n")[-1] for t in links] == ["Pair tables", "Feature dashboard"], links
    open_app(page, f"{app_server.url}/fra_accumulate")  # a deep link to a job page: not the viewer's
    screenshot(page, "oidc-02-viewer-deep-link")
    assert "Dataset accumulation" not in _titles(page)
    assert "Launch" not in page.locator('[data-testid="stApp"]').inner_text()


def test_unknown_user_gets_no_role(app_server, browser):
    context = browser.new_context()
    page = context.new_page()
    try:
        open_app(page, app_server.url)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_selector('input[name="sub"]', timeout=60_000)
        page.fill('input[name="sub"]', "eve@elsewhere.example.org")
        page.get_by_role("button", name="Authorize").click()
        page.wait_for_url(f"{app_server.url}/**", timeout=60_000)
        wait_for_app(page)
        expect(page.get_by_text("has no role on this server", exact=False).first).to_be_visible()
        assert "Pair tables" not in _titles(page)
    finally:
        context.close()

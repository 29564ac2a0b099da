"""A deep link as the very first request of a fresh server opens that page through app.py's router.

Streamlit runs a server's first script run in its legacy multipage mode when a pages/ folder sits
beside the main script (see pages/__init__.py): without the fix, /pair_tables ran the page file alone,
with no app sidebar and a menu listing every pages/*.py, helper modules included.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ARTIFACTS, REPO_ROOT, running_app
from tests.e2e.helpers import assert_no_errors, menu_entries, open_app, screenshot

pytestmark = pytest.mark.e2e

DEEP_PAGE, DEEP_TITLE = "pair_tables", "Pair tables"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """A server of its own: the deep link must be the first request it ever serves."""
    workspace = tmp_path_factory.mktemp("e2e-deep-link") / "workspace"
    workspace.mkdir()
    with running_app(workspace, ARTIFACTS / "e2e-deep-link.log") as server:
        yield server


def test_deep_link_first_request_goes_through_the_router(app_server, page):
    open_app(page, f"{app_server.url}/{DEEP_PAGE}")
    screenshot(page, "00-deep-link")
    assert_no_errors(page, f"/{DEEP_PAGE} opened first")
    expect(page.get_by_role("heading", name=DEEP_TITLE).first).to_be_visible()
    assert page.url.rstrip("/").endswith(f"/{DEEP_PAGE}")
    routed = re.findall(r'"pages/(\w+)\.py"', (REPO_ROOT / "app.py").read_text())
    menu = [href.rstrip("/").rsplit("/", 1)[-1] for href in menu_entries(page)]
    # app.py's first page is served at "/", so its link ends with the host, not with its file name
    assert menu[1:] == routed[1:], f"menu {menu} is not app.py's pages {routed}"
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("Workspace:", exact=False).first).to_be_visible()

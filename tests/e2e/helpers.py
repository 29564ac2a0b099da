"""Streamlit-in-Chromium helpers: wait for a script run to finish, navigate, check for error boxes,
click Vega cells, save screenshots."""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from tests.e2e.conftest import REPO_ROOT, SCREENSHOTS

APP = '[data-testid="stApp"]'
# Long first runs: importing torch, loading the model, FRA on 2 shared cores.
RUN_TIMEOUT_MS = 240_000


def wait_for_app(page: Page, timeout_ms: int = RUN_TIMEOUT_MS, settle_ms: int = 400) -> None:
    """Block until the websocket is connected, no script run is in progress and nothing is stale."""
    deadline = time.monotonic() + timeout_ms / 1000
    page.wait_for_selector(f'{APP}[data-test-connection-state="CONNECTED"]', timeout=timeout_ms)
    # Two consecutive idle observations `settle_ms` apart: a click may only start its rerun a moment later.
    while True:
        left = max(1_000, int((deadline - time.monotonic()) * 1000))
        page.wait_for_selector(f'{APP}[data-test-script-state="notRunning"]', timeout=left)
        page.wait_for_function(
            "() => !document.querySelector('[data-stale=\"true\"]')"
            " && !document.querySelector('[data-testid=\"stSpinner\"]')"
            " && !document.querySelector('[data-testid=\"stSkeleton\"]')",
            timeout=left)
        page.wait_for_timeout(settle_ms)
        if page.locator(f'{APP}[data-test-script-state="notRunning"]').count():
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the Streamlit script never became idle")


# Counts script runs in the page: every change of stApp's data-test-script-state to "running". Installed
# before any page script (context.add_init_script) and fed by every DOM change (stApp's attribute, or a
# new stApp element), so a rerun that starts and ends between two polls of ours is still counted.
RUN_COUNTER_JS = """
window.__stRuns = 0;
let __stLast = null;
new MutationObserver(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const state = app ? app.getAttribute('data-test-script-state') : null;
  if (state !== __stLast) {
    if (state === 'running') window.__stRuns++;
    __stLast = state;
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-test-script-state']});
"""


@contextmanager
def rerun(page: Page, timeout_ms: int = RUN_TIMEOUT_MS, start_timeout_ms: int = 60_000):
    """Wrap a user action that makes Streamlit rerun: wait for that run to start, then to finish."""
    before = page.evaluate("() => window.__stRuns || 0")
    yield
    page.wait_for_function(f"() => (window.__stRuns || 0) > {before}", timeout=start_timeout_ms)
    wait_for_app(page, timeout_ms)


def error_texts(page: Page) -> list[str]:
    """Texts of every exception box and error alert on the page (main area and sidebar)."""
    # An exception is drawn inside an error alert: count such an alert once, as its exception.
    boxes = page.locator('[data-testid="stException"], '
                         '[data-testid="stAlertContentError"]:not(:has([data-testid="stException"]))')
    return [boxes.nth(i).inner_text() for i in range(boxes.count())]


def assert_no_errors(page: Page, where: str) -> None:
    errors = error_texts(page)
    assert not errors, f"Streamlit error box(es) on {where}:\n" + "\n---\n".join(errors)
    errors = [e for e in getattr(page, "console_errors", []) if "ResizeObserver" not in e]
    assert not errors, f"JavaScript errors on {where}: {errors}"


def open_app(page: Page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    wait_for_app(page)


def nav_link(page: Page, url_path: str) -> Locator:
    return page.locator(f'[data-testid="stSidebarNavLink"][href$="/{url_path}"]')


def go_to(page: Page, url_path: str, title: str) -> None:
    """Open a page through the sidebar menu (as a user would, keeping the session) and wait for its title."""
    if not page.url.startswith("http") or "/_stcore/" in page.url:  # a step run on its own: open the app first
        open_app(page, page.app_url)
    link = nav_link(page, url_path)
    assert link.count() == 1, (f"no sidebar menu entry for /{url_path}: is pages/{url_path}.py listed in app.py "
                               f"SECTIONS? Menu has: {menu_entries(page)}")
    link.click()
    page.wait_for_url(re.compile(rf"/{re.escape(url_path)}/?(\?.*)?$"))
    # The new page's title is drawn by its own script run; then wait for that run to finish.
    expect(page.get_by_role("heading", name=title, exact=False).first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    wait_for_app(page)


def menu_entries(page: Page) -> list[str]:
    links = page.locator('[data-testid="stSidebarNavLink"]')
    return [links.nth(i).get_attribute("href") or "" for i in range(links.count())]


def page_present(url_path: str) -> bool:
    return (REPO_ROOT / "pages" / f"{url_path}.py").is_file()


def screenshot(page: Page, name: str, max_height: int = 5000, clip_bottom: Locator | None = None) -> Path:
    """Save the whole page (Streamlit scrolls inside its main block, so the viewport grows to fit it), or
    only down to the bottom of `clip_bottom`."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.mouse.move(1, 1)  # no chart tooltip left over the picture
    size = page.viewport_size
    height = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMainBlockContainer\"]');"
                           " return m ? Math.ceil(m.getBoundingClientRect().height) + 80 : 0; }")
    if size and height > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": min(int(height), max_height)})
        page.wait_for_timeout(800)  # let charts re-layout
    try:
        clip = None
        if clip_bottom is not None:
            box = clip_bottom.bounding_box()
            assert box, "nothing to clip the screenshot to"
            width = page.viewport_size["width"]
            clip = {"x": 0, "y": 0, "width": width, "height": box["y"] + box["height"] + 24}
        page.screenshot(path=str(path), full_page=clip is None, clip=clip)
    finally:
        if size:
            page.set_viewport_size(size)
    return path


def vega_charts(page: Page) -> Locator:
    return page.locator('[data-testid="stVegaLiteChart"]')


def hover_cell(page: Page, chart: Locator, fx: float, fy: float) -> str:
    """Hover a chart at fractions (fx, fy) of its drawing surface; return the Vega tooltip text ('' if none)."""
    surface = chart.locator("canvas, svg.marks").first
    box = surface.bounding_box()
    assert box, "the Vega chart has no drawing surface"
    page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    tip = page.locator("#vg-tooltip-element")
    try:
        expect(tip).to_be_visible(timeout=3_000)
    except AssertionError:
        return ""
    return tip.inner_text()


def select_option(page: Page, label: str, option: str, exact: bool = True) -> None:
    """Pick `option` in the Streamlit selectbox labelled `label` (a BaseWeb combobox) and wait for the rerun."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text(label, exact=True)).first
    box.locator('[role="combobox"], input').first.click()
    with rerun(page):
        page.locator('[role="option"]').filter(has_text=re.compile(
            rf"^\s*{re.escape(option)}\s*$" if exact else re.escape(option))).first.click()


def fill_input(page: Page, label: str, value: str | int) -> None:
    """Type into a Streamlit text/number input and commit it with Enter (one rerun)."""
    field = page.get_by_label(label, exact=True)
    if field.input_value() == str(value):
        return  # unchanged: Streamlit would not rerun
    with rerun(page):
        field.fill(str(value))
        field.press("Enter")


def caption_number(page: Page, pattern: str) -> int:
    """The integer captured by `pattern` (one group, digits with thousands separators) in the page text."""
    text = page.locator('[data-testid="stMain"]').inner_text()
    found = re.search(pattern, text)
    assert found, f"no text matching {pattern!r} on the page"
    return int(found.group(1).replace(",", ""))


def dataframe_rows(frame: Locator) -> int:
    """Number of data rows of an st.dataframe (from the grid's accessibility table, which has every row
    count even though only the visible rows are in the DOM)."""
    grid = frame.locator('table[role="grid"]').first
    expect(grid).to_be_attached()
    return int(grid.get_attribute("aria-rowcount") or 1) - 1


def dataframe_columns(frame: Locator) -> list[str]:
    """Column names of an st.dataframe, once its grid has rendered them (on a busy machine the frame can be
    in the DOM before its header cells: CI once read no columns at all)."""
    heads = frame.locator('table[role="grid"] th[role="columnheader"]')
    heads.first.wait_for(state="attached")
    return [heads.nth(i).text_content().strip() for i in range(heads.count())]


def dataframe_cell(frame: Locator, column: str, row: int = 0) -> str:
    """Text of one cell of an st.dataframe's visible rows (row 0 = the first data row)."""
    columns = dataframe_columns(frame)
    assert column in columns, f"no column {column!r} in {columns}"
    cell = frame.locator(f'table[role="grid"] tbody tr[aria-rowindex="{row + 2}"] '
                         f'td[aria-colindex="{columns.index(column) + 1}"]')
    return cell.first.text_content().strip()

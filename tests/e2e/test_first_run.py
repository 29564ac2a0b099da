"""The first-run walkthrough in a real browser, one test per step, in order, sharing one browser tab
(one Streamlit session) and one temporary workspace. Each step saves a screenshot under
test-artifacts/screenshots/."""

from __future__ import annotations

import os
import re
import shutil
import time

import pandas as pd
import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import HEALTH_TIMEOUT_S, REPO_ROOT
from tests.e2e.helpers import (
    assert_no_errors,
    caption_number,
    dataframe_cell,
    dataframe_columns,
    dataframe_rows,
    error_texts,
    fill_input,
    go_to,
    hover_cell,
    open_app,
    page_present,
    rerun,
    screenshot,
    select_option,
    vega_charts,
    wait_for_app,
)

pytestmark = pytest.mark.e2e

SAE_BUILD_TIMEOUT_MS = 600_000  # copying the shipped demo SAEs takes a second; training them, minutes
JOB_TIMEOUT_S = 240
ACC_SAMPLES = 8
PAIRS_SHOWN = r"([\d,]+) pairs shown"
STATE: dict = {}  # what earlier steps leave for later ones (the walkthrough runs in file order)


def test_01_health_endpoint_within_30s(app_server, page):
    assert app_server.health_s is not None and app_server.health_s <= HEALTH_TIMEOUT_S, (
        f"/_stcore/health answered after {app_server.health_s} s (limit {HEALTH_TIMEOUT_S} s)")
    page.goto(f"{app_server.url}/_stcore/health")
    assert page.inner_text("body").strip() == "ok"


def test_02_models_page_demo_heatmap_and_head_scores(app_server, page):
    open_app(page, app_server.url)
    assert_no_errors(page, "the Models page")
    expect(page.get_by_role("heading", name="Models").first).to_be_visible()
    # The demo model is the default choice and loads offline.
    expect(page.get_by_text("Run a prompt")).to_be_visible()
    chart = vega_charts(page).first
    expect(chart.locator("canvas, svg.marks").first).to_be_visible()
    expect(page.get_by_text("Head scores on repeated random sequences")).to_be_visible()
    expect(page.get_by_text("Strongest induction head: L")).to_be_visible()
    tables = page.locator('[data-testid="stDataFrame"]')
    expect(tables).to_have_count(2)  # next-token predictions, head scores
    assert {"layer", "head", "previous_token", "induction"} <= set(dataframe_columns(tables.nth(1)))
    metric = page.locator('[data-testid="stMetric"]')
    layers = int(metric.filter(has_text="Layers").locator('[data-testid="stMetricValue"]').inner_text())
    heads = int(metric.filter(has_text="Heads / layer").locator('[data-testid="stMetricValue"]').inner_text())
    assert dataframe_rows(tables.nth(1)) == layers * heads  # one score row per head
    assert_no_errors(page, "the Models page")
    screenshot(page, "02-models")


def test_03_sae_page_lists_demo_sae(app_server, page):
    if not page_present("sae"):
        pytest.skip("page pages/sae.py not present yet")
    go_to(page, "sae", "Sparse autoencoders")
    assert_no_errors(page, "the SAEs page")
    page.get_by_role("tab", name="Inspect").click()
    create = page.get_by_role("button", name="Create the demo SAEs")
    if create.count():  # a fresh workspace: the demo SAEs are created on first use (copied when shipped)
        with rerun(page, timeout_ms=SAE_BUILD_TIMEOUT_MS):
            create.click()
    assert_no_errors(page, "the SAEs page (Inspect)")
    inspect = page.get_by_role("tabpanel", name="Inspect")
    expect(inspect.locator('[data-testid="stDataFrame"]').first).to_contain_text("demo-l1-ln1")
    expect(inspect.locator('[data-testid="stDataFrame"]').first).to_contain_text("demo-l0-hook-z")
    expect(inspect.get_by_text("explained variance").first).to_be_visible()  # the inspect view ran
    screenshot(page, "03-sae")


def test_04_single_text_fra_heatmap_click_shows_pairs(app_server, page):
    if not page_present("fra_text"):
        pytest.skip("page pages/fra_text.py not present yet")
    go_to(page, "fra_text", "Single text FRA")
    assert_no_errors(page, "the Single text FRA page")
    charts = vega_charts(page)
    expect(charts.first.locator("canvas, svg.marks").first).to_be_visible()
    expect(page.get_by_text("Top feature pairs")).to_be_visible()
    q_input, k_input = page.get_by_label("Query position", exact=True), page.get_by_label("Key position", exact=True)
    before = (int(q_input.input_value()), int(k_input.input_value()))
    screenshot(page, "04a-fra-text")
    # Hover the attention heatmap until the tooltip names a cell below the diagonal that is not the current one.
    target = None
    for fx, fy in ((0.35, 0.7), (0.3, 0.6), (0.45, 0.75), (0.25, 0.5), (0.5, 0.8), (0.2, 0.8), (0.4, 0.55)):
        cell = re.search(r"query\s*(\d+):.*?key\s*(\d+):", hover_cell(page, charts.first, fx, fy), re.S)
        if cell and int(cell.group(1)) > int(cell.group(2)) and (int(cell.group(1)), int(cell.group(2))) != before:
            target = (fx, fy, int(cell.group(1)), int(cell.group(2)))
            break
    assert target, "no heatmap cell below the diagonal answered a hover with a tooltip"
    fx, fy, q, k = target
    box = charts.first.locator("canvas, svg.marks").first.bounding_box()
    with rerun(page):
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    assert_no_errors(page, "the Single text FRA page after a cell click")
    expect(q_input).to_have_value(str(q))
    expect(k_input).to_have_value(str(k))
    expect(page.get_by_text(re.compile(rf"query {q} ‘.*’ → key {k} ‘"))).to_be_visible()
    pairs = page.locator('[data-testid="stDataFrame"]').filter(has_text="q_meaning")
    expect(pairs).to_have_count(1)
    assert {"q_feature", "k_feature", "value"} <= set(dataframe_columns(pairs)), dataframe_columns(pairs)
    assert dataframe_rows(pairs) >= 1, "the clicked cell shows an empty pair table"
    screenshot(page, "04b-fra-text-cell")
    # The README's picture of the explorer: page top to the clicked cell's pair table.
    explorer = screenshot(page, "explorer", clip_bottom=pairs)
    if os.environ.get("FRA_E2E_UPDATE_DOCS") == "1":
        shutil.copyfile(explorer, REPO_ROOT / "docs" / "screenshot-explorer.png")


def test_05_accumulation_job_runs_with_progress(app_server, page):
    if not page_present("fra_accumulate"):
        pytest.skip("page pages/fra_accumulate.py not present yet")
    go_to(page, "fra_accumulate", "Dataset accumulation")
    assert_no_errors(page, "the Dataset accumulation page")
    # A small job: 8 demo texts of 16 tokens, two shards, every head of layer 1, demo-l1-ln1 on both sides.
    fill_input(page, "Samples", ACC_SAMPLES)
    fill_input(page, "Context length (tokens)", 16)
    fill_input(page, "Samples per shard", 4)
    fill_input(page, "Batch size", 4)
    with rerun(page):
        page.get_by_role("button", name="Launch").click()
    assert_no_errors(page, "the Dataset accumulation page after Launch")
    expect(page.get_by_text("Launched job")).to_be_visible()
    progress = page.locator('[data-testid="stProgress"]')
    seen: list[str] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if progress.count():
            text = progress.first.inner_text().strip()
            if text and (not seen or seen[-1] != text):
                seen.append(text)
                if len(seen) == 1:
                    screenshot(page, "05a-accumulate-progress")
            if text.startswith("done:"):
                break
        assert not error_texts(page), f"error while the job ran: {error_texts(page)}; progress seen: {seen}"
        page.wait_for_timeout(500)
    assert seen, "no progress bar appeared for the launched job"
    assert seen[-1] == f"done: {ACC_SAMPLES} / {ACC_SAMPLES}", f"job did not finish in time; progress seen: {seen}"
    # The finished shards are ingested (the page polls every 2 s): the jobs table names a run with all samples.
    jobs_table = page.locator('[data-testid="stDataFrame"]').filter(has_text="ingested samples").first
    deadline = time.monotonic() + 60
    while dataframe_cell(jobs_table, "ingested samples") != str(ACC_SAMPLES) and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    assert dataframe_cell(jobs_table, "state") == "done"
    assert dataframe_cell(jobs_table, "ingested samples") == str(ACC_SAMPLES)
    assert int(dataframe_cell(jobs_table, "pairs")) > 0
    STATE["progress_seen"] = seen
    wait_for_app(page)
    screenshot(page, "05b-accumulate-done")


def test_06_pair_table_filters(app_server, page):
    if not page_present("pair_tables"):
        pytest.skip("page pages/pair_tables.py not present yet")
    if "progress_seen" not in STATE:
        pytest.skip("needs the accumulation run of step 5")
    go_to(page, "pair_tables", "Pair tables")
    assert_no_errors(page, "the Pair tables page")
    fill_input(page, "Min count", 1)  # an 8-sample run: count every pair (the default leaves out pairs in < 5 cells)
    fill_input(page, "Rows", 10_000)
    everything = caption_number(page, PAIRS_SHOWN)
    assert everything > 0
    select_option(page, "Head", "L1H0")
    assert_no_errors(page, "the Pair tables page (head filter)")
    one_head = caption_number(page, PAIRS_SHOWN)
    assert 0 < one_head < everything, f"head filter: {one_head} of {everything} pairs"
    table = page.locator('[data-testid="stDataFrame"]').filter(has_text="q_feat").first
    assert dataframe_rows(table) == one_head
    assert dataframe_cell(table, "head") == "0"
    feature = int(dataframe_cell(table, "q_feat"))  # the top pair's query feature
    fill_input(page, "Feature id", feature)
    assert_no_errors(page, "the Pair tables page (feature filter)")
    with_feature = caption_number(page, PAIRS_SHOWN)
    assert 0 < with_feature < one_head, f"feature filter: {with_feature} of {one_head} pairs"
    assert dataframe_rows(table) == with_feature
    assert feature in (int(dataframe_cell(table, "q_feat")), int(dataframe_cell(table, "k_feat")))
    STATE["filtered"] = {"head": 0, "feature": feature, "rows": with_feature}
    screenshot(page, "06-pair-tables-filtered")


def test_07_download_filtered_pairs_csv(app_server, page, tmp_path):
    if "filtered" not in STATE:
        pytest.skip("needs the filtered pair table of step 6")
    with rerun(page):
        page.get_by_text("Export", exact=True).click()
    assert_no_errors(page, "the Pair tables export view")
    with rerun(page):  # built on a click, with a progress bar; then offered for download
        page.get_by_role("button", name="Build Pairs (CSV)", exact=True).click()
    expect(page.get_by_text("Pairs (CSV) ready:", exact=False).first).to_be_visible()
    with page.expect_download(timeout=120_000) as info:
        page.get_by_role("button", name=re.compile(r"^Download Pairs \(CSV\)")).click()
    download = info.value
    assert download.failure() is None, download.failure()
    assert download.suggested_filename.endswith("-pairs.csv"), download.suggested_filename
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    frame = pd.read_csv(path)
    want = STATE["filtered"]
    # The file holds exactly the filtered pairs the table showed.
    assert len(frame) == want["rows"], f"CSV has {len(frame)} rows, the filtered table showed {want['rows']}"
    assert {"head", "q_feat", "k_feat"} <= set(frame.columns), list(frame.columns)
    assert set(frame["head"]) == {want["head"]}
    assert ((frame["q_feat"] == want["feature"]) | (frame["k_feat"] == want["feature"])).all()
    assert_no_errors(page, "the Pair tables page after the download")
    screenshot(page, "07-pair-tables-export")


def test_08_feature_view_opens_an_example_in_the_explorer(app_server, page):
    if "filtered" not in STATE:
        pytest.skip("needs the filtered pair table of step 6")
    with rerun(page):
        page.get_by_text("Feature", exact=True).click()
    assert_no_errors(page, "the Pair tables feature view")
    expect(page.get_by_text("fires on", exact=False).first).to_be_visible()  # its automatic label
    contexts = page.locator('[data-testid="stDataFrame"]').filter(has_text="context").first
    q_pos, k_pos = int(dataframe_cell(contexts, "q_pos")), int(dataframe_cell(contexts, "k_pos"))  # example 0
    screenshot(page, "08a-feature-view")
    with rerun(page):
        page.get_by_role("button", name="Open in Single text FRA").click()
    page.wait_for_url(re.compile(r"/fra_text/?(\?.*)?$"))
    expect(page.get_by_role("heading", name="Single text FRA").first).to_be_visible(timeout=240_000)
    wait_for_app(page)
    assert_no_errors(page, "Single text FRA opened from a stored example")
    assert caption_number(page, r"query (\d+) ‘") == q_pos and caption_number(page, r"→ key (\d+) ‘") == k_pos
    screenshot(page, "08b-example-opened")

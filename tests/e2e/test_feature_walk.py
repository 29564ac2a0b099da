"""The Feature page walkthrough in a real browser, one test per step, in order, in one tab (one Streamlit
session), on a real demo accumulation run prepared before the server starts:

pair tables (filters set) → a feature id's Feature page → a partner pair → Single text FRA on that pair's
best cell → back to the pair tables with every filter intact; then the layer-0 → layer-1 SAE picker
round trip on Single text FRA (the demo's layer-0 head-input SAE on the previous-token head), an export
built with progress and downloaded, and the restoration model (trained as a job with a time budget before
the server starts): masked-character predictions and bidirectional head scores on the Models page, the
training outcome and its evaluation on the Restoration model page. Screenshots of the new views are saved in
test-artifacts/screenshots/ and, with FRA_E2E_UPDATE_DOCS=1, copied to docs/ (the README shows them)."""

from __future__ import annotations

import os
import re
import shutil

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import ARTIFACTS, REPO_ROOT, running_app
from tests.e2e.helpers import (
    assert_no_errors,
    caption_number,
    fill_input,
    go_to,
    open_app,
    rerun,
    screenshot,
    select_option,
    wait_for_app,
)

pytestmark = pytest.mark.e2e
STATE: dict = {}
MEAN_ABS = "mean |FRA| per cell"  # ui.store.METRIC_LABELS["mean_abs"]
RESTORER = "restorer"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """A server whose workspace holds the demo SAEs and one finished demo accumulation run."""
    from fra_core import jobs
    from fra_core.accumulate import AccumulateFRAConfig
    from fra_core.workspace import Workspace
    from tests.pages.fra_helpers import install_demo_saes

    root = tmp_path_factory.mktemp("e2e-feature") / "workspace"
    ws = Workspace(root)
    install_demo_saes(ws)
    from fra_core.atf import load_fragments, sample_path
    from fra_core.restoration.dataset import BuildDatasetConfig, build_restoration_dataset
    from fra_core.restoration.train import TrainRestorationConfig

    cfg = AccumulateFRAConfig(model="demo", q_saes=("demo-l1-ln1",), layer=1, n_samples=16, context_length=40,
                              batch_size=4, shard_size=8, top_m=4, k_active=8, examples_per_pair=2)
    job_dir = jobs.new_job_dir(ws.jobs, "accumulate", cfg)
    before = os.environ.get("FRA_WORKSPACE")
    os.environ["FRA_WORKSPACE"] = str(root)  # the job body (in this process) resolves the SAEs there
    try:
        assert jobs.run_job_dir(job_dir) == 0, (job_dir / "log.txt").read_text()[-2000:]
        # a small restoration model, trained as the page's job would be, stopped by its time budget
        build_restoration_dataset(BuildDatasetConfig(name="demo", max_len=64, val_frac=0.2, test_frac=0.2), ws,
                                  fragments=load_fragments(sample_path()))
        train = TrainRestorationConfig(dataset="demo", name=RESTORER, n_layers=1, d_model=32, n_heads=2,
                                       batch_size=8, max_steps=100_000, time_budget_s=4, device="cpu",
                                       ngram_order=3, threads=1)
        job_dir = jobs.new_job_dir(ws.jobs, "train-restoration", train)
        assert jobs.run_job_dir(job_dir) == 0, (job_dir / "log.txt").read_text()[-2000:]
    finally:
        if before is None:
            os.environ.pop("FRA_WORKSPACE")
        else:
            os.environ["FRA_WORKSPACE"] = before
    with running_app(root, ARTIFACTS / "e2e-feature.log") as server:
        yield server


def expect_selected(page, label: str, text: str) -> None:
    """The Streamlit selectbox labelled `label` shows an option containing `text`."""
    expect(page.get_by_role("combobox", name=label).first).to_have_value(re.compile(re.escape(text)))


def _docs(path) -> None:
    if os.environ.get("FRA_E2E_UPDATE_DOCS") == "1":
        shutil.copy(path, REPO_ROOT / "docs" / f"screenshot-{path.stem.split('-', 1)[1]}.png")


def test_01_pair_tables_filters_and_feature_link(app_server, page):
    open_app(page, f"{app_server.url}/pair_tables")
    assert_no_errors(page, "the Pair tables page")
    expect_selected(page, "Rank by", MEAN_ABS)  # the default ranking: mean |FRA| with a min count of 5
    assert page.get_by_label("Min count", exact=True).input_value() == "5"
    fill_input(page, "Min count", 2)
    assert_no_errors(page, "the Pair tables page (filters)")
    assert "pt_metric=mean_abs" in page.url and "pt_min_count=2" in page.url  # the view is a shareable URL
    STATE["pairs"] = caption_number(page, r"([\d,]+) pairs shown")
    _docs(screenshot(page, "f1-pair-tables"))
    with rerun(page):
        page.locator('[data-testid="stMain"]').get_by_text("Feature", exact=True).click()
    link = page.locator('[data-testid="stPageLink"] a').filter(has_text="page: activations").first
    expect(link).to_be_visible()
    STATE["feature"] = int(re.search(r"Feature (\d+)'s page", link.inner_text()).group(1))
    link.click()
    page.wait_for_url(re.compile(r"/feature\?"))
    expect(page.get_by_role("heading", name="Feature", exact=True).first).to_be_visible(timeout=120_000)
    wait_for_app(page)
    assert_no_errors(page, "the Feature page")
    assert f"feature={STATE['feature']}" in page.url and "sae=demo-l1-ln1" in page.url


def test_02_feature_page_stored_parts(app_server, page):
    expect(page.get_by_text("Top activating contexts").first).to_be_visible()
    expect(page.get_by_text("Density").first).to_be_visible()
    expect(page.get_by_text("As query: its key partners").first).to_be_visible()
    assert page.locator('span[title]').count() > 0  # highlighted context tokens
    _docs(screenshot(page, "f2-feature-page"))


def test_03_partner_pair_opens_in_single_text_fra(app_server, page):
    fill_input(page, "Min occurrences", 1)
    box = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text("Pair to open", exact=True)).first
    expect(box).to_be_visible()
    with rerun(page, timeout_ms=300_000):
        page.get_by_role("button", name="Open in Single text FRA").click()
    page.wait_for_url(re.compile(r"/fra_text/?(\?.*)?$"))
    expect(page.get_by_role("heading", name="Single text FRA").first).to_be_visible(timeout=240_000)
    wait_for_app(page)
    assert_no_errors(page, "Single text FRA opened from the Feature page")
    expect(page.get_by_text("Opened from the Pair tables", exact=False).first).to_be_visible()
    assert caption_number(page, r"query (\d+) ‘") >= 0
    _docs(screenshot(page, "f3-pair-opened"))


def test_04_filters_survive_the_round_trip(app_server, page):
    go_to(page, "pair_tables", "Pair tables")
    assert_no_errors(page, "the Pair tables page after the round trip")
    assert page.get_by_label("Min count", exact=True).input_value() == "2"
    assert "pt_metric=mean_abs" in page.url and "pt_min_count=2" in page.url and "pt_view=Feature" in page.url
    with rerun(page):  # the view it was left on (Feature) came back too; the top pairs are unchanged
        page.locator('[data-testid="stMain"]').get_by_text("Top pairs", exact=True).click()
    expect(page.get_by_text(f"pairs shown, by {MEAN_ABS}", exact=False).first).to_be_visible()
    assert caption_number(page, r"([\d,]+) pairs shown") == STATE["pairs"]


def test_05_heatmap_heads_grid_and_token_search(app_server, page):
    select_option(page, "Head", "L1H0")
    with rerun(page):
        page.locator('[data-testid="stMain"]').get_by_text("Heatmap", exact=True).click()
    assert_no_errors(page, "the Pair tables heatmap")
    expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible()
    expect(page.get_by_text("colour scale centred on zero", exact=False).first).to_be_visible()
    _docs(screenshot(page, "f4-pair-heatmap"))
    with rerun(page):
        page.locator('[data-testid="stMain"]').get_by_text("Heads", exact=True).click()
    assert_no_errors(page, "the Pair tables heads grid")
    expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible()
    _docs(screenshot(page, "f5-heads-grid"))
    with rerun(page):
        page.locator('[data-testid="stMain"]').get_by_text("Token search", exact=True).click()
    fill_input(page, "Token", "cold")
    assert_no_errors(page, "the Pair tables token search")
    expect(page.get_by_text("pairs with a feature on 'cold'", exact=False).first).to_be_visible()
    _docs(screenshot(page, "f6-token-search"))




def _rel_error(page) -> float:
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Rel. error")
    return float(metric.locator('[data-testid="stMetricValue"]').inner_text())


def test_06_layer_0_and_back_to_layer_1(app_server, page):
    """Layer 0 offers the demo's layer-0 head-input SAE and computes on the previous-token head (L0H3);
    back at layer 1 the picker offers the layer-1 SAEs (not "custom refs…") and computes."""
    go_to(page, "fra_text", "Single text FRA")
    select_option(page, "Layer", "0")
    assert_no_errors(page, "Single text FRA at layer 0")
    expect_selected(page, "Query-side SAE", "demo-l0-ln1")
    fill_input(page, "Head", 3)
    assert_no_errors(page, "Single text FRA on L0H3")
    expect(page.get_by_text("L0H3 attention pattern", exact=False).first).to_be_visible()
    assert _rel_error(page) < 1e-4
    _docs(screenshot(page, "f7-layer0-previous-token"))
    select_option(page, "Layer", "1")
    assert_no_errors(page, "Single text FRA back at layer 1")
    expect_selected(page, "Query-side SAE", "demo-l1-ln1")
    assert page.get_by_text("Query-side SAE refs", exact=False).count() == 0  # no custom-refs text field
    assert _rel_error(page) < 1e-4


def test_07_export_builds_with_progress_and_downloads(app_server, page):
    go_to(page, "pair_tables", "Pair tables")
    with rerun(page):
        page.locator('[data-testid="stMain"]').get_by_text("Export", exact=True).click()
    with rerun(page):
        page.get_by_role("button", name="Build Results package (.tar.gz)").click()
    assert_no_errors(page, "the Pair tables export")
    expect(page.get_by_text("Results package (.tar.gz) ready:", exact=False).first).to_be_visible()
    button = page.get_by_role("button", name=re.compile(r"^Download Results package"))
    expect(button).to_be_visible()
    with page.expect_download() as download:
        button.click()
    path = download.value.path()
    import tarfile

    with tarfile.open(path) as tar:
        assert any(n.endswith("/run.duckdb") for n in tar.getnames())
    page.mouse.move(1, 1)  # away from the button: its tooltip would cover the status
    page.wait_for_timeout(500)
    page.get_by_text("Results package (.tar.gz) ready:", exact=False).first.click()  # open the status: its bar
    _docs(screenshot(page, "f8-export-progress"))


def test_08_restoration_model_masked_predictions(app_server, page):
    go_to(page, "", "Models")  # the default page: the app's root URL
    select_option(page, "Model", f"{RESTORER}  (workspace)", exact=False)
    assert_no_errors(page, "the Models page on the restoration model")
    expect(page.get_by_role("heading", name="Masked-character predictions").first).to_be_visible()
    expect(page.get_by_text("Best restoration:", exact=False).first).to_be_visible()
    expect(page.get_by_role("heading", name="Head scores on random sequences (bidirectional)").first).to_be_visible()
    assert page.get_by_role("heading", name="Run a prompt").count() == 0  # no causal next-token views
    _docs(screenshot(page, "f9-restoration-masked"))


def test_09_restoration_training_outcome_and_evaluation(app_server, page):
    go_to(page, "restoration_train", "Restoration model")
    assert_no_errors(page, "the Restoration model page")
    expect(page.get_by_text("stopped by the time budget (4 s wall-clock) after", exact=False).first).to_be_visible()
    _docs(screenshot(page, "f10-restoration-train"))
    page.get_by_role("tab", name="Evaluate & restore").click()
    expect(page.get_by_text("top-1 (model)").first).to_be_visible()
    expect_selected(page, "Trained model", RESTORER)
    assert_no_errors(page, "the Evaluate tab")
    _docs(screenshot(page, "f11-restoration-evaluate"))

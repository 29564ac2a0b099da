"""AppTest for the Pair tables page on runs built from synthetic shards (real shard format, no job run):
select, filters, every view, downloads, the SQL box, bad input, and the no-torch rule."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from tests.store.fake_jobs import make_job

REPO = Path(__file__).resolve().parents[2]
PAGE = "pages/pair_tables.py"


@pytest.fixture
def runs_ws(workspace):
    """Two finished synthetic accumulation jobs; the page ingests them on first view."""
    make_job(workspace.jobs, "accumulate-a", n_shards=3, seed=0)
    make_job(workspace.jobs, "accumulate-b", n_shards=2, seed=1)
    return workspace


# the synthetic runs have few cells per pair: most tests count every pair (min count 1, set through the URL
# as a shared link would); the default filters are tested on their own
ALL_PAIRS = {"pt_min_count": "1"}


def _open(page: str = PAGE, params: dict | None = None) -> AppTest:
    # switch before the first run: the router's default page (Models) would load the demo model
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page(page)
    for key, value in (ALL_PAIRS if params is None and page == PAGE else params or {}).items():
        at.query_params[key] = value
    at.run()
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _top(at: AppTest):
    return at.dataframe[0].value


def test_select_run_filters_and_sort(runs_ws):
    at = _open(params={})
    _ok(at)
    assert at.title[0].value == "Pair tables"
    assert {m.label for m in at.metric} >= {"Samples", "Unique pairs", "Self-pairs", "Occurrences"}
    runs = at.selectbox(key="pt_run")
    assert len(runs.options) == 2
    # the default ranking: mean |FRA| per cell over pairs seen in >= 5 cells
    assert (at.selectbox(key="pt_metric").value, at.number_input(key="pt_min_count").value) == ("mean_abs", 5)
    df = _top(at)
    assert len(df) >= 1 and (df["n"] >= 5).all() and df["value"].is_monotonic_decreasing
    at.number_input(key="pt_min_count").set_value(1).run()
    df = _top(at)
    assert len(df) == 100 and df["value"].is_monotonic_decreasing
    for metric in ("mean", "max_abs", "count", "abs_sum", "mean_abs", "sum"):
        at.selectbox(key="pt_metric").set_value(metric).run()
        _ok(at)
        assert _top(at)["value"].is_monotonic_decreasing, metric
    at.selectbox(key="pt_order").set_value("asc").run()
    _ok(at)
    assert _top(at)["value"].is_monotonic_increasing
    at.selectbox(key="pt_head").set_value("L1H1").run()
    _ok(at)
    assert set(_top(at)["head"]) == {1}
    at.radio(key="pt_self").set_value("only").run()
    _ok(at)
    assert _top(at)["self_pair"].all()
    at.radio(key="pt_self").set_value("exclude").run()
    assert not _top(at)["self_pair"].any()
    at.number_input(key="pt_min_count").set_value(2).run()
    _ok(at)
    assert (_top(at)["n"] >= 2).all()
    at.text_input(key="pt_feature").set_value("3").run()
    at.selectbox(key="pt_side").set_value("query").run()
    _ok(at)
    assert (_top(at)["q_feat"] == 3).all()
    at.checkbox(key="pt_diag").uncheck().run()
    at.number_input(key="pt_rows").set_value(5).run()
    _ok(at)
    assert len(_top(at)) <= 5
    other = {1, 2} - {int(runs.value)}
    at.selectbox(key="pt_run").set_value(other.pop()).run()
    _ok(at)
    assert len(_top(at)) <= 5  # the filters stay when the run changes


def test_every_view_renders(runs_ws):
    at = _open()
    at.radio(key="pt_view").set_value("Feature").run()
    _ok(at)
    assert [s.value for s in at.subheader][:3] == ["As query: its top key partners", "As key: its top query partners",
                                                   "Top contexts"]
    assert len(at.dataframe) == 3
    at.number_input(key="pt_feature_view").set_value(5).run()
    _ok(at)
    contexts = at.dataframe[2].value
    assert ((contexts["q_feat"] == 5) | (contexts["k_feat"] == 5)).all()
    assert contexts["context"].str.contains("<<").all()

    at.radio(key="pt_view").set_value("Charts").run()
    _ok(at)
    at.checkbox(key="pt_hist_log").check().run()
    at.selectbox(key="pt_head_col").set_value("mean_abs").run()
    _ok(at)
    per_head = at.dataframe[0].value
    assert list(per_head["head"]) == [0, 1] and (per_head["unique_pairs"] > 0).all()

    at.radio(key="pt_view").set_value("Compare").run()
    _ok(at)
    assert {m.label for m in at.metric} >= {"Overlap of the top 100", "Jaccard"}
    at.radio(key="pt_cmp_mode").set_value("two runs").run()
    _ok(at)
    assert len(at.dataframe[0].value) >= 1

    at.radio(key="pt_view").set_value("Export").run()
    _ok(at)
    assert [b.label for b in at.button if b.key.startswith("pt_build_")] == [
        "Build Pairs (Parquet)", "Build Pairs (CSV)", "Build HTML report", "Build Results package (.tar.gz)"]
    assert not at.get("download_button")  # nothing is built before a click


def test_export_builds_with_progress_then_offers_the_file(runs_ws):
    """A click builds the file inside a status with a progress bar ending full, then a Download button
    holds exactly those bytes; other filters drop the built file (never a stale download)."""
    at = _open()
    at.radio(key="pt_view").set_value("Export").run()
    at.button(key="pt_build_package").click().run()
    _ok(at)
    [status] = [e for e in at.get("status") if "Results package" in e.label]
    assert "ready:" in status.label and (" MB in " in status.label or " kB in " in status.label), status.label
    bars = [b.proto for b in at.get("progress")]
    assert bars and bars[-1].value == 100 and bars[-1].text.startswith("done:")
    [dl] = at.get("download_button")
    assert dl.proto.label.startswith("Download Results package (.tar.gz)")
    data = at.session_state["pt_export_package"][1]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert "report.html" in {Path(n).name for n in tar.getnames()}
    at.button(key="pt_build_csv").click().run()
    _ok(at)
    assert len(at.get("download_button")) == 2
    at.number_input(key="pt_min_count").set_value(2).run()   # other filters: the built files are dropped
    _ok(at)
    assert not at.get("download_button")


def test_export_bytes_are_valid(runs_ws):
    """What the (deferred) download buttons produce: Parquet, CSV, HTML report, results package."""
    from ui import store as ui_store

    at = _open()  # creates the cached store and ingests the runs
    run_id = int(at.selectbox(key="pt_run").value)
    make = ui_store.export_callables(run_id, dict(metric="mean", diagonal=True, limit=10, head=1, layer=None,
                                                  feature=None, side="either", self_pairs=None, min_count=1))
    table = pq.read_table(io.BytesIO(make["parquet"]()))
    assert table.num_rows == 10 and set(table.column("head").to_pylist()) == {1}
    assert make["csv"]().decode().splitlines()[0].startswith("layer,head,q_src,q_feat")
    assert "<html" in make["html"]().decode().lower()
    with tarfile.open(fileobj=io.BytesIO(make["package"]()), mode="r:gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"run.duckdb", "pair_stats.parquet", "report.html", "config.yaml"} <= names


def test_sql_box(runs_ws):
    at = _open()
    at.radio(key="pt_view").set_value("SQL").run()
    at.button(key="pt_sql_run").click().run()
    _ok(at)
    assert list(at.dataframe[0].value["head"]) == [0, 1]
    for sql, message in [("DELETE FROM runs", "only SELECT statements"), ("SELEC nonsense", "not valid SQL"),
                         ("SELECT 1; DROP TABLE runs", "exactly one SELECT"), ("SELECT * FROM no_such_table",
                                                                               "query failed")]:
        at.text_area(key="pt_sql").set_value(sql).run()
        at.button(key="pt_sql_run").click().run()
        assert not at.exception
        assert any(message in e.value for e in at.error), (sql, [e.value for e in at.error])


def test_bad_input_and_deleted_run(runs_ws):
    from store import delete_run
    from ui import store as ui_store

    at = _open()
    at.text_input(key="pt_feature").set_value("abc").run()
    assert not at.exception and "Feature id must be a whole number" in at.error[0].value
    at.text_input(key="pt_feature").set_value("").run()
    at.text_input(key="pt_feature").set_value("999999").run()
    _ok(at)
    assert "No pair matches" in at.info[0].value
    shown = int(at.selectbox(key="pt_run").value)
    with ui_store.get_store().write() as con:  # another tab (or the runs page) deletes the run meanwhile
        delete_run(con, shown)
    at.run()
    assert not at.exception
    assert any(f"Run #{shown}" in e.value and "deleted meanwhile" in e.value for e in at.error)
    assert int(at.selectbox(key="pt_run").value) != shown
    with ui_store.get_store().write() as con:
        delete_run(con, int(at.selectbox(key="pt_run").value))
    at.run()
    assert not at.exception and "No runs yet" in at.info[0].value


def test_empty_workspace(workspace):
    at = _open()
    _ok(at)
    assert "No runs yet" in at.info[0].value


NO_TORCH = textwrap.dedent("""
    import json, sys
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(sys.argv[1], default_timeout=120)
    at.run()
    for view in ["Top pairs", "Feature", "Charts", "Compare", "Export", "SQL"]:
        at.radio(key="pt_view").set_value(view).run()
    at.button(key="pt_sql_run").click().run()
    heavy = [m for m in ("torch", "transformer_lens", "sae_lens") if m in sys.modules]
    print(json.dumps({"heavy": heavy, "exceptions": [e.value for e in at.exception],
                      "errors": [e.value for e in at.error], "tables": len(at.dataframe)}))
""")


def test_page_never_imports_torch(runs_ws):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(REPO / PAGE)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"heavy": [], "exceptions": [], "errors": [], "tables": 1}, out


@pytest.fixture(autouse=True)
def _close_cached_stores():
    """Each test has its own database file: close the page's cached Store (and its held connection)."""
    yield
    from ui import store as ui_store

    ui_store._handle.clear()


def test_feature_labels_automatic_and_edited(runs_ws):
    from tests.store.fake_jobs import LABELS

    at = _open()
    at.radio(key="pt_view").set_value("Feature").run()
    at.number_input(key="pt_feature_view").set_value(1).run()
    _ok(at)
    assert any(LABELS[1] in c.value for c in at.caption), [c.value for c in at.caption]
    as_query = at.dataframe[0].value
    assert (as_query["q_label"] == LABELS[1]).all()
    box = next(t for t in at.text_input if t.label.startswith("Your label"))
    box.input("previous token is gamma")
    next(b for b in at.button if b.label == "Save label").click().run()
    _ok(at)
    assert (at.dataframe[0].value["q_label"] == "previous token is gamma").all()
    at.radio(key="pt_view").set_value("Top pairs").run()
    top = _top(at)
    assert (top.loc[top["q_feat"] == 1, "q_label"] == "previous token is gamma").all()
    assert (top.loc[top["q_feat"] == 2, "q_label"] == LABELS[2]).all()

"""AppTest for the Feature page on synthetic runs: deep link by query parameters, the stored parts
(density, histogram, contexts with highlighting, quantile groups, partners per head, labels), links from
the Pair tables, bad parameters as errors, and the no-torch rule."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.store.fake_jobs import make_job

REPO = Path(__file__).resolve().parents[2]
PAGE = "pages/feature.py"


@pytest.fixture
def runs_ws(workspace):
    make_job(workspace.jobs, "accumulate-a", n_shards=3, seed=0)
    make_job(workspace.jobs, "accumulate-b", n_shards=2, seed=1, state="failed")
    return workspace


def _open(params: dict | None = None, page: str = PAGE) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page(page)
    if params is None and page == "pages/pair_tables.py":
        params = {"pt_min_count": "1"}  # synthetic runs: few cells per pair, count them all (default 5)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    at.run()
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_deep_link_renders_the_stored_parts(runs_ws):
    at = _open({"model": "demo", "sae": "demo-l1-ln1", "feature": "1"})
    _ok(at)
    assert at.number_input(key="fp_feature").value == 1
    run = at.selectbox(key="fp_run")
    assert run.options[0].startswith("#1 accumulate-a · done")  # the failed run is never the default
    assert run.options[-1].startswith("#2 accumulate-b · failed")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Density"] == f"{15 / 120:.3%}"  # 5 active of 40 tokens per shard, 3 shards
    assert metrics["Active tokens"] == "15" and metrics["Top token"] == "alpha"
    assert "alpha" in at.subheader[0].value  # the meaning string: the automatic label
    html = "".join(h.proto.body for h in at.get("html"))
    assert "w0_4" in html and "w0_3" in html and "rgba(255, 140, 0,1.00)" in html  # shard 2's top: 5.0
    assert at.dataframe[1].value["partner"].str.startswith("feature?").all()
    # the URL follows the widgets
    assert at.query_params["feature"] == ["1"] or at.query_params["feature"] == "1"
    at.number_input(key="fp_feature").set_value(2).run()
    _ok(at)
    assert str(at.query_params["feature"]).strip("[]'") == "2"


def test_bad_parameters_are_errors_not_tracebacks(runs_ws):
    at = _open({"sae": "nope", "feature": "x"})
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "sae = 'nope'" in errors and "feature = 'x'" in errors


def test_pair_tables_link_every_feature_id(runs_ws):
    at = _open(page="pages/pair_tables.py")
    _ok(at)
    df = at.dataframe[0].value
    cols = [c for c in df.columns if c not in ("q_label", "k_label")]
    assert cols[:6] == ["value", "share", "q_feat", "q_feature", "k_feat", "k_feature"], list(df.columns)
    assert at.selectbox(key="pt_run").value == 1  # the newest run failed: the finished one is the default
    assert df["q_feature"].str.contains("sae=demo-l1-ln1").all() and "q_src" not in df
    row = df.iloc[0]
    assert row["q_feature"].endswith(f"feature={row['q_feat']}&run=1")
    assert 0 <= df["share"].max() <= 1


def test_page_never_imports_torch(runs_ws):
    script = textwrap.dedent(f"""
        import json, sys
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({str(REPO / "app.py")!r}, default_timeout=120)
        at.switch_page({PAGE!r})
        at.query_params["sae"] = "demo-l1-ln1"
        at.query_params["feature"] = "1"
        at.run()
        heavy = sorted(m for m in ("torch", "transformer_lens", "sae_lens") if m in sys.modules)
        print(json.dumps({{"heavy": heavy, "exceptions": [e.value for e in at.exception],
                          "errors": [e.value for e in at.error]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"heavy": [], "exceptions": [], "errors": []}, out


def test_pair_table_filters_survive_navigation_and_come_from_the_url(runs_ws):
    at = _open(page="pages/pair_tables.py")
    at.selectbox(key="pt_metric").set_value("mean_abs").run()
    at.selectbox(key="pt_head").set_value("L1H1").run()
    at.number_input(key="pt_min_count").set_value(2).run()
    at.checkbox(key="pt_diag").uncheck().run()
    _ok(at)
    assert at.query_params["pt_metric"] in ("mean_abs", ["mean_abs"])
    shown = at.dataframe[0].value
    at.switch_page(PAGE).run()  # away (the page's widgets are not rendered: Streamlit drops their state)
    _ok(at)
    at.switch_page("pages/pair_tables.py").run()
    _ok(at)
    assert at.selectbox(key="pt_metric").value == "mean_abs" and at.selectbox(key="pt_head").value == "L1H1"
    assert at.number_input(key="pt_min_count").value == 2 and at.checkbox(key="pt_diag").value is False
    assert at.dataframe[0].value.equals(shown)
    # a shared URL opens the same view; a bad parameter is named, not a traceback
    at2 = _open({"pt_metric": "count", "pt_head": "L1H0", "pt_min_count": "0", "pt_view": "Charts"},
                page="pages/pair_tables.py")
    assert not at2.exception
    assert at2.selectbox(key="pt_metric").value == "count" and at2.selectbox(key="pt_head").value == "L1H0"
    assert at2.radio(key="pt_view").value == "Charts"
    assert any("pt_min_count = '0'" in e.value for e in at2.error)


def test_failed_run_can_be_deleted_from_the_pair_tables(runs_ws):
    at = _open(page="pages/pair_tables.py")
    at.selectbox(key="pt_run").set_value(2).run()
    _ok(at)
    assert any("Run #2 failed" in w.value for w in at.warning)
    assert at.button(key="pt_delete_2").disabled
    at.checkbox(key="pt_delete_sure_2").check().run()
    at.button(key="pt_delete_2").click().run()
    _ok(at)
    assert at.selectbox(key="pt_run").options == [at.selectbox(key="pt_run").options[0]]
    assert at.selectbox(key="pt_run").value == 1


def test_pair_tables_feature_view_links_to_the_feature_page(runs_ws):
    at = _open(page="pages/pair_tables.py")
    at.radio(key="pt_view").set_value("Feature").run()
    at.number_input(key="pt_feature_view").set_value(1).run()
    _ok(at)
    link = at.get("page_link")[0].proto
    assert "feature" in link.page and "sae=demo-l1-ln1" in link.query_string and "feature=1" in link.query_string
    assert at.dataframe[0].value["page"].str.startswith("feature?").all()


def test_heatmap_heads_grid_and_token_search(runs_ws):
    at = _open(page="pages/pair_tables.py")
    at.radio(key="pt_view").set_value("Heatmap").run()
    _ok(at)
    assert any("Pick one head" in i.value for i in at.info)
    at.selectbox(key="pt_head").set_value("L1H1").run()
    _ok(at)
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["color"]["scale"]["domainMid"] == 0  # centred on zero
    at.radio(key="pt_view").set_value("Heads").run()
    _ok(at)
    assert at.get("vega_lite_chart")
    at.radio(key="pt_view").set_value("Token search").run()
    at.text_input(key="pt_token").set_value("alpha").run()  # feature 1's top token (fake_jobs)
    _ok(at)
    found = at.dataframe[0].value
    assert len(found) and ((found["q_feat"] == 1) | (found["k_feat"] == 1)).all()
    at.selectbox(key="pt_token_side").set_value("key").run()
    assert (at.dataframe[0].value["k_feat"] == 1).all()
    at.text_input(key="pt_token").set_value("nothing-like-it").run()
    _ok(at)
    assert any("No feature of this run fires on" in i.value for i in at.info)

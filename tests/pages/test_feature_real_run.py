"""The Feature page on a real demo accumulation run: its stored parts, a partner pair opened in Single
text FRA on that pair's best cell (the explorer's value of the pair equals the stored one), and the
weight-based views on demand."""

from __future__ import annotations

import pytest

from tests.pages.conftest import demo_run_cfg
from tests.pages.fra_helpers import assert_clean as _ok
from tests.pages.fra_helpers import open_page


def test_feature_page_partner_opens_on_the_pairs_best_cell(demo_run):
    at = open_page("pages/pair_tables.py")
    _ok(at)
    top = at.dataframe[0].value.iloc[0]
    fid = int(top["q_feat"])
    at.query_params.clear()
    at.switch_page("pages/feature.py")
    at.query_params.update({"model": "demo", "sae": "demo-l1-ln1", "feature": str(fid)})
    at.run()
    _ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Active tokens"] != "0" and metrics["Density"] != "—"
    if demo_run_cfg().statistics == "all_pairs":  # exact runs store marginals: the page shows them
        assert "Marginal contributions (exact, all pairs)" in [s.value for s in at.subheader]
    assert "background:rgba(255, 140, 0,1.00)" in "".join(h.proto.body for h in at.get("html"))
    at.number_input(key="fp_min_count").set_value(1).run()
    at.selectbox(key="fp_metric").set_value("sum").run()
    _ok(at)
    options = at.selectbox(key="fp_open_pair").options
    assert options and all(f"q {fid} ×" in o or f"× k {fid}" in o for o in options)
    import re

    layer, head, q, k = map(int, re.match(r"L(\d+)H(\d+) · q (\d+) × k (\d+)", options[0]).groups())
    from store import pair_examples
    from ui import store as ui_store

    with ui_store.get_store().read() as cur:
        ex = pair_examples(cur, 1, n=50, feature=q, side="query", layer=layer, head=head)
    best = ex[(ex["q_feat"] == q) & (ex["k_feat"] == k)].iloc[0]
    at.selectbox(key="fp_open_pair").set_value(0).run()
    at.button(key="fp_open").click().run()
    _ok(at)
    assert at.title[0].value == "Single text FRA"
    state = at.session_state
    assert state["fra_text_model"] == "demo" and state["fra_text_layer"] == 1
    pairs = next(d.value for d in at.dataframe if {"q_feature", "k_feature", "value"} <= set(d.value.columns))
    assert (state["fra_text_head"], state["fra_text_qpos"], state["fra_text_kpos"]) == (
        head, int(best["q_pos"]), int(best["k_pos"]))
    cell = pairs[(pairs["q_feature"] == q) & (pairs["k_feature"] == k)]
    assert len(cell) == 1 and float(cell["value"].iloc[0]) == pytest.approx(float(best["value"]), rel=1e-4, abs=1e-5)
    assert pairs["q_page"].str.startswith("feature?").all()
    assert "q_link" not in pairs  # a self-trained demo SAE has no Neuronpedia page


def test_weight_views_load_on_demand(demo_run):
    at = open_page("pages/feature.py")
    _ok(at)
    assert any("Not loaded" in c.value for c in at.caption)
    at.button(key="fp_weights").click().run()
    _ok(at)
    tables = [d.value for d in at.dataframe]
    vocab = [t for t in tables if {"rank", "token", "logit"} <= set(t.columns)]
    assert len(vocab) == 2 and vocab[0]["logit"].is_monotonic_decreasing
    weights = [t for t in tables if {"as", "partner", "S"} <= set(t.columns)]
    assert weights and set(weights[0]["as"]) == {"query", "key"}

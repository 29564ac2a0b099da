"""AppTest: the Data-independent view on the demo model — agreement, partners, bad input."""

from __future__ import annotations

from tests.pages.fra_helpers import errors, frame_with, induction_head, open_page

PAGE = "pages/fra_weights.py"



def test_weights_page_end_to_end(fra_ws):
    at = open_page(PAGE)
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)
    at.number_input(key="fra_weights_head").set_value(induction_head()).run()
    at.number_input(key="fra_weights_n").set_value(3).run()
    assert not at.exception and not errors(at), errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert 0.0 <= float(metrics["overlap@20"]) <= 1.0
    assert -1.0 <= float(metrics["Spearman |S| vs Σ|FRA|"]) <= 1.0
    data = frame_with(at, "abs_sum")
    assert data["weight_rank"].notna().all() and len(data) == 20
    # a feature's partners, as query and as key
    partners = frame_with(at, "partner")
    assert len(partners) == 15 and (partners["strength"].abs().diff().dropna() <= 1e-6).all()
    at.radio(key="fra_weights_side").set_value("key side").run()
    at.number_input(key="fra_weights_feature").set_value(3).run()
    assert not at.exception and not errors(at)
    assert len(frame_with(at, "partner")) == 15
    # the text source and the upstream hook_z side
    at.radio(key="fra_weights_source").set_value("my text").run()
    assert not at.exception and not errors(at)
    opts = at.selectbox(key="fra_weights_qsae").options
    at.selectbox(key="fra_weights_qsae").set_value(next(o for o in opts if o.startswith("upstream"))).run()
    assert not at.exception and not errors(at), errors(at)


def test_weights_page_bad_input(fra_ws):
    at = open_page(PAGE)
    at.number_input(key="fra_weights_feature").set_value(100_000).run()
    assert not at.exception and any("feature ids must lie in" in e for e in errors(at)), errors(at)
    at.number_input(key="fra_weights_head").set_value(4).run()
    assert not at.exception and any("Head 4 is out of range" in e for e in errors(at)), errors(at)
    at.number_input(key="fra_weights_head").set_value(0).run()
    at.radio(key="fra_weights_source").set_value("my text").run()
    at.text_area(key="fra_weights_text_0").set_value("").run()
    assert not at.exception and any("empty" in e for e in errors(at)), errors(at)

"""AppTest: the Validation page on the demo model — error budget and loss recovered, bad input."""

from __future__ import annotations

import pytest

from tests.pages.fra_helpers import errors, frame_with, induction_head, open_page

PAGE = "pages/fra_validation.py"



def test_validation_page_end_to_end(fra_ws):
    at = open_page(PAGE)
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)
    at.number_input(key="fra_val_head").set_value(induction_head()).run()
    at.number_input(key="fra_val_n").set_value(3).run()
    assert not at.exception and not errors(at), errors(at)
    budget = frame_with(at, "share of mean |score|")
    assert set(budget["source"]) == {"sae_error", "truncation", "b_dec", "bias", "other", "features"}
    assert float({m.label: m.value for m in at.metric}["numerical error (mean |Σ−score|)"]) < 1e-4
    losses = frame_with(at, "fraction_recovered_zero").set_index("include")
    exact = losses.loc["all terms (exact)"]
    assert exact["patched"] == pytest.approx(exact["clean"], abs=1e-4)  # all terms = the real scores
    assert exact["fraction_recovered_mean"] == pytest.approx(1.0, abs=1e-3)
    # fewer features kept per position: the truncation node carries the rest, the sum stays exact
    at.number_input(key="fra_val_k").set_value(1).run()
    assert not at.exception and not errors(at)
    assert {m.label: m.value for m in at.metric}["truncated (K < L0)"] == "yes"
    budget = frame_with(at, "share of mean |score|").set_index("source")
    assert budget.loc["truncation", "mean |contribution|"] > 0
    for key in ("fra_val_centre", "fra_val_weight", "fra_val_all"):
        at.toggle(key=key).set_value(True).run()
        assert not at.exception and not errors(at), (key, errors(at))
    at.radio(key="fra_val_source").set_value("my text").run()
    assert not at.exception and not errors(at)
    assert any("Mean-ablation needs several texts" in c.value for c in at.caption)


def test_validation_page_bad_input(fra_ws):
    at = open_page(PAGE)
    at.radio(key="fra_val_source").set_value("my text").run()
    at.text_area(key="fra_val_text_0").set_value(" ".join(["dog"] * 100)).run()
    assert not at.exception and any("context is 64 tokens" in e for e in errors(at)), errors(at)
    at.number_input(key="fra_val_head").set_value(12).run()
    assert not at.exception and any("Head 12 is out of range" in e for e in errors(at)), errors(at)

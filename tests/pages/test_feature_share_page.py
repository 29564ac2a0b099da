"""AppTest: Single text FRA shows the feature share of the chosen cell and of the text, on gpt2-small with a
mix of upstream dictionaries (kk hook_z + mlp-out-v5 of layers 0–1) from the offline dictionary cache."""

from __future__ import annotations

import pytest

from tests.pages.fra_helpers import errors, open_page


@pytest.fixture
def dict_ws(fra_ws, offline_dict_hub):
    return fra_ws, offline_dict_hub


def test_cell_and_text_feature_share(dict_ws):
    at = open_page("pages/fra_text.py")
    at.selectbox(key="fra_text_model").set_value("gpt2-small").run()
    at.selectbox(key="fra_text_layer").set_value(2).run()
    label = "upstream hook_z + mlp_out: gpt2-small-hook-z-kk L0–1 + gpt2-small-mlp-out-v5-32k L0–1"
    assert label in at.selectbox(key="fra_text_qsae").options
    at.selectbox(key="fra_text_qsae").set_value(label).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Rel. error"]) < 1e-4
    assert 0 < float(metrics["Feature share"].rstrip("%")) <= 100, metrics
    caption = next(c.value for c in at.caption if "features explain" in c.value)
    assert "of |score|" in caption

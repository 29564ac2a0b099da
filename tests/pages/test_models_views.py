"""The Models page fits the model: a bidirectional masked-character model (the converted restoration
model) gets masked-character predictions and bidirectional head scores, not next-token views; the demo
warns about words outside its vocabulary."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.pages.test_restoration_pages import _ok, _page, _set, trained_ws  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def _models_page() -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.switch_page("pages/models.py")
    at.run()
    return at


def test_restoration_model_shows_masked_predictions(trained_ws):  # noqa: F811
    at = _page("restoration_convert.py")
    at.run()
    _set(at, "text_input", "Save as (workspace model)", "tiny-tl")
    next(b for b in at.button if b.label == "Verify and save").click()
    at.run()
    _ok(at)
    at = _models_page()
    choice = next(o for o in at.selectbox(key="models_choice").options if o.startswith("tiny-tl"))
    at.selectbox(key="models_choice").set_value(choice).run()
    _ok(at)
    heads = [s.value for s in at.subheader]
    assert "Masked-character predictions" in heads and "Run a prompt" not in heads
    assert "Head scores on random sequences (bidirectional)" in heads
    preds = at.dataframe[0].value
    n_masks = at.text_input(key="models_masked_text").value.count("_")
    assert preds["index"].nunique() == n_masks and (preds["probability"].between(0, 1)).all()
    assert not preds["candidate"].str.startswith("<").any()  # special tokens are never candidates
    scores = at.dataframe[1].value
    assert {"previous", "next", "self"} <= set(scores.columns)
    assert ((scores["previous"] + scores["next"] + scores["self"]) <= 1 + 1e-5).all()
    at.text_input(key="models_masked_text").set_value("no gap here").run()
    assert not at.exception and any("mark the characters" in e.value for e in at.error)


def test_demo_warns_about_words_outside_its_vocabulary(workspace):
    at = _models_page()
    _ok(at)
    assert not at.warning
    at.text_area(key="models_prompt").set_value("the red fox jumps on the zebra xylophone").run()
    assert not at.exception
    warnings = " ".join(w.value for w in at.warning)
    assert "‘xylophone’" in warnings and "‘zebra’" in warnings and "‘fox’" not in warnings

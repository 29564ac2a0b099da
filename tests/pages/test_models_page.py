"""AppTest: the app router and the Models page on the built-in demo model (no network)."""

from streamlit.testing.v1 import AppTest

from tests.conftest import REPO_ROOT

TIMEOUT = 120


def _app(workspace):
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    return at


def test_app_opens_on_models_page_with_demo(workspace):
    at = _app(workspace)
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Models"
    assert any(m.label == "Parameters" for m in at.metric)
    # the head-score table and the heatmap rendered; the caption names the induction head in layer 1
    assert any("Strongest induction head: L1" in c.value for c in at.caption), [c.value for c in at.caption]


def test_switch_head_and_prompt(workspace):
    at = _app(workspace)
    at.selectbox(key="models_layer").set_value(1).run()
    at.selectbox(key="models_head").set_value(2).run()
    at.text_area(key="models_prompt").set_value("the cat sees the dog . the cat sees the").run()
    assert not at.exception
    assert not at.error


def test_empty_prompt_and_bad_model_are_messages(workspace):
    at = _app(workspace)
    at.text_area(key="models_prompt").set_value("   ").run()
    assert not at.exception and at.info
    at.text_input(key="models_custom").set_value("no-such-model-xyz").run()
    assert not at.exception
    assert "not the demo, a workspace model" in at.error[0].value


def test_too_long_prompt_is_a_message(workspace):
    at = _app(workspace)
    at.text_area(key="models_prompt").set_value(" ".join(["cat"] * 200)).run()
    assert not at.exception
    assert "context is 64 tokens" in at.error[0].value

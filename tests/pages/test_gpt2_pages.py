"""AppTest on gpt2-small from the offline Hugging Face cache (tests/fixtures/hf_cache.py): every FRA page
switches between the demo and gpt2-small and computes on exactly what it shows; the pickers offer only SAEs
that fit the model and layer (the kk release as one multi-layer choice); a run's release:/ckkissane: refs
open in Single text FRA."""

from __future__ import annotations

import pytest

from tests.pages.fra_helpers import errors, frame_with, open_page

KK = "upstream hook_z: gpt2-small-hook-z-kk"


@pytest.fixture
def gpt2_ws(fra_ws, offline_hub):
    return fra_ws, offline_hub


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)


def _computed_on(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Computed on"))


def _tokens_match_text(at):
    """The token strip (what FRA ran on) is the tokenization of the text box (what the page shows)."""
    from ui.common import get_model

    text = at.text_area[0].value
    strip = frame_with(at, "n_active")
    model = get_model(at.selectbox(key="fra_text_model").value)
    assert strip["token"].tolist() == [str(t) for t in model.to_str_tokens(text)]
    assert text[:80] in _computed_on(at)


def test_single_text_fra_switches_models_and_computes_what_it_shows(gpt2_ws):
    at = open_page("pages/fra_text.py")
    _ok(at)
    _tokens_match_text(at)
    at.selectbox(key="fra_text_model").set_value("gpt2-small").run()
    _ok(at)
    assert at.text_area[0].value.startswith("The quick brown fox")
    _tokens_match_text(at)
    options = at.selectbox(key="fra_text_qsae").options
    assert options[0] == f"{KK} L0" and not any("demo-" in o for o in options), options  # fits gpt2 at L1
    assert float({m.label: m.value for m in at.metric}["Rel. error"]) < 1e-4
    at.selectbox(key="fra_text_layer").set_value(5).run()
    _ok(at)
    assert at.selectbox(key="fra_text_qsae").value == f"{KK} L0–4"  # five layers, one choice
    assert float({m.label: m.value for m in at.metric}["Rel. error"]) < 1e-4
    at.selectbox(key="fra_text_model").set_value("demo").run()  # and back: the demo's own defaults
    _ok(at)
    assert at.selectbox(key="fra_text_layer").value == 1 and "demo-l1-ln1" in at.selectbox(key="fra_text_qsae").value
    _tokens_match_text(at)


@pytest.mark.parametrize("page,prefix", [("pages/fra_weights.py", "fra_weights"), ("pages/fra_validation.py", "fra_val")])
def test_multi_text_pages_compute_on_the_text_they_show(gpt2_ws, page, prefix):
    at = open_page(page)
    _ok(at)
    assert at.radio(key=f"{prefix}_source").value.startswith("demo")
    at.selectbox(key=f"{prefix}_model").set_value("gpt2-small").run()
    _ok(at)
    assert at.radio(key=f"{prefix}_source").value == "my text"  # the default for a model other than the demo
    text = at.text_area[0].value
    assert _computed_on(at).startswith("Computed on 1 text(s)") and text[:80] in _computed_on(at)
    at.text_area[0].set_value("A new study suggests that coffee may be good for your heart.").run()
    _ok(at)
    assert "coffee may be good" in _computed_on(at)
    at.selectbox(key=f"{prefix}_model").set_value("demo").run()
    _ok(at)
    assert at.radio(key=f"{prefix}_source").value.startswith("demo")


def test_a_runs_release_and_ckkissane_refs_open_in_single_text_fra(gpt2_ws):
    _, hub = gpt2_ws
    from fra_core.models import load_model

    tokens = [str(t) for t in load_model("gpt2-small", "cpu").to_str_tokens("The mayor said the budget would fund roads.")]
    q = [hub.release_ref(0), hub.release_ref(1)]
    goto = {"model": "gpt2-small", "layer": 2, "head": 1, "q_saes": q, "k_saes": [hub.ckkissane_ref(0)],
            "tokens": tokens, "cell": (5, 2), "sample": 3, "run": "#1 r", "options": {"_k": 96}}
    at = open_page("pages/fra_text.py")
    at.session_state["fra_text_goto"] = goto
    at.run()
    _ok(at)
    assert at.selectbox(key="fra_text_qsae").value == f"{KK} L0–1"
    assert at.selectbox(key="fra_text_ksae").value == "custom refs…"
    assert at.text_input(key="fra_text_kcustom").value == hub.ckkissane_ref(0)
    assert (at.number_input(key="fra_text_qpos").value, at.number_input(key="fra_text_kpos").value) == (5, 2)
    assert float({m.label: m.value for m in at.metric}["Rel. error"]) < 1e-4


def test_accumulation_form_follows_the_model(gpt2_ws, monkeypatch):
    import shutil

    from fra_core import jobs
    from fra_core.accumulate import AccumulateFRAConfig
    from tests.pages.test_fra_accumulate_page import _open

    ws, hub = gpt2_ws
    shutil.copytree(hub.owt_dataset, ws.root / "datasets" / "owt")
    started = []
    monkeypatch.setattr(jobs, "start_process", lambda job_dir, env=None: started.append(job_dir) or 1)
    at = _open()
    _ok(at)
    assert at.multiselect(key="acc_q_saes").value == ["demo-l1-ln1"]
    at.selectbox(key="acc_model").set_value("gpt2-small").run()
    assert not at.exception and any("q_saes must name at least one SAE" in e for e in errors(at)), errors(at)
    q = at.multiselect(key="acc_q_saes")
    assert q.value == [] and not any(o.startswith("demo-") for o in q.options), q.options  # no demo SAE left
    group = next(o for o in q.options if o.startswith("gpt2-small-hook-z-kk: hook_z of every layer"))
    q.set_value([group]).run()
    at.number_input(key="acc_layer").set_value(5).run()
    at.text_input(key="acc_k_extra_saes").set_value(hub.ckkissane_ref(0)).run()
    at.selectbox(key="acc_source").set_value("Saved HF dataset (folder)").run()
    assert at.selectbox(key="acc_saved").options == ["owt", "other folder…"]
    _ok(at)
    cfg = AccumulateFRAConfig.from_yaml(at.code[0].value)
    assert cfg.model == "gpt2-small" and cfg.layer == 5 and cfg.dataset == "disk:owt"
    assert cfg.q_saes == tuple(hub.release_ref(l) for l in range(5))  # kk L0–4 from one choice
    assert cfg.k_saes == (hub.ckkissane_ref(0),)
    at.button(key="acc_launch").click().run()  # the launch checks pass (the stubbed process never runs)
    assert not at.exception and any("Launched job" in s.value for s in at.success), errors(at)
    assert len(started) == 1 and AccumulateFRAConfig.from_yaml((started[0] / "config.yaml").read_text()) == cfg


def test_import_a_cached_sae_by_name_and_pick_it(gpt2_ws):
    ws, hub = gpt2_ws
    at = open_page("pages/sae.py")
    assert not at.exception, [e.value for e in at.exception]
    picker = at.selectbox(key="sae_import_ref")
    assert [o.split()[0] for o in picker.options] == [hub.release_ref(l) for l in range(6)]
    picker.set_value(hub.release_ref(0)).run()
    at.text_input(key=f"sae_import_name_{hub.release_ref(0)}").set_value("kk0").run()
    at.button(key="sae_import").click().run()
    assert not at.exception and any("workspace SAE **kk0**" in s.value for s in at.success), errors(at)
    assert (ws.saes / "kk0" / "sae_weights.safetensors").is_file()
    at = open_page("pages/fra_text.py")
    at.selectbox(key="fra_text_model").set_value("gpt2-small").run()
    _ok(at)
    assert "upstream hook_z: kk0" in at.selectbox(key="fra_text_qsae").options
    at.selectbox(key="fra_text_qsae").set_value("upstream hook_z: kk0").run()
    _ok(at)
    assert float({m.label: m.value for m in at.metric}["Rel. error"]) < 1e-4

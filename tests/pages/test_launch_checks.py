"""Launch-time validation on the Dataset accumulation page: a job whose SAE does not fit the model (d_in)
or the layer (hook) is refused in the app process, with one error naming it, and no job folder exists."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from fra_core import jobs

REPO = Path(__file__).resolve().parents[2]


def _save_sae(workspace, name: str, d_in: int, hook: str) -> None:
    from tests.fra_core.fra.helpers_fra import make_sae

    make_sae(d_in, hook, 16, seed=0).save_model(str(workspace.saes / name))


def _launch(workspace, sae: str, layer: int = 1) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.switch_page("pages/fra_accumulate.py")
    at.run()
    at.multiselect(key="acc_q_saes").set_value([]).run()
    at.text_input(key="acc_extra_saes").set_value(sae).run()  # typed: the picker offers only SAEs that fit
    at.number_input(key="acc_layer").set_value(layer).run()
    at.number_input(key="acc_n_samples").set_value(4).run()
    at.button(key="acc_launch").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_unfit_sae_is_refused_before_a_job_folder_exists(workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _save_sae(workspace, "wide-sae", d_in=7, hook="blocks.1.ln1.hook_normalized")
    at = _launch(workspace, "wide-sae")
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Not launched") and "wide-sae" in errors[0], errors
    assert "d_in" in errors[0] or "7" in errors[0], errors
    assert not jobs.list_jobs(workspace.jobs) and not any(workspace.jobs.glob("*"))
    assert not at.success


def test_sae_of_another_layer_is_refused(workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from fra_core.models import load_model

    d_model = load_model("demo", "cpu").cfg.d_model
    _save_sae(workspace, "l0-sae", d_in=d_model, hook="blocks.0.ln1.hook_normalized")
    at = _launch(workspace, "l0-sae", layer=1)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "blocks.0.ln1.hook_normalized" in errors[0] and "layer 1" in errors[0], errors
    assert not any(workspace.jobs.glob("*"))


def test_a_failed_jobs_error_is_shown_once(workspace):
    from tests.store.fake_jobs import make_job

    job, _ = make_job(workspace.jobs, "accumulate-20260101-000000-failed", n_shards=1, state="failed")
    status = jobs.read_json(job / "status.json")
    jobs.write_json_atomic(job / "status.json", {**status, "message": "SAE 'x' does not fit model 'demo'"})
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page("pages/fra_accumulate.py")
    at.run()
    at.selectbox(key="acc_job").set_value(job.name).run()
    assert not at.exception
    shown = [e.value for e in at.error] + [c.value for c in at.caption]
    assert sum("does not fit model" in text for text in shown) == 1, shown

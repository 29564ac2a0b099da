"""AppTest for the Dataset accumulation page: the form → AccumulateFRAConfig / YAML, bad input, the jobs
list with cancel / resume / delete (synthetic job folders), and one real small job end to end (slow)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fra_core import jobs
from fra_core.accumulate import AccumulateFRAConfig
from tests.store.fake_jobs import make_job

REPO = Path(__file__).resolve().parents[2]
PAGE = "pages/fra_accumulate.py"


def _open() -> AppTest:
    # switch before the first run: the router's default page (Models) would load the demo model
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page(PAGE)
    at.run()
    return at


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_form_builds_the_config_and_its_yaml(workspace):
    at = _open()
    assert not at.exception and not at.error, _errors(at)
    assert at.title[0].value == "Dataset accumulation"
    assert "No accumulation jobs yet" in at.info[0].value
    at.number_input(key="acc_layer").set_value(1).run()
    at.text_input(key="acc_heads").set_value("0, 2").run()
    at.number_input(key="acc_n_samples").set_value(40).run()
    at.number_input(key="acc_context").set_value(32).run()
    at.number_input(key="acc_top_m").set_value(4).run()
    at.checkbox(key="acc_diag").uncheck().run()
    at.checkbox(key="acc_bos_key").check().run()
    assert not at.exception and not at.error, _errors(at)
    assert any(b.proto.label == "Config YAML" for b in at.get("download_button"))
    cfg = AccumulateFRAConfig.from_yaml(at.code[0].value)  # the YAML the download button offers
    assert cfg == AccumulateFRAConfig(model="demo", q_saes=("demo-l1-ln1",), layer=1, heads=(0, 2), n_samples=40,
                                      context_length=32, top_m=4, include_diagonal=False, exclude_bos_key=True,
                                      device="auto")
    at.selectbox(key="acc_executor").set_value("ray").run()
    at.number_input(key="acc_ray_workers").set_value(2).run()
    assert not at.exception and not at.error, _errors(at)
    ray_cfg = AccumulateFRAConfig.from_yaml(at.code[0].value)
    assert (ray_cfg.executor, ray_cfg.ray_workers, ray_cfg.ray_address) == ("ray", 2, "")


def test_bad_inputs_are_messages(workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = _open()
    at.text_input(key="acc_heads").set_value("0,x").run()
    assert not at.exception and "Heads must be whole numbers" in _errors(at)[0]
    at.text_input(key="acc_heads").set_value("").run()
    at.selectbox(key="acc_source").set_value("Local file (.txt / .jsonl)").run()
    at.button(key="acc_launch").click().run()
    assert not at.exception and "give the dataset's path or name" in _errors(at)[0]
    at.text_input(key="acc_location").set_value("missing/texts.txt").run()
    at.button(key="acc_launch").click().run()
    assert "dataset file not found" in _errors(at)[0]
    at.selectbox(key="acc_source").set_value("Stream from the HF Hub").run()
    at.text_input(key="acc_location").set_value("Elriggs/openwebtext-100k").run()
    t0 = time.time()
    at.button(key="acc_launch").click().run()
    assert "cannot stream" in _errors(at)[0] and time.time() - t0 < 30
    (workspace.datasets / "texts.txt").write_text("the cat sees the dog\nthe dog sees the cat\n", encoding="utf-8")
    at.selectbox(key="acc_source").set_value("Local file (.txt / .jsonl)").run()
    at.text_input(key="acc_location").set_value("texts.txt").run()
    at.multiselect(key="acc_q_saes").set_value([]).run()
    assert "q_saes must name at least one SAE" in _errors(at)[0]
    at.text_input(key="acc_extra_saes").set_value("no-such-sae").run()
    at.button(key="acc_launch").click().run()
    assert "SAE 'no-such-sae' not found" in _errors(at)[0]
    at.text_input(key="acc_extra_saes").set_value("ckkissane:/nowhere/sae.pt").run()
    at.button(key="acc_launch").click().run()
    assert "SAE checkpoint not found: /nowhere/sae.pt" in _errors(at)[0]
    assert not at.exception and not jobs.list_jobs(workspace.jobs)


def test_jobs_list_cancel_resume_delete(workspace, monkeypatch):
    running, _ = make_job(workspace.jobs, "accumulate-20260101-000000-running", n_shards=2, state="running")
    status = jobs.read_json(running / "status.json")
    jobs.write_json_atomic(running / "status.json", {**status, "pid": os.getpid(), "done": 8, "total": 16,
                                                      "rate": 2.0, "eta_s": 4.0})
    died, _ = make_job(workspace.jobs, "accumulate-20260101-000001-died", n_shards=1, state="running", seed=3)
    at = _open()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["job"]) == {running.name, died.name}
    assert set(table["state"]) == {"running", "died"}
    assert list(table.set_index("job").loc[[running.name, died.name], "ingested samples"]) == [8, 4]

    at.selectbox(key="acc_job").set_value(running.name).run()
    assert any("ETA 4 s" in c.value for c in at.caption)
    at.button(key="acc_cancel").click().run()
    assert (running / "cancel").exists() and any("Cancel requested" in i.value for i in at.info)

    started = []
    monkeypatch.setattr(jobs, "start_process", lambda job_dir, env=None: started.append(Path(job_dir)) or 1)
    at.selectbox(key="acc_job").set_value(died.name).run()
    at.button(key="acc_resume").click().run()
    assert started == [died] and any("Resumed" in i.value for i in at.info)

    assert at.button(key="acc_delete").disabled
    at.checkbox(key="acc_delete_sure").check().run()
    at.button(key="acc_delete").click().run()
    assert not at.exception and any("Deleted run" in s.value for s in at.success)
    at.run()
    assert died.name not in set(at.dataframe[0].value.dropna(subset=["run"])["job"])  # not ingested again


def _job_from_the_form(workspace, model: str, sae: str) -> None:
    """Launch a small job from the form, wait for it, see it ingested and on the Pair tables page."""
    at = _open()
    at.selectbox(key="acc_model").set_value(model).run()
    at.multiselect(key="acc_q_saes").set_value([sae]).run()
    for key, value in [("acc_n_samples", 8), ("acc_context", 24), ("acc_batch", 2), ("acc_shard", 4),
                       ("acc_top_m", 3), ("acc_k_active", 6)]:
        at.number_input(key=key).set_value(value).run()
    at.button(key="acc_launch").click().run()
    assert not at.exception and not at.error, _errors(at)
    [job] = jobs.list_jobs(workspace.jobs, "accumulate")
    deadline = time.time() + 300
    while jobs.job_status(job.path).get("state") not in jobs.TERMINAL_STATES and time.time() < deadline:
        time.sleep(1)
    assert jobs.job_status(job.path)["state"] == "done", (job.path / "log.txt").read_text()[-3000:]
    time.sleep(2.1)  # past the ingest throttle
    at.run()
    row = at.dataframe[0].value.set_index("job").loc[job.job_id]
    assert row["state"] == "done" and row["ingested samples"] == 8 and row["pairs"] > 0
    at.switch_page("pages/pair_tables.py")
    at.run()
    assert not at.exception and not at.error, _errors(at)
    assert len(at.dataframe[0].value) > 0


@pytest.mark.slow  # the job process imports torch + TransformerLens + SAELens: ~30 s on 2 busy cores
def test_real_job_from_the_form_to_the_pair_tables(workspace):
    from tests.fra_core.accumulate_helpers import save_parts, tiny_demo_model, tiny_sae

    model = tiny_demo_model(workspace.root)
    save_parts(workspace, model, tiny_sae(model))
    _job_from_the_form(workspace, "tiny", "tiny-sae")


@pytest.mark.slow
def test_real_job_on_the_demo(workspace):
    from fra_core.models.demo import ASSET_DIR as MODEL_ASSETS
    from fra_core.sae.demo import ASSET_DIR as SAE_ASSETS

    # the weights ship in git: a missing file is a broken checkout or a wrong asset path, never a skip
    assert (MODEL_ASSETS / "model.safetensors").is_file() and (SAE_ASSETS / "demo-l1-ln1").is_dir(), \
        f"demo model / SAE assets missing ({MODEL_ASSETS}, {SAE_ASSETS / 'demo-l1-ln1'})"
    _job_from_the_form(workspace, "demo", "demo-l1-ln1")


@pytest.fixture(autouse=True)
def _close_cached_stores():
    """Each test has its own database file: close the page's cached Store (and its held connection)."""
    yield
    from ui import store as ui_store

    ui_store._handle.clear()

"""AppTest for the restoration pages: data (audit, preview, vocabulary, build), training/evaluation
(eval table, restore box, job launch + cancel), conversion (verify, save, bad input)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _page(name: str):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(REPO / "pages" / name), default_timeout=180)


def _ok(at):
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _set(at, kind, label, value):
    next(w for w in getattr(at, kind) if w.label == label).set_value(value)


@pytest.fixture
def trained_ws(workspace):
    """A dataset built from the shipped demo sample and a tiny trained run 'tiny' (converted too)."""
    from fra_core.atf import load_fragments, sample_path
    from fra_core.restoration.dataset import BuildDatasetConfig, build_restoration_dataset
    from fra_core.restoration.train import TrainRestorationConfig, run_train_restoration

    build_restoration_dataset(BuildDatasetConfig(name="demo", max_len=64, val_frac=0.2, test_frac=0.2), workspace,
                              fragments=load_fragments(sample_path()))
    run_train_restoration(TrainRestorationConfig(dataset="demo", name="tiny", n_layers=1, d_model=16, n_heads=2,
                                                 batch_size=4, max_steps=3, device="cpu", ngram_order=3),
                          workspace=workspace)
    return workspace


def test_data_page_audit_preview_vocab_and_build(workspace):
    at = _page("restoration_data.py")
    at.run()
    _ok(at)
    labels = [m.label for m in at.metric]
    assert "fragments" in labels and "distinct characters" in labels
    assert len(at.dataframe) >= 4  # per-fragment, characters, preview tables, vocabulary
    assert any("a-na" in c.value for c in at.code)  # the cleaning preview shows cleaned text
    _set(at, "text_input", "Dataset name", "demo-ds")
    _set(at, "number_input", "Max length (tokens, with <bos>)", 64)
    next(b for b in at.button if b.label == "Build dataset").click()
    at.run()
    _ok(at)
    assert any("demo-ds" in s.value for s in at.success)
    assert (workspace.datasets / "demo-ds" / "settings.json").is_file()


def test_data_page_bad_files_show_errors(workspace, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe not utf-8")
    at = _page("restoration_data.py")
    at.run()
    at.radio[0].set_value("File on this machine")
    at.run()
    _set(at, "text_input", "Path", str(bad))
    at.run()
    assert not at.exception
    assert any("not UTF-8" in e.value for e in at.error)
    (tmp_path / "noatf.json").write_text('[{"_id": "A", "text": "1. a"}]', encoding="utf-8")
    _set(at, "text_input", "Path", str(tmp_path / "noatf.json"))
    at.run()
    assert not at.exception and any("has no 'atf'" in e.value for e in at.error)
    assert list(workspace.datasets.iterdir()) == []


def test_train_page_eval_table_and_restore_box(trained_ws):
    at = _page("restoration_train.py")
    at.run()
    _ok(at)
    labels = [m.label for m in at.metric]
    assert "top-1 (model)" in labels and "CER (model)" in labels
    tables = [d.value for d in at.dataframe]
    assert any("ngram" in t.columns and "model" in t.columns for t in tables)
    assert any("Best restoration" in m.value for m in at.markdown)
    assert any("#1" in t.columns for t in tables)  # top candidates per masked character
    _set(at, "text_area", "Line to restore (mark each missing character with _)", "no mask here")
    at.run()
    assert not at.exception and any("mark the characters" in e.value for e in at.error)


def test_train_page_launches_and_cancels_a_job(trained_ws):
    from fra_core import jobs

    at = _page("restoration_train.py")
    at.run()
    _train(at, "from-page", 2)
    assert not at.exception
    assert any("Started training job" in s.value for s in at.success), [e.value for e in at.error]
    [job] = jobs.list_jobs(trained_ws.jobs, "train-restoration")
    jobs.cancel_job(job.path)
    deadline = time.time() + 240
    while jobs.job_status(job.path).get("state") not in ("done", "cancelled", "failed", "died"):
        assert time.time() < deadline, jobs.job_status(job.path)
        time.sleep(1)
    assert jobs.job_status(job.path)["state"] in ("done", "cancelled")


def test_convert_page_verifies_and_saves(trained_ws):
    at = _page("restoration_convert.py")
    at.run()
    _ok(at)
    _set(at, "text_input", "Save as (workspace model)", "tiny-tl")
    next(b for b in at.button if b.label == "Verify and save").click()
    at.run()
    _ok(at)
    assert any("tiny-tl" in s.value for s in at.success)
    assert (trained_ws.models / "tiny-tl" / "model.safetensors").is_file()
    assert any(m.label == "max |Δlogit|" for m in at.metric)
    next(b for b in at.button if b.label == "Verify and save").click()  # the name is taken now
    at.run()
    assert not at.exception and any("already exists" in e.value for e in at.error)


def test_convert_page_bad_checkpoint(workspace, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    at = _page("restoration_convert.py")
    at.run()
    assert not at.exception
    at.radio[0].set_value("File on this machine")
    at.run()
    _set(at, "text_input", "Path", str(tmp_path / "junk.pt"))
    at.run()
    next(b for b in at.button if b.label == "Verify and save").click()
    at.run()
    assert not at.exception and any("not a readable torch checkpoint" in e.value for e in at.error)
    assert [p for p in workspace.models.iterdir()] == []


def test_time_budget_stop_is_explained_and_evaluate_follows_the_new_model(trained_ws):
    """A run stopped by its time budget says so (bar full, "stopped by the time budget … after N of M
    steps"), and the Evaluate tab switches from the old model to the newly trained one."""
    import json

    from fra_core import jobs

    at = _page("restoration_train.py")
    at.run()
    assert at.selectbox(key="restoration_eval_pick").value == "tiny"
    _train(at, "budgeted", 1_000_000, **{"Time budget (s, 0 = none)": 2, "n-gram baseline order": 3})
    [job] = [j for j in jobs.list_jobs(trained_ws.jobs, "train-restoration")]
    deadline = time.time() + 300
    while jobs.job_status(job.path).get("state") not in ("done", "cancelled", "failed", "died"):
        assert time.time() < deadline, jobs.job_status(job.path)
        time.sleep(1)
    status = jobs.job_status(job.path)
    assert status["state"] == "done", status
    steps = status["result"]["train"]["steps"]
    assert 0 < steps < 1_000_000 and status["done"] == status["total"] == steps   # the bar ends full
    at.run()
    _ok(at)
    wanted = f"stopped by the time budget (2 s wall-clock) after {steps:,} of 1,000,000 steps"
    assert any(wanted in s.value for s in at.success), [s.value for s in at.success]
    bars = at.get("progress")
    assert bars and bars[0].proto.value == 100 and f"{steps:g} / {steps:g}" in bars[0].proto.text
    assert at.selectbox(key="restoration_eval_pick").value == "budgeted"
    new_eval = json.loads((trained_ws.root / "restoration" / "budgeted" / "result.json").read_text())["eval"]
    top1 = next(m for m in at.metric if m.label == "top-1 (model)")
    assert top1.value == f"{new_eval['model']['top1']:.3f}"
    assert any(wanted in c.value for c in at.caption)


def test_train_page_widgets_all_have_help(trained_ws):
    from tests.pages.test_help_texts import _missing, _open, _widgets

    at = _open("pages/restoration_train.py")
    seen = _widgets(at)
    assert len(seen) >= 15, sorted(seen)
    assert not _missing(seen), _missing(seen)


def _train(at, name: str, max_steps: int, **numbers) -> None:
    """Fill the training form (1 layer, d_model 16, 2 heads, `max_steps`, any other number inputs by label)
    and press Train."""
    _set(at, "text_input", "Save as", name)
    for label, value in {"Layers": 1, "d_model": 16, "Heads": 2, "Max steps": max_steps, **numbers}.items():
        _set(at, "number_input", label, value)
    next(b for b in at.button if b.label == "Train").click()
    at.run()

"""AppTest for the SAE page: inspect a trained SAE, search, bad input -> st.error, train through a real job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sae_ws(workspace):
    """Workspace with model 'tiny' (word tokenizer), a text file, and an SAE 'tiny-sae' trained on it."""
    import random

    from fra_core.models import save_local_model
    from fra_core.models.tiny import make_tiny_model
    from fra_core.models.tokenizers import build_tokenizer
    from fra_core.sae.train import TrainSAEConfig, run_train_sae

    vocab = [f"w{i}" for i in range(46)]
    save_local_model(make_tiny_model(n_ctx=32), workspace.models / "tiny", tokenizer=build_tokenizer(vocab, "word"))
    rng = random.Random(0)
    (workspace.datasets / "texts.txt").write_text(
        "\n".join(" ".join(rng.choice(vocab) for _ in range(20)) for _ in range(200)), encoding="utf-8")
    run_train_sae(TrainSAEConfig(model="tiny", hook_name="blocks.1.ln1.hook_normalized", architecture="topk", k=4,
                                 d_sae=64, training_tokens=2048, train_batch_size_tokens=256, context_size=16,
                                 dataset="texts.txt", output_name="tiny-sae", device="cpu"))
    return workspace


def _page():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(REPO / "pages" / "sae.py"), default_timeout=120)


def _set(at, kind, label, value):
    widget = next(w for w in getattr(at, kind) if w.label == label)
    widget.set_value(value)


def test_inspect_and_search(sae_ws):
    at = _page()
    at.run()
    assert not at.exception, at.exception
    _set(at, "text_input", "Texts", "texts.txt")
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    labels = [m.label for m in at.metric]
    assert "mean L0" in labels and "dead features" in labels
    assert len(at.dataframe) >= 2                                    # SAE list + top contexts (+ projection)
    _set(at, "text_input", "Pattern", "w1")
    at.run()
    assert not at.exception and not at.error
    _set(at, "text_input", "Pattern", "zzz")
    at.run()
    assert not at.exception and any("no token matches" in e.value for e in at.error)


def test_bad_inputs_show_errors(sae_ws):
    at = _page()
    at.run()
    _set(at, "text_input", "Model", "tiny")
    _set(at, "number_input", "Layer", 7)
    _set(at, "text_input", "Save as", "new-one")
    next(b for b in at.button if b.label == "Train").click()
    at.run()
    assert not at.exception and any("does not exist" in e.value for e in at.error), [e.value for e in at.error]
    _set(at, "number_input", "Layer", 1)
    _set(at, "text_input", "Save as", "tiny-sae")
    next(b for b in at.button if b.label == "Train").click()
    at.run()
    assert any("already exists" in e.value for e in at.error)
    picked = next(s for s in at.selectbox if s.label == "SAE")
    picked.set_value("other…")
    at.run()
    _set(at, "text_input", "SAE reference", "ckkissane:/nowhere/x.pt")
    at.run()
    assert not at.exception and any("not found" in e.value for e in at.error)


def test_train_form_launches_a_job(sae_ws):
    from fra_core import jobs

    at = _page()
    at.run()
    for label, value in [("Model", "tiny"), ("Dataset", "texts.txt"), ("Save as", "from-ui")]:
        _set(at, "text_input", label, value)
    for label, value in [("d_sae (0 = expansion × d_in)", 64), ("Training tokens", 2048),
                         ("Batch size (tokens)", 256), ("Context size", 16), ("Texts", 200)]:
        _set(at, "number_input", label, value)
    _set(at, "selectbox", "Device", "cpu")
    next(b for b in at.button if b.label == "Train").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [job] = jobs.list_jobs(sae_ws.jobs, "train-sae")
    deadline = time.time() + 240
    while jobs.job_status(job.path).get("state") not in jobs.TERMINAL_STATES and time.time() < deadline:
        time.sleep(1)
    status = jobs.job_status(job.path)
    assert status["state"] == "done", (status, (job.path / "log.txt").read_text()[-2000:])
    assert (sae_ws.saes / "from-ui" / "cfg.json").is_file()
    at.run()
    assert not at.exception and any("Saved SAE" in s.value for s in at.success)


def test_app_routes_to_the_sae_page(sae_ws):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page("pages/sae.py")  # straight to our page (the default page may build the demo model)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Sparse autoencoders"

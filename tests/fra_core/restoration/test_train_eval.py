"""Training (in-process and through the job machinery), evaluation vs the n-gram baseline, restore box."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fra_core.atf import MASK_ID, load_fragments
from fra_core.jobs import NullProgress
from fra_core.restoration.dataset import IGNORE_INDEX, BuildDatasetConfig, build_restoration_dataset
from fra_core.restoration.evaluate import Scores, bucket_of, gap_runs, restore_text, select_ngram
from fra_core.restoration.ngram import NgramModel
from fra_core.restoration.train import TrainRestorationConfig, lr_at, run_train_restoration, train_model, validation

TINY = dict(n_layers=1, d_model=32, n_heads=2, batch_size=8, max_steps=12, log_every=2, eval_every=6,
            val_examples=8, ngram_order=3, device="cpu")


@pytest.fixture
def ebl_dataset(workspace, ebl_sample):
    fragments = load_fragments(ebl_sample)[:80]
    build_restoration_dataset(BuildDatasetConfig(name="ebl80", max_len=64), workspace, fragments=fragments)
    return workspace


def test_train_evaluate_convert_in_process(ebl_dataset):
    ws = ebl_dataset
    result = run_train_restoration(TrainRestorationConfig(dataset="ebl80", name="tiny", **TINY), workspace=ws)
    assert result["train"]["steps"] == 12 and np.isfinite(result["train"]["final_loss"])
    ev = result["eval"]
    for side in ("model", "ngram"):
        assert 0 <= ev[side]["top1"] <= ev[side]["top5"] <= 1
        assert ev[side]["masked_chars"] == ev["model"]["masked_chars"] > 0  # same positions for both
        assert abs(ev[side]["cer"] - (1 - ev[side]["top1"])) < 1e-9
        assert sum(b["chars"] for b in ev[side]["cer_by_gap"].values()) == ev[side]["masked_chars"]
    assert result["converted"] and result["max_abs_dlogit"] <= 1e-4
    saved = json.loads((ws.root / "restoration" / "tiny" / "result.json").read_text(encoding="utf-8"))
    assert saved["eval"] == ev and saved["config_hash"] == TrainRestorationConfig(dataset="ebl80", name="tiny",
                                                                                  **TINY).config_hash()
    meta = json.loads((ws.models / "tiny" / "meta.json").read_text(encoding="utf-8"))
    assert meta["max_abs_dlogit"] <= 1e-4 and meta["eval"]["model"]["top1"] == ev["model"]["top1"]

    from fra_core.atf import CharVocab
    from fra_core.restoration.model import load_checkpoint

    model, payload = load_checkpoint(ws.root / "restoration" / "tiny" / "checkpoint.pt")
    out = restore_text(model, CharVocab.from_json(payload["vocab"]), "a-na be-__-ia", top_k=3)
    assert [p["index"] for p in out["positions"]] == [8, 9] and len(out["positions"][0]["candidates"]) == 3
    assert out["best"].startswith("a-na be-") and "_" not in out["best"]
    atf = restore_text(model, CharVocab.from_json(payload["vocab"]), "1'. [...] a#-na _-x", atf=True)
    assert atf["text"] == "… a-na _-x" and len(atf["positions"]) == 1
    with pytest.raises(ValueError, match="mark the characters"):
        restore_text(model, CharVocab.from_json(payload["vocab"]), "no masks")
    with pytest.raises(ValueError, match="already exists"):
        run_train_restoration(TrainRestorationConfig(dataset="ebl80", name="tiny", **TINY), workspace=ws)


def test_job_kind_runs_through_the_job_machinery(ebl_dataset):
    from fra_core import jobs

    cfg = TrainRestorationConfig(dataset="ebl80", name="job", convert=False, **{**TINY, "max_steps": 4})
    job_dir = jobs.new_job_dir(ebl_dataset.jobs, "train-restoration", cfg)
    assert jobs.run_job_dir(job_dir) == 0
    status = jobs.job_status(job_dir)
    assert status["state"] == "done" and status["result"]["train"]["steps"] == 4
    assert any("loss" in row for row in jobs.read_metrics(job_dir))


def test_cancel_leaves_nothing(ebl_dataset):
    from fra_core import jobs

    cfg = TrainRestorationConfig(dataset="ebl80", name="cancelled", **TINY)
    job_dir = jobs.new_job_dir(ebl_dataset.jobs, "train-restoration", cfg)
    jobs.cancel_job(job_dir)
    assert jobs.run_job_dir(job_dir) == 3
    assert jobs.job_status(job_dir)["state"] == "cancelled"
    assert not (ebl_dataset.root / "restoration" / "cancelled").exists()
    assert not (ebl_dataset.models / "cancelled").exists()


def test_bad_training_configs(workspace):
    with pytest.raises(ValueError, match="no dataset"):
        run_train_restoration(TrainRestorationConfig(dataset="", name="x"), workspace=workspace)
    with pytest.raises(ValueError, match="no restoration dataset"):
        run_train_restoration(TrainRestorationConfig(dataset="missing", name="x"), workspace=workspace)
    with pytest.raises(ValueError, match="invalid"):
        TrainRestorationConfig(dataset="d", name="../x").validate()


def test_lr_schedule_warms_up_and_decays_to_the_budget_end():
    cfg = TrainRestorationConfig(dataset="d", lr=1e-3, warmup_steps=10, max_steps=10**6, time_budget_s=100.0,
                                 min_lr_frac=0.1)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-4)  # warm-up: (step + 1) / warmup_steps
    assert lr_at(cfg, 9, 0.0) == pytest.approx(1e-3)
    assert lr_at(cfg, 50, 50.0) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # cosine half-way
    assert lr_at(cfg, 99, 100.0) == pytest.approx(1e-4) == lr_at(cfg, 99, 250.0)  # budget spent: the floor
    linear = TrainRestorationConfig(dataset="d", lr=1e-3, warmup_steps=1, max_steps=200, lr_schedule="linear",
                                    min_lr_frac=0.0)
    assert [lr_at(linear, s, 0.0) for s in (50, 100, 200)] == pytest.approx([7.5e-4, 5e-4, 0.0])
    for bad in (dict(lr_schedule="step"), dict(min_lr_frac=1.5), dict(adam_beta2=1.0)):
        with pytest.raises(ValueError):
            TrainRestorationConfig(dataset="d", **bad).validate()


def test_keep_best_returns_the_best_validated_weights(ebl_dataset):
    from fra_core.restoration.dataset import load_restoration_dataset

    class Recorder(NullProgress):
        def __init__(self):
            self.val = []

        def log_metrics(self, step, **metrics):
            if "val_top1" in metrics:
                self.val.append(metrics["val_top1"])

    dsd, vocab, settings = load_restoration_dataset("ebl80", ebl_dataset)
    train_rows, val_rows = list(dsd["train"]), list(dsd["validation"])[:8]
    cfg = TrainRestorationConfig(dataset="ebl80", **{**TINY, "max_steps": 9, "eval_every": 2, "lr": 3e-2})
    recorder = Recorder()
    model, summary = train_model(cfg, train_rows, val_rows, vocab.size, 64, {"rate": 0.3, "span_prob": 0.5,
                                                                             "max_span": 8}, recorder, "cpu")
    assert not model.training and len(recorder.val) == 5 and summary["val_top1"] == max(recorder.val)
    assert validation(model, val_rows, "cpu", 8)["val_top1"] == summary["val_top1"]  # the kept weights


# ----------------------------------------------------------------------------- metrics and n-gram
def test_ngram_uses_the_right_context():
    # "a1b" and "a2c": the left context alone cannot choose; the character after the gap can
    seqs = [[4, 10, 20, 11]] * 5 + [[4, 10, 21, 12]] * 5
    ngram = NgramModel(order=3, vocab_size=30).fit(seqs)
    assert ngram.restore([4, 10, MASK_ID, 12])[2][0] == 21
    assert ngram.restore([4, 10, MASK_ID, 11])[2][0] == 20
    filled = ngram.restore([4, 10, MASK_ID, MASK_ID])  # a span: greedy left-to-right fill
    assert set(filled) == {2, 3} and filled[3][0] in (11, 12)


def test_gap_runs_buckets_and_scores():
    assert gap_runs(np.array([0, 1, 1, 0, 1, 0, 1, 1, 1], dtype=bool)) == [(1, 3), (4, 5), (6, 9)]
    assert [bucket_of(n) for n in (1, 2, 4, 7, 30)] == ["1", "2", "3-5", "6-10", "11+"]
    labels = np.array([IGNORE_INDEX, 7, 8, IGNORE_INDEX, 9])
    scores = Scores()
    scores.add_example(labels, {1: [7, 1], 2: [1, 8], 4: [9]})
    s = scores.summary()
    assert s["masked_chars"] == 3 and s["top1"] == pytest.approx(2 / 3) and s["top5"] == 1.0
    assert s["cer_by_gap"]["2"] == {"cer": 0.5, "chars": 2, "gaps": 1}
    assert s["cer_by_gap"]["1"] == {"cer": 0.0, "chars": 1, "gaps": 1}


def test_select_ngram_picks_the_order_that_needs_the_context():
    # the character after "ab" depends on the two before it: orders >= 3 see that, order 2 cannot
    train = [{"input_ids": [4, 7, 8, 9, 7, 10, 11]}] * 6
    val = [{"masked_ids": [4, 7, 8, MASK_ID, 7, 10, MASK_ID],
            "labels": [IGNORE_INDEX] * 3 + [9] + [IGNORE_INDEX] * 2 + [11]}]
    best = select_ngram(train, val, vocab_size=20, orders=(1, 3))
    assert best.order == 3

"""Automatic feature labels (from the shards' token counts) and human labels over them."""

import pytest

from store import ingest_job_shards, set_feature_labels, top_pairs
from store.page_queries import feature_labels
from tests.store.fake_jobs import LABELS, make_job


def _labels(con, run):
    return dict(con.execute("SELECT feature, label FROM feature_auto_labels WHERE run = ?", [run]).fetchall())


def test_auto_labels_sum_shards_and_divide_by_active_tokens(store, tmp_path):
    job, _ = make_job(tmp_path / "jobs", "job-a", n_shards=3)
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        assert _labels(con, run) == LABELS
        row = con.execute("SELECT top_token, top_token_share, top_prev, top_prev_share FROM feature_auto_labels "
                          "WHERE run = ? AND feature = 1", [run]).fetchone()
    assert row[0] == "alpha" and row[1] == pytest.approx(0.8) and row[2] == "gamma" and row[3] == pytest.approx(1.0)


def test_shards_without_token_counts_ingest_with_no_labels(store, tmp_path):
    job, _ = make_job(tmp_path / "jobs", "old", feature_tokens=False)
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        assert _labels(con, run) == {}
        df = top_pairs(con, run, n=50)
        assert feature_labels(con, run, 1) == {"sae_id": "demo-l1-ln1", "label": None, "auto_label": None}
    assert len(df) > 0 and df["q_label"].isna().all()


def test_human_label_wins_and_clearing_it_brings_the_auto_label_back(store, tmp_path):
    job, _ = make_job(tmp_path / "jobs", "job-a")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        set_feature_labels(con, "demo-l1-ln1", {1: "previous token is gamma"})
        df = top_pairs(con, run, n=500, feature=1, side="query")
        assert (df["q_label"] == "previous token is gamma").all() and len(df) > 0
        partners = top_pairs(con, run, n=500, feature=2, side="query")
        assert (partners["q_label"] == LABELS[2]).all()
        assert feature_labels(con, run, 1) == {"sae_id": "demo-l1-ln1", "label": "previous token is gamma",
                                               "auto_label": LABELS[1]}
        set_feature_labels(con, "demo-l1-ln1", {1: None})
        assert (top_pairs(con, run, n=500, feature=1, side="query")["q_label"] == LABELS[1]).all()
        assert feature_labels(con, run, 99)["auto_label"] is None

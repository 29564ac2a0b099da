"""Labels and runs record who made them; a researcher cannot overwrite another user's label."""

from __future__ import annotations

import pytest

from fra_core.jobs import read_json, write_json_atomic
from store import Store, StoreError, get_run, ingest_job_shards, set_feature_labels
from tests.store.fake_jobs import make_job


def test_runs_and_labels_record_their_makers(tmp_path):
    store = Store(tmp_path / "fra.duckdb")
    job, _ = make_job(tmp_path / "jobs", "job-x")
    write_json_atomic(job / "job.json", {**read_json(job / "job.json"), "owner": "bob@example.org"})
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        assert get_run(con, run)["owner"] == "bob@example.org"
        set_feature_labels(con, "demo-l1-ln1", {1: "grass"}, user="bob", only_own=True)
        set_feature_labels(con, "demo-l1-ln1", {1: "green grass"}, user="bob", only_own=True)  # his own
        with pytest.raises(StoreError, match="feature 1 of demo-l1-ln1 was labelled by bob"):
            set_feature_labels(con, "demo-l1-ln1", {1: "mine now"}, user="carol", only_own=True)
        set_feature_labels(con, "demo-l1-ln1", {2: "fresh"}, user="carol", only_own=True)  # unlabelled: fine
        set_feature_labels(con, "demo-l1-ln1", {1: "fixed by admin"}, user="alice")  # an admin: any
        rows = con.execute("SELECT feature, label, labelled_by FROM features WHERE sae_id = 'demo-l1-ln1'"
                           " AND label IS NOT NULL ORDER BY feature").fetchall()
    store.close()
    assert rows == [(1, "fixed by admin", "alice"), (2, "fresh", "carol")]

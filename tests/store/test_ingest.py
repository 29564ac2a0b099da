"""Shard ingest: exact aggregates, idempotence, no double counting, delete_run isolation."""

import numpy as np
import pytest

from store import StoreError, delete_run, get_run, ingest_job_shards, list_runs, resolve_run, top_pairs
from tests.store.fake_jobs import aggregate, concat, make_job


def _all_pairs(con, run):
    return con.execute("SELECT head, q_feat, k_feat, n, sum, abs_sum, max, min, diag_n, diag_sum "
                       "FROM pair_stats WHERE run = ? ORDER BY head, q_feat, k_feat", [run]).fetchall()


def test_ingest_equals_direct_aggregate_and_is_idempotent(store, tmp_path):
    job, raw = make_job(tmp_path / "jobs", "job-a")
    with store.write() as con:
        res = ingest_job_shards(con, job)
        assert res["shards"] == 3 and res["samples"] == 12 and res["state"] == "done"
        again = ingest_job_shards(con, job)
        assert again["shards"] == 0 and again["run"] == res["run"]
    expected = aggregate(concat(raw)).to_pandas()
    with store.read() as cur:
        got = _all_pairs(cur, res["run"])
        info = get_run(cur, res["run"])
    assert len(got) == len(expected)
    for row, (_, exp) in zip(got, expected.iterrows()):
        assert row[:4] == (exp["head"], exp["q_feat"], exp["k_feat"], exp["n"])
        assert row[4] == pytest.approx(exp["sum"], abs=1e-5)
        assert row[5] == pytest.approx(exp["abs_sum"], abs=1e-5)
        assert row[6] == pytest.approx(exp["max"]) and row[7] == pytest.approx(exp["min"])
        assert row[8] == exp["diag_n"] and row[9] == pytest.approx(exp["diag_sum"], abs=1e-5)
    assert info["n_samples"] == 12 and info["status"] == "done" and info["n_pairs"] == len(expected)
    assert info["sources"][0]["sae_id"] == "demo-l1-ln1"


def test_incremental_ingest_equals_one_shot(store, tmp_path):
    job, raw = make_job(tmp_path / "jobs", "job-b", n_shards=4)
    manifests = sorted((job / "shards").glob("shard-*.json"))
    hidden = [m.rename(m.with_suffix(".hidden")) for m in manifests[2:]]  # job still running: 2 shards
    with store.write() as con:
        assert ingest_job_shards(con, job)["shards"] == 2
    for h in hidden:
        h.rename(h.with_suffix(".json"))
    with store.write() as con:
        assert ingest_job_shards(con, job)["shards"] == 2
        got = _all_pairs(con, resolve_run(con, "job-b"))
    expected = aggregate(concat(raw)).to_pandas()
    assert [r[3] for r in got] == list(expected["n"])
    np.testing.assert_allclose([r[4] for r in got], expected["sum"], atol=1e-5)


def test_examples_keep_top_per_pair(store, tmp_path):
    job, _ = make_job(tmp_path / "jobs", "job-c")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        worst = con.execute("SELECT max(c) FROM (SELECT count(*) c FROM pair_examples WHERE run = ? "
                            "GROUP BY layer, head, q_src, q_feat, k_src, k_feat)", [run]).fetchone()[0]
    assert worst <= 2  # examples_per_pair: 2 in the fake config


def test_sample_counted_twice_is_refused(store, tmp_path):
    job, _ = make_job(tmp_path / "jobs", "job-d", n_shards=2)
    # forge a third shard that repeats shard 0's samples
    import shutil
    for path in (job / "shards").glob("shard-000000.*"):
        shutil.copy(path, path.with_name(path.name.replace("000000", "000002")))
    manifest = job / "shards" / "shard-000002.json"
    manifest.write_text(manifest.read_text().replace('"shard": 0', '"shard": 2'))
    with store.write() as con:
        with pytest.raises(StoreError, match="twice"):
            ingest_job_shards(con, job)
        run = resolve_run(con, "job-d")
        assert con.execute("SELECT count(*) FROM samples_done WHERE run = ?", [run]).fetchone()[0] == 8


def test_delete_run_leaves_other_runs_intact(store, tmp_path):
    ja, _ = make_job(tmp_path / "jobs", "job-e", seed=1)
    jb, _ = make_job(tmp_path / "jobs", "job-f", seed=2)
    with store.write() as con:
        ra = ingest_job_shards(con, ja)["run"]
        rb = ingest_job_shards(con, jb)["run"]
        before = _all_pairs(con, rb)
        delete_run(con, ra)
        with pytest.raises(StoreError, match="does not exist"):
            top_pairs(con, ra)
        assert _all_pairs(con, rb) == before
        assert list(list_runs(con)["id"]) == [rb]
        for table in ("pair_examples", "samples_done", "ingested_shards", "sources", "feature_counts"):
            assert con.execute(f"SELECT count(*) FROM {table} WHERE run = ?", [ra]).fetchone()[0] == 0
            assert con.execute(f"SELECT count(*) FROM {table} WHERE run = ?", [rb]).fetchone()[0] > 0


def test_feature_density_from_counts(store, tmp_path):
    job, _ = make_job(tmp_path / "jobs", "job-g")
    with store.write() as con:
        ingest_job_shards(con, job)
        density = dict(con.execute("SELECT feature, density FROM features WHERE sae_id = 'demo-l1-ln1'").fetchall())
    assert density[1] == pytest.approx(5 / 40) and density[2] == pytest.approx(10 / 40)


def test_not_a_job_folder(store, tmp_path):
    (tmp_path / "empty").mkdir()
    with store.write() as con:
        with pytest.raises(StoreError, match="not a job folder"):
            ingest_job_shards(con, tmp_path / "empty")


def test_run_records_config_fields(store, tmp_path):
    job, _ = make_job(tmp_path / "jobs", "job-h")
    with store.write() as con:
        info = get_run(con, ingest_job_shards(con, job)["run"])
    assert info["q_sae_id"] == info["k_sae_id"] == "demo-l1-ln1"
    assert info["model_id"] == "demo" and info["layer"] == 1 and list(info["heads"]) == [0, 1]
    assert info["config_hash"] == "hash-job-h" and info["code_version"] == "test" and info["wall_s"] == 1.5


def test_ingest_all_jobs_skips_unchanged_and_deleted(store, tmp_path):
    from store import ingest_all_jobs

    make_job(tmp_path / "jobs", "job-i", seed=3)
    make_job(tmp_path / "jobs", "job-j", seed=4)
    (tmp_path / "jobs" / "not-a-job").mkdir()
    with store.write() as con:
        first = ingest_all_jobs(con, tmp_path / "jobs")
        assert sorted(r["name"] for r in first) == ["job-i", "job-j"]
        assert ingest_all_jobs(con, tmp_path / "jobs") == []  # nothing new
        delete_run(con, "job-i")
        assert ingest_all_jobs(con, tmp_path / "jobs") == []  # deleted stays deleted
        with pytest.raises(StoreError, match="was deleted"):
            ingest_job_shards(con, tmp_path / "jobs" / "job-i")
        assert ingest_job_shards(con, tmp_path / "jobs" / "job-i", restore=True)["shards"] == 3


def test_big_running_run_defers_compaction(store, tmp_path, monkeypatch):
    import os

    import store.ingest as ingest
    from fra_core.jobs import write_json_atomic

    job, _ = make_job(tmp_path / "jobs", "job-k", n_shards=4, n_feat=40)
    write_json_atomic(job / "status.json", {"state": "running", "pid": os.getpid()})
    manifests = sorted((job / "shards").glob("shard-*.json"))
    hidden = [m.rename(m.with_suffix(".hidden")) for m in manifests[1:]]
    monkeypatch.setattr(ingest, "LIVE_COMPACT_ROWS", 1)  # every run counts as "big"
    monkeypatch.setattr(ingest, "LIVE_COMPACT_FRACTION", 2.0)  # and waits for twice its size staged
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]  # first shard: nothing compacted yet -> compact
        hidden[0].rename(hidden[0].with_suffix(".json"))
        ingest_job_shards(con, job)  # one more shard while running: it waits in the staging table
        staged = con.execute("SELECT count(*) FROM pair_stats_staged WHERE run = ?", [run]).fetchone()[0]
        assert staged > 0
        for h in hidden[1:]:
            h.rename(h.with_suffix(".json"))
        write_json_atomic(job / "status.json", {"state": "done"})
        ingest_job_shards(con, job)  # finished: everything compacted
        assert con.execute("SELECT count(*) FROM pair_stats_staged WHERE run = ?", [run]).fetchone()[0] == 0
        assert con.execute("SELECT sum(n) FROM pair_stats WHERE run = ?", [run]).fetchone()[0] == 800

"""Accumulation job: one job == two resumed halves == a direct sum over per-sample engine FRA; the
store ingests what the job wrote; bad input fails clearly and leaves earlier runs intact."""

import errno

import numpy as np
import pytest

from fra_core import contracts
from fra_core.accumulate import AccumulateError, AccumulateFRAConfig, ShardWriteError
from fra_core.accumulate.run import run_accumulate
from fra_core.datasets import DatasetError, open_texts
from fra_core.jobs import JobCancelled, Progress
from tests.fra_core.accumulate_helpers import (
    assert_totals_equal,
    direct_totals,
    shard_totals,
    tiny_sae,
)

CFG = dict(model="tiny", q_saes=("tiny-sae",), n_samples=7, batch_size=2, shard_size=3, top_m=3, k_active=6,
           context_length=24, examples_per_pair=2)


def _job(tmp_path, name):
    job = tmp_path / name
    job.mkdir()
    return job


class CancelAfter(Progress):
    """Cancels the job once `limit` samples are done (like the user pressing Cancel)."""

    def __init__(self, job_dir, limit):
        super().__init__(job_dir)
        self.limit = limit

    def update(self, done, total=None, message="", force=False, **extra):
        super().update(done, total, message, force, **extra)
        if done >= self.limit:
            raise JobCancelled("test cancel")


@pytest.mark.parametrize("statistics", ["all_pairs", "top_m"])
def test_one_job_equals_direct_sum_and_resumed_halves(parts, tmp_path, statistics):
    model, sae = parts
    cfg = AccumulateFRAConfig(**CFG, statistics=statistics)
    one = _job(tmp_path, "one")
    result = run_accumulate(cfg, Progress(one), model=model, q_saes=[sae])
    assert result["samples"] == 7 and result["shards"] == 3
    texts = list(open_texts("demo").texts(7))
    direct = direct_totals(model, sae, texts, cfg)
    # all pairs: the job's float64 products of float64 rows vs the engine's float32 GEMM of float32 rows
    # (rows d_f·W rounded to float32 differ by up to 2e-5 relative after cancellation in U_f·V_g)
    # (the engine projects rows in 256-row blocks, one GEMM per head: its float32 sums of up to a few hundred
    # terms of size ~1 then differ from float64 by up to ~3e-6 absolute where the terms cancel)
    rtol, atol = (5e-5, 2e-5) if statistics == "all_pairs" else (1e-6, 1e-6)
    assert_totals_equal(shard_totals(one), direct, rtol, atol)
    assert direct["diag_n"].sum() > 0  # the diagonal is recorded (apart), not dropped

    halves = _job(tmp_path, "halves")
    with pytest.raises(JobCancelled):
        run_accumulate(cfg, CancelAfter(halves, 3), model=model, q_saes=[sae])
    first = [m["samples"] for m in contracts.complete_shards(halves)]
    assert first and sum(len(s) for s in first) < 7
    resumed = run_accumulate(cfg, Progress(halves), model=model, q_saes=[sae])
    assert resumed["samples"] == 7 and resumed["new_samples"] == 7 - sum(len(s) for s in first)
    samples = [s for m in contracts.complete_shards(halves) for s in m["samples"]]
    assert sorted(samples) == list(range(7))  # each sample exactly once
    assert_totals_equal(shard_totals(halves), direct, rtol, atol)
    if statistics == "all_pairs":  # resumed == uninterrupted: counts/max/min exactly, sums to float64 rounding
        a, b = shard_totals(one), shard_totals(halves)
        for col in ("n", "diag_n", "max", "min"):
            np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy())
        np.testing.assert_allclose(a["sum"].to_numpy(), b["sum"].to_numpy(), rtol=1e-12, atol=1e-15)
    # a finished job started again does nothing
    assert run_accumulate(cfg, Progress(halves), model=model, q_saes=[sae])["new_samples"] == 0


def test_store_ingest_matches_shards(parts, tmp_path):
    from store import Store, ingest_job_shards, pair_examples, top_pairs

    model, sae = parts
    job = _job(tmp_path, "ing")
    run_accumulate(AccumulateFRAConfig(**CFG), Progress(job), model=model, q_saes=[sae])
    (job / "job.json").write_text('{"kind": "accumulate"}')
    AccumulateFRAConfig(**CFG).save_yaml(job / "config.yaml")
    store = Store(tmp_path / "fra.duckdb")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        n_db, sum_db = con.execute("SELECT sum(n), sum(sum) FROM pair_rows WHERE run = ?", [run]).fetchone()
        top = top_pairs(con, run, n=1)
        ex = pair_examples(con, run, head=int(top["head"][0]), feature=int(top["q_feat"][0]), side="query", n=3)
        per_pair = con.execute("SELECT max(c) FROM (SELECT count(*) c FROM pair_example_rows WHERE run = ? "
                               "GROUP BY layer, head, q_src, q_feat, k_src, k_feat)", [run]).fetchone()[0]
    store.close()
    totals = shard_totals(job)
    assert n_db == totals["n"].sum() and sum_db == pytest.approx(totals["sum"].sum(), rel=1e-9)
    assert per_pair <= 2 and len(ex) > 0 and ex["context"].str.contains("<<").all()


def test_feature_counts_and_sources(parts, tmp_path):
    model, sae = parts
    job = _job(tmp_path, "feat")
    run_accumulate(AccumulateFRAConfig(**CFG), Progress(job), model=model, q_saes=[sae])
    info = contracts.read_run_info(job)
    assert info["sources"] == [{"src": 0, "kind": "sae", "name": "tiny-sae", "sae_id": "tiny-sae",
                                "hook": "blocks.1.ln1.hook_normalized", "d_sae": 48}]
    feats = contracts.read_shard_table(job, 0, "features").to_pandas()
    assert (feats["n_active"] <= feats["n_tokens"]).all() and feats["n_active"].sum() > 0
    toks = contracts.read_shard_table(job, 0, "feature_tokens").to_pandas()
    assert set(zip(toks["src"], toks["feature"])) == set(zip(feats["src"], feats["feature"]))
    assert not toks.duplicated(["src", "feature", "kind", "token"]).any()
    per_kind = toks.groupby(["src", "feature", "kind"]).agg(n=("n", "sum"), rows=("n", "size")).reset_index()
    both = per_kind.merge(feats, on=["src", "feature"])
    assert set(per_kind["kind"]) == {"tok", "prev"} and (both["rows"] <= 3).all()
    # the top 3 tokens never count more than the feature's activations, and all of them when ≤ 3 tokens seen
    assert (both["n"] <= both["n_active"]).all() and (both.loc[both["rows"] < 3, "n"] == both.loc[both["rows"] < 3, "n_active"]).all()
    samples = contracts.read_shard_table(job, 0, "samples").to_pandas()
    vocab = {t for tokens in samples["tokens"] for t in tokens} | {"∅"}
    assert set(toks["token"]) <= vocab


def test_bad_dataset_inputs(parts, tmp_path):
    model, sae = parts
    missing = AccumulateFRAConfig(**{**CFG, "dataset": str(tmp_path / "none.txt")})
    with pytest.raises(DatasetError, match="not found"):
        run_accumulate(missing, Progress(_job(tmp_path, "a")), model=model, q_saes=[sae])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DatasetError, match="empty"):
        run_accumulate(AccumulateFRAConfig(**{**CFG, "dataset": str(tmp_path / "empty.jsonl")}),
                       Progress(_job(tmp_path, "b")), model=model, q_saes=[sae])
    (tmp_path / "d.jsonl").write_text('{"body": "the cat"}\n')
    with pytest.raises(DatasetError, match="text column 'text'"):
        run_accumulate(AccumulateFRAConfig(**{**CFG, "dataset": str(tmp_path / "d.jsonl")}),
                       Progress(_job(tmp_path, "c")), model=model, q_saes=[sae])


def test_sae_model_mismatch(parts, tmp_path):
    model, _ = parts
    wrong_width = tiny_sae(model, d_in=16)
    with pytest.raises(AccumulateError, match="d_in=16"):
        run_accumulate(AccumulateFRAConfig(**CFG), Progress(_job(tmp_path, "w")), model=model, q_saes=[wrong_width])
    wrong_layer = tiny_sae(model, layer=0)
    with pytest.raises(ValueError, match="blocks.0.ln1.hook_normalized"):
        run_accumulate(AccumulateFRAConfig(**CFG), Progress(_job(tmp_path, "l")), model=model, q_saes=[wrong_layer])
    with pytest.raises(ValueError, match="heads"):
        run_accumulate(AccumulateFRAConfig(**{**CFG, "heads": (7,)}), Progress(_job(tmp_path, "h")), model=model,
                       q_saes=[tiny_sae(model)])


def test_disk_full_keeps_earlier_shards_and_runs(parts, tmp_path, monkeypatch):
    from store import Store, ingest_job_shards
    from tests.store.fake_jobs import make_job

    model, sae = parts
    store = Store(tmp_path / "fra.duckdb")
    earlier, _ = make_job(tmp_path / "jobs", "earlier")
    with store.write() as con:
        run_a = ingest_job_shards(con, earlier)["run"]
        before = con.execute("SELECT * FROM pair_rows WHERE run = ? ORDER BY ALL", [run_a]).fetchall()
    real, calls = contracts.write_table_atomic, {"n": 0}

    def flaky(table, path, **options):
        calls["n"] += 1
        if calls["n"] > len(contracts.KINDS) - len(contracts.IPC_KINDS):  # the second shard's first Parquet file
            raise OSError(errno.ENOSPC, "No space left on device")
        real(table, path, **options)

    monkeypatch.setattr(contracts, "write_table_atomic", flaky)
    job = _job(tmp_path, "full")
    with pytest.raises(ShardWriteError, match="shard 1 .*no space left on device.*3 samples of earlier shards"):
        run_accumulate(AccumulateFRAConfig(**CFG), Progress(job), model=model, q_saes=[sae])
    assert [m["shard"] for m in contracts.complete_shards(job)] == [0]
    assert not list((job / "shards").glob(".*.tmp"))
    (job / "job.json").write_text('{"kind": "accumulate"}')
    AccumulateFRAConfig(**CFG).save_yaml(job / "config.yaml")
    with store.write() as con:
        assert ingest_job_shards(con, job)["samples"] == 3
        after = con.execute("SELECT * FROM pair_rows WHERE run = ? ORDER BY ALL", [run_a]).fetchall()
    store.close()
    assert after == before
    monkeypatch.setattr(contracts, "write_table_atomic", real)  # space freed: resume completes the job
    assert run_accumulate(AccumulateFRAConfig(**CFG), Progress(job), model=model, q_saes=[sae])["samples"] == 7


def test_config_validation_and_yaml_roundtrip():
    from fra_core.config import ConfigError

    cfg = AccumulateFRAConfig(**CFG)
    assert AccumulateFRAConfig.from_yaml(cfg.to_yaml()) == cfg
    assert AccumulateFRAConfig.from_yaml("q_saes: one-sae\nheads: [1, 2]\n").q_saes == ("one-sae",)
    with pytest.raises(ConfigError, match="n_samples must be >= 1, got 0"):
        AccumulateFRAConfig(n_samples=0)
    with pytest.raises(ConfigError, match="unknown keys"):
        AccumulateFRAConfig.from_yaml("samples: 3\n")
    assert np.isfinite(AccumulateFRAConfig().top_m)


def test_cancel_file_stops_the_job(parts, tmp_path):
    from fra_core.jobs import cancel_job

    model, sae = parts
    job = _job(tmp_path, "cancel")
    cancel_job(job)
    with pytest.raises(JobCancelled):
        run_accumulate(AccumulateFRAConfig(**CFG), Progress(job), model=model, q_saes=[sae])
    assert contracts.complete_shards(job) == []

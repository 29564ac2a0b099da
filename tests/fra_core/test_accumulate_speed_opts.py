"""Accumulation job options of issue 15: every active feature by default, a minimum pair count whose
dropped mass is recorded, the per-job thread setting, and the rate the job reports."""

import os

import pandas as pd
import pytest

from fra_core import contracts, jobs
from fra_core.accumulate import AccumulateFRAConfig
from fra_core.accumulate.coact import shard_pairs
from fra_core.accumulate.run import dropped_totals, fmt_rate, run_accumulate
from fra_core.config import ConfigError
from fra_core.jobs import Progress

CFG = dict(model="tiny", q_saes=("tiny-sae",), n_samples=6, batch_size=2, shard_size=3, top_m=3,
           context_length=20, examples_per_pair=2)


def _run(parts, tmp_path, name, **kw):
    model, sae = parts
    job = tmp_path / name
    job.mkdir()
    result = run_accumulate(AccumulateFRAConfig(**{**CFG, **kw}), Progress(job), model=model, q_saes=[sae])
    return job, result


def test_defaults_keep_every_feature_and_every_pair():
    cfg = AccumulateFRAConfig()
    assert cfg.k_active == 0 and cfg.min_pair_count == 1 and cfg.threads == 0
    assert 1 <= cfg.job_threads <= 4
    old = AccumulateFRAConfig.from_dict({**cfg.to_dict(), "k_active": 64})  # job.json / YAML of older runs
    assert old.k_active == 64
    for bad in ({"k_active": -1}, {"min_pair_count": 0}, {"threads": -2}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            AccumulateFRAConfig(**bad)


@pytest.mark.parametrize("statistics", ["all_pairs", "top_m"])
def test_min_pair_count_drops_rare_pairs_and_records_their_mass(parts, tmp_path, statistics):
    full, _ = _run(parts, tmp_path, "full", statistics=statistics)
    pruned, _ = _run(parts, tmp_path, "pruned", statistics=statistics, min_pair_count=2)
    def raw(job):  # per-head pairs: stored rows and the expansion of coact / proj
        return pd.concat([shard_pairs(job, int(m["shard"]), 0)[0].to_pandas() for m in contracts.complete_shards(job)])

    a, b = raw(full), raw(pruned)
    rare = int((a["n"] < 2).sum())
    assert 0 < rare and len(b) == len(a) - rare and (b["n"] >= 2).all()  # dropped within each shard only
    dropped = dropped_totals(pruned)
    info = contracts.read_run_info(pruned)
    assert info["dropped_pairs"] == dropped and info["min_pair_count"] == 2
    for (layer, head), got in a.groupby(["layer", "head"]):  # stored + dropped = the exact totals, per head
        d = dropped[str(layer)][str(head)]
        stored = b[(b["layer"] == layer) & (b["head"] == head)]
        assert len(stored) + d["n_pairs"] == len(got)
        assert int(stored["n"].sum()) + d["n"] == int(got["n"].sum())
        for col in ("sum", "abs_sum"):
            assert float(stored[col].sum()) + d[col] == pytest.approx(float(got[col].sum()), rel=1e-9, abs=1e-12)
    for m in contracts.complete_shards(pruned):  # examples only of stored pairs
        pairs, ex = (t.to_pandas() for t in shard_pairs(pruned, int(m["shard"]), CFG["examples_per_pair"]))
        key = list(contracts.PAIR_KEY)
        assert len(ex) and len(ex.merge(pairs[key], on=key)) == len(ex)


def test_thread_setting_reaches_the_job_environment(tmp_path):
    cfg = AccumulateFRAConfig(threads=3)
    job = jobs.new_job_dir(tmp_path, "accumulate", cfg)
    assert jobs.thread_env(job) == {v: "3" for v in jobs.THREAD_VARS}
    auto = jobs.new_job_dir(tmp_path, "accumulate", AccumulateFRAConfig())
    assert jobs.thread_env(auto)["OMP_NUM_THREADS"] == str(jobs.auto_threads())
    (auto / "config.yaml").write_text("job: AccumulateFRAConfig\nmodel: demo\n")  # a config without threads
    assert jobs.thread_env(auto) == {}


def test_job_process_runs_with_its_thread_count(tmp_path):
    """The job process sees OMP_NUM_THREADS and torch's thread count set to the config's `threads`."""
    import subprocess
    import sys

    job = jobs.new_job_dir(tmp_path, "accumulate", AccumulateFRAConfig(threads=1))
    env = {**os.environ, **jobs.thread_env(job)}
    code = ("import torch, os; from fra_core.accumulate.job import run_accumulate; "
            "print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_rate_is_readable_and_excludes_loading(parts, tmp_path):
    assert fmt_rate(0.05) == "20 s per sample" and fmt_rate(2.345) == "2.35 samples/s"
    assert fmt_rate(0.0) == "— samples/s"
    job, result = _run(parts, tmp_path, "rate")
    status = jobs.read_json(job / "status.json")
    assert result["samples_per_s"] > 0 and status["rate"] == pytest.approx(result["samples_per_s"])
    assert result["cpu_s_per_sample"] > 0
    assert "0.0 samples/s" not in status["message"]


def test_a_k_cap_records_its_truncation_share(parts, tmp_path):
    model, sae = parts
    capped, _ = _run(parts, tmp_path, "capped", statistics="top_m", k_active=1)
    info = contracts.read_run_info(capped)
    assert info["k_active"] == 1 and 0 < info["truncation_share"]["1"] < 1
    assert "1" in info["completeness"] and "_truncation_share" not in info["completeness"]
    full, _ = _run(parts, tmp_path, "all", statistics="top_m")
    assert "truncation_share" not in contracts.read_run_info(full)  # every active feature: nothing to report

"""Accumulation job: each feature's stored activations (top and sampled, with context windows) and its
activation histogram agree with the feature counts and with each other."""

import math

import numpy as np
import pytest

from fra_core import contracts
from fra_core.accumulate import AccumulateFRAConfig
from fra_core.accumulate.feature_acts import HIST_STEPS, PER_KIND, WINDOW
from fra_core.accumulate.run import run_accumulate
from fra_core.jobs import Progress
from tests.fra_core.accumulate_helpers import tiny_demo_model, tiny_sae

CFG = dict(model="tiny", q_saes=("tiny-sae",), n_samples=7, batch_size=2, shard_size=4, top_m=3, k_active=6,
           context_length=24, examples_per_pair=2)


@pytest.fixture(scope="module", params=["all_pairs", "top_m"])
def job(tmp_path_factory, request):
    """One job per statistics: both runners collect the Feature page's activations."""
    root = tmp_path_factory.mktemp("acts")
    model = tiny_demo_model(root)
    job = root / "job"
    job.mkdir()
    run_accumulate(AccumulateFRAConfig(**CFG, statistics=request.param), Progress(job), model=model,
                   q_saes=[tiny_sae(model)])
    return job


def _tables(job, kind):
    import pandas as pd

    return pd.concat([contracts.read_shard_table(job, m["shard"], kind).to_pandas()
                      for m in contracts.complete_shards(job)], ignore_index=True)


def test_histogram_counts_every_activation(job):
    feats, hist = _tables(job, "features"), _tables(job, "feature_hist")
    per_feat = hist.groupby(["src", "feature"])["n"].sum()
    counts = feats.groupby(["src", "feature"])["n_active"].sum()
    assert per_feat.sort_index().equals(counts.sort_index().astype(per_feat.dtype))


def test_top_and_sample_rows(job):
    acts, hist = _tables(job, "feature_acts"), _tables(job, "feature_hist")
    samples = _tables(job, "samples").set_index("sample")
    assert set(acts["kind"]) == {"top", "sample"}
    per_shard = len(contracts.complete_shards(job))
    assert acts.groupby(["src", "feature", "kind"]).size().max() <= PER_KIND * per_shard
    for r in acts.itertuples():
        window = np.array([np.nan if v is None else v for v in r.ctx_acts], dtype=float)  # null outside
        assert len(window) == 2 * WINDOW + 1 and window[WINDOW] == pytest.approx(r.value)
        n_tok = samples.loc[r.sample, "n_tokens"]
        inside = [0 <= r.pos + d < n_tok for d in range(-WINDOW, WINDOW + 1)]
        assert np.isnan(window[~np.array(inside)]).all() and not np.isnan(window[np.array(inside)]).any()
        # the value's bin is among the feature's histogram bins
        b = math.floor(math.log2(abs(r.value)) * HIST_STEPS)
        assert ((hist["src"] == r.src) & (hist["feature"] == r.feature) & (hist["bin"] == b)).any()
    # the top rows of a feature are its largest |activations| of the run's stored rows
    top = acts[acts["kind"] == "top"].groupby(["src", "feature"])["value"].apply(lambda v: v.abs().max())
    every = acts.groupby(["src", "feature"])["value"].apply(lambda v: v.abs().max())
    assert (top >= every - 1e-6).all()


@pytest.fixture(scope="module")
def db(job, tmp_path_factory):
    from store import Store, ingest_job_shards

    (job / "job.json").write_text('{"kind": "accumulate"}')
    AccumulateFRAConfig(**CFG).save_yaml(job / "config.yaml")
    store = Store(str(tmp_path_factory.mktemp("db") / "fra.duckdb"))
    with store.write() as con:
        ingest_job_shards(con, job)
    return store


def test_feature_queries_match_the_shards(job, db):
    from store.feature_queries import feature_contexts, feature_histogram, feature_overview, feature_runs

    feats = _tables(job, "features").groupby("feature")["n_active"].sum()
    feature = int(feats.idxmax())
    samples = _tables(job, "samples")
    with db.read() as cur:
        runs = feature_runs(cur, "tiny-sae")
        assert list(runs["name"]) == ["job"] and feature_runs(cur, "other").empty
        run = int(runs["id"].iloc[0])
        info = feature_overview(cur, run, feature)
        assert info["n_active"] == feats[feature] and info["n_tokens"] == samples["n_tokens"].sum()
        assert info["density"] == pytest.approx(feats[feature] / samples["n_tokens"].sum())
        assert info["auto_label"] and info["top_tokens"]
        hist = feature_histogram(cur, run, feature)
        assert hist["count"].sum() == feats[feature] and (hist["bin_hi"] > hist["bin_lo"]).all()
        top = feature_contexts(cur, run, feature, kind="top", n=3)
        assert len(top) == 3 and top["value"].abs().is_monotonic_decreasing
        for r in top.itertuples():
            tokens = samples.set_index("sample").loc[r.sample, "tokens"]
            assert r.tokens[r.center] == tokens[r.pos] and r.acts[r.center] == pytest.approx(r.value)
            assert len(r.tokens) == len(r.acts)
        groups = feature_contexts(cur, run, feature, kind="sample", n=2, groups=3)
        assert groups.groupby("group").size().max() <= 2 and "group" in groups
        with pytest.raises(Exception, match="outside tiny-sae"):
            feature_overview(cur, run, 10_000)


def test_partners_by_head_match_top_pairs(db):
    from store import feature_partners
    from store.feature_queries import partners_by_head

    with db.read() as cur:
        run = 1
        any_pair = cur.execute("SELECT q_feat FROM pair_rows WHERE run = 1 ORDER BY n DESC LIMIT 1").fetchone()[0]
        by_head = partners_by_head(cur, run, int(any_pair), side="query", metric="sum", n=2)
        assert not by_head.empty and by_head.groupby(["layer", "head"]).size().max() <= 2
        for (layer, head), part in by_head.groupby(["layer", "head"]):
            ref = feature_partners(cur, run, int(any_pair), side="query", src=0, metric="sum", n=2,
                                   layer=int(layer), head=int(head))
            assert list(part["partner"]) == list(ref["partner"])
            assert part["value"].tolist() == pytest.approx(ref["value"].tolist())


def test_windows_lookup_equals_the_definition():
    """The keyed lookup of context activations equals the definition: Σ_k coef[b, p', k]·[ids[b, p', k] = gid]
    at each window position p' (NaN outside the sample), with padding ids and inactive slots present."""
    import torch

    from fra_core.accumulate.feature_acts import FeatureActCollector, _ctx_lists

    g = torch.Generator().manual_seed(0)
    for T in (1, 5, 23):
        n_feat, K = 50, 12
        ids = torch.stack([torch.stack([torch.randperm(n_feat, generator=g)[:K] for _ in range(T)]) for _ in range(3)])
        coef = torch.randn(3, T, K, generator=g) * (torch.rand(3, T, K, generator=g) > 0.3)
        ids[(coef == 0) & (torch.rand(3, T, K, generator=g) > 0.5)] = n_feat  # the padding id
        ab, ap, ak = (coef != 0).nonzero(as_tuple=True)
        sel = torch.randint(0, len(ab), (40,), generator=g)
        b, p, gid = ab[sel], ap[sel], ids[ab[sel], ap[sel], ak[sel]]
        got = FeatureActCollector._windows(ids, coef, torch.tensor([0, 20, n_feat]), b, p, gid)
        for r in range(len(b)):
            for w, q in enumerate(range(int(p[r]) - WINDOW, int(p[r]) + WINDOW + 1)):
                if 0 <= q < T:
                    want = float((coef[b[r], q] * (ids[b[r], q] == gid[r])).sum())
                    assert float(got[r, w]) == want
                else:
                    assert math.isnan(float(got[r, w]))
        assert _ctx_lists(got.numpy()).to_pylist() == [[None if math.isnan(v) else v for v in row]
                                                       for row in got.tolist()]

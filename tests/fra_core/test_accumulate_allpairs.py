"""All-pair accumulation: several layers in one run, marginals and node totals, completeness in run.json,
the score identity over a whole run, feature counts once per SAE, config compatibility."""

import numpy as np
import pandas as pd
import pytest
import torch

from fra_core import contracts as shards
from fra_core.accumulate import AccumulateFRAConfig
from fra_core.accumulate.run import run_accumulate
from fra_core.config import ConfigError
from fra_core.datasets import open_texts
from fra_core.jobs import Progress
from tests.fra_core.accumulate_helpers import shard_tables, shard_totals, tiny_demo_model, tiny_sae

CFG = dict(model="tiny", q_saes=("sae-l0", "sae-l1"), layers=(0, 1), n_samples=5, batch_size=2, shard_size=3,
           k_active=6, context_length=16, examples_per_pair=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ap")
    model = tiny_demo_model(root)
    saes = [tiny_sae(model, layer=0, seed=3), tiny_sae(model, layer=1)]
    job = root / "job"
    job.mkdir()
    cfg = AccumulateFRAConfig(**CFG)
    run_accumulate(cfg, Progress(job), model=model, q_saes=saes)
    return model, saes, cfg, job


def _read(job, kind, examples_per_pair=CFG["examples_per_pair"]):
    """A kind's rows over the complete shards; per-head pairs / examples through `shard_pairs` (coact expanded)."""
    if kind in ("pairs", "examples"):
        return shard_tables(job, kind, examples_per_pair)
    return pd.concat([shards.read_shard_table(job, m["shard"], kind).to_pandas() for m in shards.complete_shards(job)])


def test_each_layer_equals_its_own_single_layer_run(run, tmp_path):
    model, saes, cfg, job = run
    both = shard_totals(job)
    assert set(both.index.get_level_values("layer")) == {0, 1}
    for layer, sae in ((0, saes[0]), (1, saes[1])):
        one = tmp_path / f"l{layer}"
        one.mkdir()
        single = AccumulateFRAConfig(**{**CFG, "q_saes": (f"sae-l{layer}",), "layers": (), "layer": layer})
        run_accumulate(single, Progress(one), model=model, q_saes=[sae])
        a = shard_totals(one)
        b = both.xs(layer, level="layer", drop_level=False)
        b = b.rename(index={s: 0 for s in (0, 1)}, level="q_src").rename(index={s: 0 for s in (0, 1)}, level="k_src")
        pd.testing.assert_frame_equal(a.sort_index(), b.sort_index(), check_exact=False, rtol=1e-12)


def test_completeness_recorded_per_layer_and_head(run):
    *_, job = run
    info = shards.read_run_info(job)
    comp = info["completeness"]
    assert set(comp) == {"0", "1"} and all(set(h) == {"0", "1", "2", "3"} for h in comp.values())
    errors = [e for h in comp.values() for e in h.values()]
    assert all(0 <= e < 1e-5 for e in errors) and max(errors) > 0  # measured, float32 nodes: ~1e-7


def test_run_score_identity_and_marginals(run):
    """Σ pairs + Σ query nodes + Σ key nodes vs features == Σ hook_attn_scores over the masked cells of
    all samples; each side's marginals + node totals give the same total."""
    model, saes, cfg, job = run
    pairs, marg, nodes = shard_totals(job), _read(job, "marginals"), _read(job, "node_totals")
    texts = list(open_texts("demo").texts(cfg.n_samples))
    for layer in (0, 1):
        want = np.zeros(4)
        for text in texts:
            toks = model.to_tokens(text, prepend_bos=True, truncate=True)[0, : cfg.context_length]
            _, cache = model.run_with_cache(toks[None], names_filter=lambda n: n.endswith("hook_attn_scores"))
            s = cache[f"blocks.{layer}.attn.hook_attn_scores"][0].double()
            want += torch.where(torch.isfinite(s), s, 0.0).sum((1, 2)).numpy()
        p = pairs.xs(layer, level="layer").groupby("head")["sum"].sum().to_numpy()
        nl = nodes[nodes["layer"] == layer]
        qn = nl[nl["side"] == "query"].groupby("head")["sum"].sum().to_numpy()
        kn = nl[nl["side"] == "key"].groupby("head")["sum_vs_features"].sum().to_numpy()
        np.testing.assert_allclose(p + qn + kn, want, rtol=1e-5)
        ml = marg[marg["layer"] == layer]
        for side in ("query", "key"):
            f = ml[ml["side"] == side].groupby("head")["sum"].sum().to_numpy()
            n = nl[nl["side"] == side].groupby("head")["sum"].sum().to_numpy()
            np.testing.assert_allclose(f + n, want, rtol=1e-5)
        assert set(nl["node"]) >= {"sae_error", "b_dec", "bias"}


def test_examples_are_extreme_cells(run):
    *_, job = run
    ex, pairs = _read(job, "examples"), shard_totals(job)
    best = ex.assign(a=ex["value"].abs()).sort_values("a").groupby(list(shards.PAIR_KEY)).tail(1).set_index(list(shards.PAIR_KEY))
    joined = best.join(pairs, how="inner")
    assert len(joined) == len(pairs)  # every pair has an example
    np.testing.assert_array_equal(joined["a"].to_numpy(np.float32),
                                  np.maximum(joined["max"].abs(), joined["min"].abs()).to_numpy(np.float32))


def test_example_cells_hold_their_values(run):
    """Each example's (sample, q_pos, k_pos) is a cell where the engine's FRA of that (head, f, g) equals
    the example's value (cells are coded per shard: sample id, query, key)."""
    from fra_core.fra import FRAOptions, compute_fra

    model, saes, cfg, job = run
    ex = _read(job, "examples")
    texts = list(open_texts("demo").texts(cfg.n_samples))
    opts = FRAOptions(k_active=cfg.k_active, top_m=None, exclude_diagonal=False)
    on = ["head", "q_feat", "k_feat", "sample", "q_pos", "k_pos"]
    for layer in (0, 1):
        rows = []
        for sample, text in enumerate(texts):
            toks = model.to_tokens(text, prepend_bos=True, truncate=True)[0, : cfg.context_length]
            e = {k: v.numpy() for k, v in compute_fra(model, toks[None], layer, None, saes[layer], None,
                                                      opts).entries.items()}
            rows.append(pd.DataFrame({"head": e["head"], "q_feat": e["q_feature"], "k_feat": e["k_feature"],
                                      "sample": sample, "q_pos": e["query_pos"], "k_pos": e["key_pos"],
                                      "fra": e["value"]}))
        mine = ex[ex["layer"] == layer].astype({c: np.int64 for c in on})
        joined = mine.merge(pd.concat(rows).astype({c: np.int64 for c in on}), on=on, how="left")
        assert len(mine) > 0 and len(joined) == len(mine) and joined["fra"].notna().all()
        np.testing.assert_allclose(joined["value"], joined["fra"], rtol=5e-5, atol=2e-5)


def test_shard_table_folded_over_many_batches_is_the_same(run, tmp_path, monkeypatch):
    """One batch per sample, tables folded every 3 batches, one 5-sample shard, one example per pair:
    the same totals as the 2-batch, 3-sample shards (counts/max/min exactly, sums to float64
    rounding), and each pair's one example is its max or min cell, whichever has the larger |value|."""
    from fra_core.accumulate.allpairs import AllPairsShard

    model, saes, cfg, job = run
    monkeypatch.setattr(AllPairsShard, "FOLD", 3)  # three tables at a time: the one-pass merge (merge_many)
    monkeypatch.setattr(AllPairsShard, "GROWTH", 0)  # and fold again into the growing one
    other = tmp_path / "folded"
    other.mkdir()
    run_accumulate(AccumulateFRAConfig(**{**CFG, "batch_size": 1, "shard_size": 5, "examples_per_pair": 1}),
                   Progress(other), model=model, q_saes=saes)
    a, b = shard_totals(job), shard_totals(other)
    pd.testing.assert_frame_equal(a[["n", "max", "min", "diag_n"]], b[["n", "max", "min", "diag_n"]])
    pd.testing.assert_frame_equal(a[["sum", "diag_sum"]], b[["sum", "diag_sum"]], check_exact=False, rtol=1e-12)
    ex = _read(other, "examples", 1).set_index(list(shards.PAIR_KEY))
    assert ex.index.is_unique and len(ex) == len(b)
    j = ex.join(b)
    want = np.where(j["min"].abs() > j["max"].abs(), j["min"], j["max"])
    np.testing.assert_array_equal(j["value"].to_numpy(np.float32), want.astype(np.float32))


def test_features_counted_once_per_sae(run):
    """Each SAE's tokens are counted once per shard (the layer-0 SAE is not counted again for layer 1)."""
    *_, job = run
    for m in shards.complete_shards(job):
        feats = shards.read_shard_table(job, m["shard"], "features").to_pandas()
        tokens = shards.read_shard_table(job, m["shard"], "samples").to_pandas()["n_tokens"].sum()
        assert set(feats["src"]) == {0, 1} and (feats["n_tokens"] == tokens).all()
        assert (feats["n_active"] <= tokens).all()


def test_config_layers_and_statistics():
    assert AccumulateFRAConfig().run_layers == (1,) and AccumulateFRAConfig().statistics == "all_pairs"
    cfg = AccumulateFRAConfig(layers=[0, 1])
    assert cfg.run_layers == (0, 1) and AccumulateFRAConfig.from_yaml(cfg.to_yaml()) == cfg
    old = AccumulateFRAConfig.from_yaml("job: AccumulateFRAConfig\nlayer: 0\nq_saes: x\n")
    assert old.run_layers == (0,)
    with pytest.raises(ConfigError, match="statistics"):
        AccumulateFRAConfig(statistics="approx")
    with pytest.raises(ConfigError, match="top_m.*one layer"):
        AccumulateFRAConfig(statistics="top_m", layers=(0, 1))
    with pytest.raises(ConfigError, match="layers must be distinct"):
        AccumulateFRAConfig(layers=(1, 1))


def _ingest(job, cfg, db):
    from store import Store, ingest_job_shards

    (job / "job.json").write_text('{"kind": "accumulate"}')
    cfg.save_yaml(job / "config.yaml")
    store = Store(db)
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
    return store, run


def test_store_marginals_shares_and_label(run, tmp_path):
    from store.marginals import feature_marginals, node_totals, run_statistics, score_shares

    model, saes, cfg, job = run
    store, run_id = _ingest(job, cfg, tmp_path / "fra.duckdb")
    with store.read() as con:
        label = run_statistics(con, run_id)
        shares = score_shares(con, run_id)
        top = feature_marginals(con, run_id, side="key", layer=1, head=0, n=5)
        nodes = node_totals(con, run_id, layer=0, head=2)
        layers = con.execute("SELECT layers FROM runs WHERE id = ?", [run_id]).fetchone()[0]
    store.close()
    assert label["statistics"] == "all_pairs" and label["label"].startswith("exact") and layers == [0, 1]
    assert len(shares) == 8
    parts = shares["feature_pairs"] + shares["query_nodes"] + shares["key_nodes_vs_features"]
    np.testing.assert_allclose(parts, shares["total"], rtol=1e-6)
    assert list(top["abs_sum"]) == sorted(top["abs_sum"], reverse=True) and (top["n"] > 0).all()
    assert set(nodes["side"]) == {"query", "key"} and "sae_error" in set(nodes["node"])


def test_density_counts_every_token_whatever_the_shard_size(run, tmp_path):
    """Density = active tokens / ALL tokens of the run: the same for shard sizes 1 and 5."""
    model, saes, _, _ = run
    dens = []
    for size in (1, 5):
        job = tmp_path / f"s{size}"
        job.mkdir()
        cfg = AccumulateFRAConfig(**{**CFG, "q_saes": ("sae-l1",), "layers": (1,), "shard_size": size,
                                     "batch_size": 1})
        run_accumulate(cfg, Progress(job), model=model, q_saes=[saes[1]])
        store, _ = _ingest(job, cfg, tmp_path / f"s{size}.duckdb")
        with store.read() as con:
            dens.append(con.execute("SELECT feature, density FROM features ORDER BY feature").df())
        store.close()
    pd.testing.assert_frame_equal(dens[0], dens[1])
    assert (dens[0]["density"] > 0).all() and (dens[0]["density"] <= 1).all()


def test_shard_cells_recode_batch_cells_to_sample_ids():
    """AllPairsRunner._shard_cells: (b · T + i) · T + j → (sample id · P + i) · P + j, for full-length
    batches (P = T, the shortcut) and shorter ones (P > T), one sample and several."""
    from types import SimpleNamespace

    from fra_core.accumulate.allpairs import AllPairsRunner

    g = torch.Generator().manual_seed(0)
    for B, T, P in ((1, 5, 5), (3, 5, 5), (1, 4, 7), (3, 4, 7)):
        b, i, j = (torch.randint(0, n, (50,), generator=g) for n in (B, T, T))
        ids = torch.randint(0, 1000, (B,), generator=g)
        co = {"key": torch.arange(50), "mx_c": (b * T + i) * T + j, "mn_c": (b * T + j) * T + i}
        out = AllPairsRunner._shard_cells(SimpleNamespace(cell_span=P), dict(co), ids, T)
        assert torch.equal(out["mx_c"], (ids[b] * P + i) * P + j)
        assert torch.equal(out["mn_c"], (ids[b] * P + j) * P + i)

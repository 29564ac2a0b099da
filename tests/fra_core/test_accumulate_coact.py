"""All-pair shards store each head-independent layer's co-activation table ONCE (coact) with the heads'
projected rows (proj): the expansion equals the per-head tables the job wrote before, proj holds exactly
the features coact uses, per-head layers (attention-weighted, rotary) still write per-head pairs."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from fra_core import contracts
from fra_core.accumulate import AccumulateFRAConfig
from fra_core.accumulate.coact import CoactError, expand_coact, prune_coact, shard_pairs, split_cells
from fra_core.accumulate.run import prune_pairs, run_accumulate
from fra_core.datasets import open_texts
from fra_core.fra import FRAOptions, compute_fra
from fra_core.jobs import Progress
from tests.fra_core.accumulate_helpers import assert_totals_equal, shard_totals, tiny_demo_model, tiny_sae

CFG = dict(model="tiny", q_saes=("sae-l0", "sae-l1"), layers=(0, 1), n_samples=5, batch_size=2, shard_size=5,
           k_active=6, context_length=16)
KEY = list(contracts.PAIR_KEY)


@pytest.fixture(scope="module")
def parts2(tmp_path_factory):
    model = tiny_demo_model(tmp_path_factory.mktemp("coact"))
    return model, [tiny_sae(model, layer=0, seed=3), tiny_sae(model, layer=1)]


def _shard(parts2, k: int, **kw):
    """(runner, the shard's arrow tables, the old per-head (pairs, examples) of the same reduced tables)."""
    from fra_core.accumulate.run import prepare
    from fra_core.fra.allpairs_merge import reduce_tables

    model, saes = parts2
    cfg = AccumulateFRAConfig(**{**CFG, "examples_per_pair": k, **kw})
    runner = prepare(cfg, model, saes)
    buf = runner.new_buffer()
    items = list(enumerate(open_texts("demo").texts(cfg.n_samples)))
    with torch.no_grad():
        for s in range(0, len(items), cfg.batch_size):
            runner.process(items[s:s + cfg.batch_size], buf)
    old_p, old_e = [], []
    for L, tables in buf.co.items():  # the per-head path, applied to the same head-independent tables
        co = reduce_tables(tables, unique_keys=True)
        buf.co[L] = [co]
        for p, e in runner.head_tables(L, buf.template[L], co, k):
            old_p.append(p), old_e.append(e)
    return runner, buf.arrow(runner.codec, cfg.layer), pa.concat_tables(old_p), pa.concat_tables(old_e)


def _sorted(t: pa.Table, by: list[str]) -> pd.DataFrame:
    return t.to_pandas().sort_values(by).reset_index(drop=True)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_expansion_equals_the_per_head_tables(parts2, k):
    runner, tables, old_pairs, old_ex = _shard(parts2, k)
    assert tables["pairs"].num_rows == 0 and tables["examples"].num_rows == 0  # no per-head rows any more
    pairs, ex = expand_coact(tables["coact"], tables["proj"], k)
    a, b = _sorted(pairs, KEY), _sorted(old_pairs, KEY)
    assert len(a) == len(b) > 0 and (a[KEY].to_numpy() == b[KEY].to_numpy()).all()
    for c in ("n", "diag_n"):
        np.testing.assert_array_equal(a[c], b[c])
    for c in ("sum", "abs_sum", "diag_sum", "diag_abs_sum"):  # G: a row-wise dot vs the old GEMM (rounding)
        np.testing.assert_allclose(a[c], b[c], rtol=1e-12, atol=1e-15)
    for c in ("max", "min"):  # float32 of float64 products that differ by rounding: at most one float32 ulp
        np.testing.assert_allclose(a[c], b[c], rtol=2 ** -23, atol=0)
    cells = KEY + ["sample", "q_pos", "k_pos"]
    e, f = _sorted(ex, cells), _sorted(old_ex, cells)
    assert len(e) == len(f) and (k == 0) == (len(e) == 0)
    assert (e[cells].to_numpy() == f[cells].to_numpy()).all()
    np.testing.assert_allclose(e["value"], f["value"], rtol=2 ** -23, atol=0)


def test_coact_once_per_layer_and_proj_exactly_its_features(parts2):
    runner, tables, *_ = _shard(parts2, 2)
    coact, proj = tables["coact"].to_pandas(), tables["proj"].to_pandas()
    pairs, _ = expand_coact(tables["coact"], tables["proj"], 0)
    for plan in runner.plans:
        L, heads = plan.layer, plan.heads
        mine = coact[coact["layer"] == L]
        # one row per distinct pair, not per (pair, head)
        assert len(mine) > 0 and not mine.duplicated(["q_src", "q_feat", "k_src", "k_feat"]).any()
        per_head = pairs.filter(pa.compute.equal(pairs["layer"], L)).to_pandas()
        assert len(per_head) == len(mine) * len(heads)
        p = proj[proj["layer"] == L]
        assert sorted(p["head"].unique()) == heads
        d_head = runner.model.cfg.d_head
        assert (p["vec"].map(len) == d_head).all()
        for side in ("q", "k"):
            used = set(zip(mine[f"{side}_src"], mine[f"{side}_feat"]))
            for h in heads:
                rows = p[(p["head"] == h) & (p["side"] == side)]
                assert len(rows) == len(used) and set(zip(rows["src"], rows["feature"])) == used
        # the vectors are the job's projected rows: q = U_f[h], k = V_g[h] / attn_scale
        pq, pk = plan.projectors
        scale = float(runner.model.blocks[L].attn.attn_scale)
        for side, proj_, div in (("q", pq, 1.0), ("k", pk, scale)):
            rows = p[(p["side"] == side) & (p["head"] == heads[-1])]
            local = [plan.q_map, plan.k_map][side == "k"].index(int(rows["src"].iloc[0]))
            gid = torch.tensor(rows["feature"].to_numpy(np.int64)[:5]) + proj_.offsets[local]
            want = (proj_.get(gid, len(heads) - 1) / div).numpy()
            np.testing.assert_array_equal(np.stack(rows["vec"].to_numpy()[:5]), want)


def test_job_totals_equal_brute_force_through_shard_pairs(parts2, tmp_path):
    """The job's stored coact/proj, expanded, equal the per-cell enumeration of the engine (layer 1)."""
    model, saes = parts2
    cfg = AccumulateFRAConfig(**{**CFG, "q_saes": ("sae-l1",), "layers": (1,), "shard_size": 3})
    run_accumulate(cfg, Progress(tmp_path), model=model, q_saes=[saes[1]])
    ms = contracts.complete_shards(tmp_path)
    assert all(m["rows"]["pairs"] == 0 and m["rows"]["coact"] > 0 and m["rows"]["proj"] > 0 for m in ms)
    opts = FRAOptions(k_active=cfg.k_active, top_m=None, exclude_diagonal=False)
    assert_totals_equal(shard_totals(tmp_path), _direct(model, saes[1], cfg, opts), 5e-5, 2e-5)


def _direct(model, sae, cfg, opts) -> pd.DataFrame:
    rows = []
    for text in open_texts("demo").texts(cfg.n_samples):
        toks = model.to_tokens(text, prepend_bos=True, truncate=True)[0, : cfg.context_length]
        e = {k: v.numpy() for k, v in compute_fra(model, toks[None], 1, None, sae, None, opts).entries.items()}
        rows.append(pd.DataFrame({"layer": 1, "head": e["head"], "q_src": 0, "q_feat": e["q_feature"], "k_src": 0,
                                  "k_feat": e["k_feature"], "value": e["value"].astype(np.float64),
                                  "diag": e["query_pos"] == e["key_pos"]}))
    df = pd.concat(rows)
    df["dv"] = np.where(df["diag"], df["value"], 0.0)
    return df.groupby(KEY).agg(n=("value", "size"), sum=("value", "sum"), max=("value", "max"),
                               min=("value", "min"), diag_n=("diag", "sum"), diag_sum=("dv", "sum")).sort_index()


def test_attention_weighted_layers_keep_per_head_pairs(parts2, tmp_path):
    """A per-head layer (attention-weighted) writes per-head pairs and examples as before, no coact/proj, and
    its totals equal the engine's attention-weighted per-cell values."""
    model, saes = parts2
    cfg = AccumulateFRAConfig(**{**CFG, "q_saes": ("sae-l1",), "layers": (1,), "shard_size": 3,
                                 "attention_weighted": True, "examples_per_pair": 2})
    run_accumulate(cfg, Progress(tmp_path), model=model, q_saes=[saes[1]])
    for m in contracts.complete_shards(tmp_path):
        assert m["rows"]["coact"] == m["rows"]["proj"] == 0 and m["rows"]["pairs"] > 0 and m["rows"]["examples"] > 0
    opts = FRAOptions(k_active=cfg.k_active, top_m=None, exclude_diagonal=False, attention_weighted=True)
    assert_totals_equal(shard_totals(tmp_path), _direct(model, saes[1], cfg, opts), 5e-5, 2e-5)


def test_pruning_keeps_exact_mass_and_only_used_features(parts2):
    runner, tables, *_ = _shard(parts2, 2)
    full, _ = expand_coact(tables["coact"], tables["proj"], 0)
    pruned, dropped = prune_pairs(tables, 2)
    coact, proj = pruned["coact"], pruned["proj"]
    assert 0 < coact.num_rows < tables["coact"].num_rows and min(coact["n"].to_pylist()) >= 2
    kept, _ = expand_coact(coact, proj, 0)  # every kept row still finds its vectors
    f, k = full.to_pandas(), kept.to_pandas()
    d = {(r["layer"], r["head"]): r for r in dropped}
    assert set(d) == set(zip(f["layer"], f["head"]))
    for (L, h), got in f.groupby(["layer", "head"]):
        st = k[(k["layer"] == L) & (k["head"] == h)]
        assert len(st) + d[(L, h)]["n_pairs"] == len(got) and int(st["n"].sum()) + d[(L, h)]["n"] == int(got["n"].sum())
        for c in ("sum", "abs_sum"):
            assert float(st[c].sum()) + d[(L, h)][c] == pytest.approx(float(got[c].sum()), rel=1e-12, abs=1e-12)
    c, p = coact.to_pandas(), proj.to_pandas()
    for (L, _h, side), rows in p.groupby(["layer", "head", "side"]):
        mine = c[c["layer"] == L]
        assert set(zip(rows["src"], rows["feature"])) == set(zip(mine[f"{side}_src"], mine[f"{side}_feat"]))
    same, _, none = prune_coact(tables["coact"], tables["proj"], 1)
    assert same is tables["coact"] and none == []


def _hand(mx, mn, qv, kv, cells):
    """A one-pair coact and its proj (layer 3, head 1), cells = ((s, q, k) of mx, (s, q, k) of mn)."""
    (a, b, c), (d, e, f) = cells
    row = {"layer": 3, "q_src": 0, "q_feat": 7, "k_src": 1, "k_feat": 9, "n": 4, "s": 2.0, "abs": 2.5, "mx": mx,
           "mn": mn, "diag_n": 1, "diag_s": 0.5, "diag_abs": 0.5, "mx_sample": a, "mx_q": b, "mx_k": c,
           "mn_sample": d, "mn_q": e, "mn_k": f}
    coact = pa.Table.from_pylist([row], schema=contracts.COACT_SCHEMA)
    proj = pa.Table.from_pylist([{"layer": 3, "head": 1, "side": "q", "src": 0, "feature": 7, "vec": qv},
                                 {"layer": 3, "head": 1, "side": "k", "src": 1, "feature": 9, "vec": kv}],
                                schema=contracts.PROJ_SCHEMA)
    return coact, proj


def test_expansion_formulas_by_hand():
    # G = 1·2 + 2·(−2) = −2 < 0: the head's max is G·mn at mn's cell
    coact, proj = _hand(3.0, 0.5, [1.0, 2.0], [2.0, -2.0], ((0, 4, 2), (1, 5, 5)))
    pairs, ex = expand_coact(coact, proj, 2)
    p = pairs.to_pylist()[0]
    assert (p["head"], p["n"], p["sum"], p["abs_sum"], p["max"], p["min"]) == (1, 4, -4.0, 5.0, -1.0, -6.0)
    assert (p["diag_n"], p["diag_sum"], p["diag_abs_sum"]) == (1, -1.0, 1.0)
    assert [(r["sample"], r["q_pos"], r["k_pos"], r["value"]) for r in ex.to_pylist()] == [(1, 5, 5, -1.0),
                                                                                          (0, 4, 2, -6.0)]
    one = expand_coact(coact, proj, 1)[1].to_pylist()  # k = 1: the larger |value|: the min
    assert [(r["sample"], r["value"]) for r in one] == [(0, -6.0)]
    assert expand_coact(coact, proj, 0)[1].num_rows == 0
    # a tie |max| = |min| keeps the max; one cell for both extremes gives one example
    tie, tproj = _hand(1.0, -1.0, [1.0, 0.0], [1.0, 0.0], ((2, 1, 1), (2, 1, 0)))
    assert [(r["k_pos"], r["value"]) for r in expand_coact(tie, tproj, 1)[1].to_pylist()] == [(1, 1.0)]
    same, sproj = _hand(1.0, 1.0, [1.0, 0.0], [1.0, 0.0], ((2, 1, 1), (2, 1, 1)))
    assert expand_coact(same, sproj, 2)[1].num_rows == 1


def test_a_feature_without_its_projected_row_is_named():
    coact, proj = _hand(1.0, 0.5, [1.0], [1.0], ((0, 0, 0), (0, 0, 0)))
    with pytest.raises(CoactError, match=r"no layer 3 head 1 side k row for \(src, feature\) = \(1, 9\)"):
        expand_coact(coact, proj.filter(pa.compute.equal(proj["side"], "q")), 0)


def test_shard_pairs_is_stored_pairs_and_the_expansion(parts2, tmp_path):
    runner, tables, *_ = _shard(parts2, 2)
    extra = pa.Table.from_pylist([{"layer": 9, "head": 0, "q_src": 0, "q_feat": 1, "k_src": 0, "k_feat": 2, "n": 1,
                                   "sum": 1.0, "abs_sum": 1.0, "max": 1.0, "min": 1.0, "diag_n": 0, "diag_sum": 0.0,
                                   "diag_abs_sum": 0.0}], schema=contracts.PAIRS_SCHEMA)
    contracts.write_shard(tmp_path, 0, {**tables, "pairs": extra}, [0])
    pairs, ex = shard_pairs(tmp_path, 0, 2)
    want_p, want_e = expand_coact(tables["coact"], tables["proj"], 2)
    assert pairs.num_rows == want_p.num_rows + 1 and pairs.slice(0, 1).equals(extra)
    assert pairs.slice(1).equals(want_p) and ex.equals(want_e)


@pytest.mark.parametrize("P", [1, 2, 64, 100, 128, 1000])
def test_split_cells_inverts_the_cell_code(P):
    rng = np.random.default_rng(P)
    sample, q, k = rng.integers(0, 5000, 4000), rng.integers(0, P, 4000), rng.integers(0, P, 4000)
    got = split_cells((sample * P + q) * P + k, P)
    for g, want in zip(got, (sample, q, k)):
        np.testing.assert_array_equal(g, want)


def test_coact_is_written_as_arrow_ipc_and_older_parquet_shards_still_read(parts2, tmp_path):
    _, tables, *_ = _shard(parts2, 2)
    contracts.write_shard(tmp_path / "new", 0, tables, [0])
    path = contracts.shard_path(tmp_path / "new", 0, "coact")
    assert path.name == "shard-000000.coact.arrow" and tables["coact"].num_rows > 0
    assert contracts.read_shard_table(tmp_path / "new", 0, "coact").equals(tables["coact"])
    old = tmp_path / "old"
    contracts.write_shard(old, 0, tables, [0])
    for kind in ("coact", "proj"):  # a shard of the Parquet era: coact.parquet, proj.parquet
        contracts.shard_path(old, 0, kind).unlink()
        contracts.write_table_atomic(tables[kind], contracts.shards_dir(old) / f"shard-000000.{kind}.parquet")
        assert contracts.read_shard_table(old, 0, kind).equals(tables[kind])
    wrong = tables["coact"].drop_columns(["n"])
    with pa.ipc.new_file(str(path), wrong.schema) as writer:
        writer.write_table(wrong)
    with pytest.raises(contracts.FRAStudioError, match="coact.arrow: schema"):
        contracts.read_shard_table(tmp_path / "new", 0, "coact")

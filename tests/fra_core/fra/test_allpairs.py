"""Exact all-pair statistics == a brute-force enumeration of every per-cell term.

The brute force visits every (sample, head, query i, key j, query slot k, key slot l) with a Python loop
over cells, builds each term from the same float64 factors (ã = the engine's coef, U_f/V_g = the
projected decoder rows) with the reference's own rotary (`reference._rotate`), and applies centring /
weighting by their definitions. "Exact" for max/min means: equal to the float32 rounding of the brute
force's float64 per-cell value (the factorised product ã·ã·G rounds differently in float64 only, ~1e-16).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch

from fra_core.fra import FRAOptions, reference_fra
from fra_core.fra.allpairs_batch import Projector, allpairs_batch
from fra_core.fra.engine import run_sides
from fra_core.fra.reference import _rotate
from tests.fra_core.fra.helpers_fra import side_saes, tiny
from tests.fra_core.fra.helpers_fra import tokens as make_tokens

CASES = {  # name: (model kwargs, options kwargs)
    "causal": ({}, {}),
    "causal_nodiag": ({}, {"exclude_diagonal": True}),
    "bos": ({}, {"exclude_bos_key": True, "exclude_bos_query": True}),
    "centred": ({}, {"row_centre": True, "exclude_diagonal": True}),
    "weighted": ({}, {"attention_weighted": True}),
    "centred_weighted": ({}, {"row_centre": True, "attention_weighted": True}),
    "bidirectional": ({"bidirectional": True}, {"exclude_diagonal": True}),
    "bidir_centred": ({"bidirectional": True}, {"row_centre": True, "exclude_bos_key": True}),
    "rotary": ({"rotary": True}, {}),
    "rotary_centred_weighted": ({"rotary": True}, {"row_centre": True, "attention_weighted": True,
                                                   "exclude_diagonal": True}),
}


def _setup(model_kw, opt_kw, side="normalized", layer=1):
    model = tiny(**model_kw)
    sae = side_saes(model, layer, side, d_sae=24)
    opts = FRAOptions(k_active=24, top_m=None, **{"exclude_diagonal": False, **opt_kw})
    toks = make_tokens(model, batch=2, pos=7)
    proj = (Projector(model, layer, sae, "Q", list(range(model.cfg.n_heads))),
            Projector(model, layer, sae, "K", list(range(model.cfg.n_heads))))
    return model, sae, opts, toks, proj


def brute_force(model, toks, layer, sae, opts, proj):
    """{(head, q_gid, k_gid): dict(n, sum, abs_sum, max, min, diag_n, diag_sum, diag_abs_sum)} by enumeration."""
    _, _, heads, qs, ks, scores, pattern, _ = run_sides(model, toks, layer, None, sae, None, opts.k_active)
    B, T = toks.shape
    causal = model.cfg.attention_dir != "bidirectional"
    scale = float(model.blocks[layer].attn.attn_scale)
    rot = model.cfg.positional_embedding_type == "rotary"
    agg = {}
    for b in range(B):
        for hi, h in enumerate(heads):
            Q = [_vectors(model, layer, qs, proj[0], b, hi, i, rot) for i in range(T)]
            K = [_vectors(model, layer, ks, proj[1], b, hi, j, rot) for j in range(T)]
            for i in range(T):
                keys = [j for j in range(T) if j <= i or not causal]
                raw = {j: {(f, g): float(qv @ kv) / scale for f, qv in Q[i] for g, kv in K[j]} for j in keys}
                mean = defaultdict(float)
                if opts.row_centre:
                    for j in keys:
                        for fg, v in raw[j].items():
                            mean[fg] += v / len(keys)
                for j in keys:
                    if (opts.exclude_diagonal and i == j) or (opts.exclude_bos_key and j == 0) or \
                            (opts.exclude_bos_query and i == 0):
                        continue
                    for (f, g), v in raw[j].items():
                        v = (v - mean[(f, g)]) * (float(pattern[b, hi, i, j]) if opts.attention_weighted else 1.0)
                        s = agg.setdefault((h, f, g), {"n": 0, "sum": 0.0, "abs_sum": 0.0, "max": -np.inf,
                                                       "min": np.inf, "diag_n": 0, "diag_sum": 0.0,
                                                       "diag_abs_sum": 0.0, "cells": []})
                        s["n"] += 1
                        s["sum"] += v
                        s["abs_sum"] += abs(v)
                        s["max"], s["min"] = max(s["max"], v), min(s["min"], v)
                        s["cells"].append((v, b, i, j))
                        if i == j:
                            s["diag_n"] += 1
                            s["diag_sum"] += v
                            s["diag_abs_sum"] += abs(v)
    return agg


def _vectors(model, layer, side, proj, b, hi, p, rot):
    """[(global id, ã · R_p U_f)] of the active features at (sample b, position p), one head index."""
    out = []
    for k in range(side.ids.shape[2]):
        a = float(side.coef[b, p, k])
        if a != 0:
            u = a * proj.get(side.ids[b, p, k:k + 1])[0, hi]
            out.append((int(side.ids[b, p, k]), _rotate(model, layer, u, p) if rot else u))
    return out


def as_dict(res, T: int = 7):
    from fra_core.fra.allpairs import decode_cell

    out = {}
    for h, st in zip(res.heads, res.stats):
        if st is None:
            continue
        st = dict(st)
        for c in ("max", "min"):
            st[c + "_b"], st[c + "_i"], st[c + "_j"] = decode_cell(st.pop(c + "_c"), T)
        cols = {c: v.tolist() for c, v in st.items()}
        for r in range(len(cols["n"])):
            out[(h, cols["q_gid"][r], cols["k_gid"][r])] = {c: cols[c][r] for c in cols}
    return out


@pytest.mark.parametrize("case,side", [(c, "normalized") for c in CASES] +
                         [("causal", "resid_pre"), ("centred", "hook_z"), ("rotary", "hook_z")])
def test_every_pair_matches_brute_force(case, side):
    model_kw, opt_kw = CASES[case]
    model, sae, opts, toks, proj = _setup(model_kw, opt_kw, side)
    got = as_dict(allpairs_batch(model, toks, 1, None, sae, None, opts, proj))
    want = brute_force(model, toks, 1, sae, opts, proj)
    assert set(got) == set(want) and len(want) > 50
    for key, w in want.items():
        g = got[key]
        assert (g["n"], g["diag_n"]) == (w["n"], w["diag_n"]), key
        scale = max(w["abs_sum"], 1e-30)
        for c in ("sum", "abs_sum", "diag_sum", "diag_abs_sum"):
            assert abs(g[c] - w[c]) <= 1e-12 * scale + 1e-300, (key, c, g[c], w[c])
        assert np.float32(g["max"]) == np.float32(w["max"]) and np.float32(g["min"]) == np.float32(w["min"]), key
        # the recorded cells hold the extremes
        cells = {(b, i, j): v for v, b, i, j in w["cells"]}
        assert np.float32(cells[(g["max_b"], g["max_i"], g["max_j"])]) == np.float32(w["max"])
        assert np.float32(cells[(g["min_b"], g["min_i"], g["min_j"])]) == np.float32(w["min"])


@pytest.mark.parametrize("case", ["causal", "bidirectional", "rotary", "weighted"])
def test_against_the_float64_reference(case):
    """Same sums as reference_fra (its own float64 pipeline from the SAE activations). The all-pair
    factors come from the engine's float32 side (coef, folded weights): their float32 rounding, amplified
    by cancellation in d_f·W and U_f·V_g, bounds the agreement to ~1e-7 of the head's largest |term|
    per cell (measured ≤ 1.1e-7 here), so the bound is 1e-6 · n · max|term|."""
    model_kw, opt_kw = CASES[case]
    model, sae, opts, toks, proj = _setup(model_kw, opt_kw)
    got = as_dict(allpairs_batch(model, toks, 1, None, sae, None, opts, proj))
    ref = reference_fra(model, toks, 1, None, sae, None, opts)["entries"]
    sums, vmax = defaultdict(float), defaultdict(float)
    for (_, h, _, _, _, qf, _, kf), v in ref.items():
        sums[(h, qf, kf)] += v
        vmax[h] = max(vmax[h], abs(v))
    assert set(sums) <= set(got)
    for (h, f, gk), g in got.items():
        assert abs(g["sum"] - sums.get((h, f, gk), 0.0)) <= 1e-6 * g["n"] * vmax[h], (h, f, gk)


def test_resume_equals_fresh_projection():
    """The projected rows do not depend on which features an earlier batch projected."""
    model, sae, opts, toks, proj = _setup({}, {})
    heads = list(range(model.cfg.n_heads))
    warm = (Projector(model, 1, sae, "Q", heads), Projector(model, 1, sae, "K", heads))
    allpairs_batch(model, make_tokens(model, batch=3, pos=9, seed=5), 1, None, sae, None, opts, warm)
    a = as_dict(allpairs_batch(model, toks, 1, None, sae, None, opts, warm))
    b = as_dict(allpairs_batch(model, toks, 1, None, sae, None, opts, proj))
    assert a == b


def test_negative_activations_are_refused():
    from fra_core.fra import FRAInputError

    model, sae, opts, toks, proj = _setup({}, {})
    with torch.no_grad():
        sae.W_dec.mul_(1.0)
    orig = sae.encode
    sae.encode = lambda x: -orig(x)
    with pytest.raises(FRAInputError, match="activations >= 0"):
        allpairs_batch(model, toks, 1, None, sae, None, opts, proj)


MARGINAL_CASES = ["causal", "bos", "weighted", "bidirectional", "rotary", "centred", "bidir_centred"]


@pytest.mark.parametrize("case", MARGINAL_CASES)
def test_marginals_and_the_score_identity(case):
    """Σ pairs + Σ query nodes + Σ key nodes vs features = Σ (transformed) hook_attn_scores over the
    selected cells; each side's marginals + node totals alone give it too; marginals == brute force."""
    from fra_core.fra.allpairs_batch import batch_marginals

    model_kw, opt_kw = CASES[case]
    model, sae, opts, toks, proj = _setup(model_kw, opt_kw)
    bs = allpairs_batch(model, toks, 1, None, sae, None, opts, proj)
    mg = batch_marginals(model, 1, bs, proj, opts)
    q_side, k_side, scores, pattern, sel, amask = bs.sides
    s = torch.where(amask, scores, 0.0).to(torch.float64)  # masked cells hold -inf
    if opts.row_centre:
        m = amask.to(torch.float64)
        s = s - (s * m).sum(-1, keepdim=True) / m.sum(-1)[:, None]
    if opts.attention_weighted:
        s = s * pattern.to(torch.float64)
    total = (s * sel).sum((0, 2, 3))  # [head_index]
    H = len(bs.heads)
    for side in ("q", "k"):
        key, val = mg["features"][side]
        G = (q_side if side == "q" else k_side).offsets[-1] + 1
        feat = torch.zeros(H, dtype=torch.float64).index_add_(0, key // G, val[:, 1])
        node = mg["nodes"][side][1][:, :, 1].sum(1)
        if side == "q" or not opts.row_centre:  # centred key features leave their absent cells out
            torch.testing.assert_close(feat + node, total, rtol=1e-5, atol=1e-6)
    pairs = torch.tensor([float(st["sum"].sum()) for st in bs.stats], dtype=torch.float64)
    cross = mg["nodes"]["q"][1][:, :, 1].sum(1) + mg["nodes"]["k"][1][:, :, 3].sum(1)
    if not opts.row_centre:  # centred pairs leave their absent cells out (documented)
        torch.testing.assert_close(pairs + cross, total, rtol=1e-5, atol=1e-6)
    # brute force of the query-feature marginals: q_i^f · k_j over the selected cells
    want = defaultdict(lambda: [0, 0.0, 0.0])
    Bt, T = toks.shape
    for b in range(Bt):
        for hi in range(H):
            qf = q_side.coef[b].double()[:, :, None] * proj[0].get(q_side.ids[b], hi)
            if model.cfg.positional_embedding_type == "rotary":
                qf = torch.stack([torch.stack([_rotate(model, 1, qf[i, k], i) for k in range(qf.shape[1])])
                                  for i in range(T)])
            kt = _whole(model, k_side, proj[1], b, hi)
            for i in range(T):
                row = [(j, float(qf[i, k] @ kt[j]) / float(model.blocks[1].attn.attn_scale))
                       for k in range(qf.shape[1]) for j in range(T) if amask[i, j]]
                for k in range(qf.shape[1]):
                    if q_side.coef[b, i, k] == 0:
                        continue
                    vals = {j: float(qf[i, k] @ kt[j]) / float(model.blocks[1].attn.attn_scale)
                            for j in range(T) if amask[i, j]}
                    mean = sum(vals.values()) / len(vals) if opts.row_centre else 0.0
                    w = want[(hi, int(q_side.ids[b, i, k]))]
                    for j, v in vals.items():
                        if sel[i, j]:
                            v = (v - mean) * (float(pattern[b, hi, i, j]) if opts.attention_weighted else 1.0)
                            w[0] += 1
                            w[1] += v
                            w[2] += abs(v)
                del row
    key, val = mg["features"]["q"]
    G = q_side.offsets[-1] + 1
    got = {(int(k) // G, int(k) % G): v.tolist() for k, v in zip(key, val)}
    assert set(got) >= {k for k, w in want.items() if w[0]}
    for k, w in want.items():
        assert got[k][0] == w[0] and abs(got[k][1] - w[1]) <= 1e-9 * max(w[2], 1e-12) and \
            abs(got[k][2] - w[2]) <= 1e-9 * max(w[2], 1e-12), k


def _whole(model, side, proj, b, hi):
    """The whole key k_j (features + nodes), float64, rotated: [pos, d_head]."""
    kf = side.coef[b].double()[:, :, None] * proj.get(side.ids[b], hi)
    T = kf.shape[0]
    if model.cfg.positional_embedding_type == "rotary":
        kf = torch.stack([torch.stack([_rotate(model, 1, kf[j, l], j) for l in range(kf.shape[1])]) for j in range(T)])
    return kf.sum(1) + side.nodes[b, :, hi].double().sum(1)


@pytest.mark.parametrize("case", ["causal", "centred_weighted", "bidir_centred", "rotary_centred_weighted"])
def test_batch_share_equals_the_engine_share(case):
    """batch_marginals' "share" (float64, from the marginals' side sums) == `share.sides_share_sums` of the
    same batch (the engine's float32 feature vectors) to float32 rounding, head by head."""
    from fra_core.fra.allpairs_batch import batch_marginals
    from fra_core.fra.share import sides_share_sums

    model_kw, opt_kw = CASES[case]
    model, sae, opts, toks, proj = _setup(model_kw, opt_kw)
    bs = allpairs_batch(model, toks, 1, None, sae, None, opts, proj)
    got = batch_marginals(model, 1, bs, proj, opts)["share"]
    q_side, k_side, scores, pattern, _, amask = bs.sides
    want = sides_share_sums(bs.heads, q_side, k_side, scores, pattern, amask, opts,
                            float(model.blocks[1].attn.attn_scale))
    assert set(got) == set(want) == set(bs.heads)
    for h in bs.heads:
        assert want[h][0] > 0 and want[h][1] > 0
        np.testing.assert_allclose(got[h], want[h], rtol=1e-5)


def test_sorted_merge_equals_the_generic_reduction():
    """reduce_tables of sorted distinct-key tables (the O(rows) merge) == the generic sort-and-scatter
    reduction (unique_keys=False) of the same tables: keys, counts, extremes and their cells (ties: the
    earliest table's cell) identical, sums to float64 rounding; tables with shared, new and no keys; raw
    tables (abs is s, dabs is ds: one tensor) merge into a raw table."""
    from fra_core.fra.allpairs_merge import reduce_tables

    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        tables = []
        for _ in range(int(torch.randint(2, 6, (1,), generator=g))):
            key = torch.unique(torch.randint(0, 60, (int(torch.randint(0, 50, (1,), generator=g)),), generator=g))
            N = len(key)
            t = {"key": key, "n": torch.randint(1, 4, (N,), generator=g), "dn": torch.randint(0, 2, (N,), generator=g)}
            for c in ("s", "abs", "ds", "dabs"):
                t[c] = torch.randn(N, generator=g, dtype=torch.float64)
            if trial % 2:  # raw values: one tensor for Σx and Σ|x| (`sample_table`)
                t["abs"], t["dabs"] = t["s"], t["ds"]
            for c in ("mx", "mn"):
                t[c] = torch.randint(0, 3, (N,), generator=g).double()  # few values: many ties
                t[c + "_c"] = torch.randint(0, 1000, (N,), generator=g)
            tables.append(t)
        want, got = reduce_tables(tables, unique_keys=False), reduce_tables(tables, unique_keys=True)
        for c in ("key", "n", "dn", "mx", "mn", "mx_c", "mn_c"):
            assert torch.equal(got[c], want[c]), (trial, c)
        for c in ("s", "abs", "ds", "dabs"):
            torch.testing.assert_close(got[c], want[c], rtol=1e-14, atol=1e-14)
        if trial % 2:
            assert got["abs"] is got["s"] and got["dabs"] is got["ds"], trial


@pytest.mark.parametrize("case", ["causal", "weighted", "rotary"])
def test_table_and_marginals_together_equal_them_one_after_the_other(case):
    """`batch_cotable_and_marginals` (the table in a worker thread) gives bit for bit what `batch_cotable`
    then `batch_marginals` give, on fresh projectors each (the rows are filled in different orders)."""
    from fra_core.fra.allpairs_batch import batch_cotable, batch_cotable_and_marginals, batch_marginals

    model_kw, opt_kw = CASES[case]
    model, sae, opts, toks, proj = _setup(model_kw, opt_kw)
    bs, mg = batch_cotable_and_marginals(model, toks, 1, None, sae, None, opts, proj)
    heads = list(range(model.cfg.n_heads))
    fresh = (Projector(model, 1, sae, "Q", heads), Projector(model, 1, sae, "K", heads))
    bs2 = batch_cotable(model, toks, 1, None, sae, None, opts, fresh)
    mg2 = batch_marginals(model, 1, bs2, fresh, opts)
    assert bs.co.keys() == bs2.co.keys()
    for c in bs.co:
        assert torch.equal(bs.co[c], bs2.co[c]), c
    for s in ("q", "k"):
        assert all(torch.equal(a, b) for a, b in zip(mg["features"][s], mg2["features"][s]))
        assert torch.equal(mg["nodes"][s][1], mg2["nodes"][s][1])
    assert torch.equal(mg["completeness"], mg2["completeness"]) and mg["share"] == mg2["share"]


@pytest.mark.parametrize("how", ["amax", "amin"])
def test_extreme_is_the_first_entry_attaining_it(how):
    """The max-times product `_extreme` == a loop over each feature's entries in order: the extreme of
    a_e · kx[i_e, g] and the first entry attaining it, with products that tie often (small integers) and
    features of every multiplicity (one entry up to dozens), ±inf where a key feature has no selected key."""
    from fra_core.fra.allpairs import _extreme

    g = torch.Generator().manual_seed(1)
    T, nq, nk, E = 12, 9, 7, 60
    i_e = torch.sort(torch.randint(0, T, (E,), generator=g)).values  # entries in row order
    f_e = torch.cat([torch.zeros(20, dtype=torch.long), torch.randint(1, nq - 1, (E - 20,), generator=g)])
    f_e = f_e[torch.randperm(E, generator=g)]  # feature 0: 20 entries; feature nq - 1: none
    a_e = torch.randint(1, 3, (E,), generator=g).double()
    kx = torch.randint(0, 3, (T, nk), generator=g).double()
    kx[kx == 0] = -torch.inf if how == "amax" else torch.inf
    jx = torch.randint(0, T, (T, nk), generator=g)
    best, i, j = _extreme(a_e, i_e, f_e, nq, kx, jx, how)
    better = (lambda x, y: x > y) if how == "amax" else (lambda x, y: x < y)
    for f in range(nq):
        mine = [e for e in range(E) if f_e[e] == f]
        for k in range(nk):
            if not mine:
                assert best[f, k] == (-torch.inf if how == "amax" else torch.inf)
                continue
            win = mine[0]
            for e in mine[1:]:
                if better(a_e[e] * kx[i_e[e], k], a_e[win] * kx[i_e[win], k]):
                    win = e
            assert best[f, k] == a_e[win] * kx[i_e[win], k], (f, k)
            if torch.isfinite(best[f, k]):
                assert (i[f, k], j[f, k]) == (i_e[win], jx[i_e[win], k]), (f, k)


@pytest.mark.parametrize("span", [50, 1 << 23])  # the O(n + span) path, and torch.unique for a huge span
def test_compact_ids_is_torch_unique(span):
    from fra_core.fra.aggregate import compact_ids

    g = torch.Generator().manual_seed(span % 97)
    ids = torch.randint(0, min(span, 50), (300,), generator=g) * (span // 50)  # many repeats, gaps
    for got, want in zip(compact_ids(ids, span), torch.unique(ids, return_inverse=True)):
        assert torch.equal(got, want)
    empty = compact_ids(ids[:0], span)
    assert len(empty[0]) == 0 and len(empty[1]) == 0

"""The engine equals the slow float64 reference: sparse pair values, kept sets and dense node terms."""

from __future__ import annotations

import pytest

from fra_core.fra import FRAOptions, compute_fra, pair_aggregates, reference_fra, reference_pair_aggregates

from .helpers_fra import side_saes, tiny, tokens

KEY = ("batch", "head", "query_pos", "key_pos", "q_source", "q_feature", "k_source", "k_feature")
TOL = 1e-5


def engine_entries(result) -> dict:
    e = result.entries
    cols = [e[f].tolist() for f in KEY]
    return {tuple(row): v for row, v in zip(zip(*cols), e["value"].tolist())}


def compare(model, d, opts, heads=(1,), T=7, batch=2):
    tok = tokens(model, batch, T)
    result = compute_fra(model, tok, 1, list(heads), d, None, opts)
    ref = reference_fra(model, tok, 1, list(heads), d, None, opts)
    eng = engine_entries(result)
    assert set(eng) == set(ref["entries"]), "engine and reference keep different pairs"
    assert eng, "nothing kept: the test would be vacuous"
    for key, v in ref["entries"].items():
        assert abs(eng[key] - v) <= TOL
    for (b, hi, i, j), terms in ref["node_terms"].items():
        nt = result.node_terms(b, hi)
        for (qn, kn), v in terms.items():
            got = float(nt[i, j, result.q_node_names.index(qn), result.k_node_names.index(kn)])
            assert abs(got - v) <= TOL, (qn, kn)
    return result, ref


@pytest.mark.parametrize("side", ["normalized", "resid_pre", "hook_z"])
@pytest.mark.parametrize("rotary", [False, True])
def test_engine_matches_reference_per_side(side, rotary):
    model = tiny("LN", rotary)
    compare(model, side_saes(model, 1, side, kind="topk"), FRAOptions(k_active=4, top_m=3))


@pytest.mark.parametrize("opts", [
    FRAOptions(k_active=5, top_m=3, row_centre=True),
    FRAOptions(k_active=5, top_m=None, row_centre=True, attention_weighted=True, exclude_bos_key=True),
    FRAOptions(k_active=5, top_n=15, exclude_diagonal=False, exclude_bos_query=True),
    FRAOptions(k_active=3, top_m=2, attention_weighted=True, chunk_rows=2),
], ids=["centre", "centre-weight-bos", "top-n", "weighted-chunked"])
def test_engine_matches_reference_options(opts):
    model = tiny("RMS", rotary=True, bidirectional=True)
    compare(model, side_saes(model, 1, "resid_pre"), opts)


def test_aggregates_match_reference():
    model = tiny("LNPre")
    opts = FRAOptions(k_active=4, top_m=2, exclude_diagonal=False)
    result, ref = compare(model, side_saes(model, 1, "normalized", kind="topk"), opts, heads=(0, 2), batch=3)
    agg = pair_aggregates(result)
    ref_agg = reference_pair_aggregates(ref["entries"])
    assert len(agg["n"]) == len(ref_agg)
    for r in range(len(agg["n"])):
        key = tuple(int(agg[c][r]) for c in ("head", "q_source", "q_feature", "k_source", "k_feature"))
        n, s, a, mx, mn = ref_agg[key]
        assert int(agg["n"][r]) == n
        for col, want in (("sum", s), ("abs_sum", a), ("max", mx), ("min", mn)):
            assert abs(float(agg[col][r]) - want) <= TOL
        assert abs(abs(float(agg["best_value"][r])) - max(abs(mx), abs(mn))) <= TOL


@pytest.mark.parametrize("side", ["resid_pre", "hook_z"])
def test_default_keeps_every_active_feature(side):
    """k_active=None (the default): K per side = the batch's largest Σ L0, nothing truncated, and the
    engine still equals the reference (which keeps every candidate when k is None)."""
    from fra_core.fra.validate import error_budget

    model = tiny("LN")
    d = side_saes(model, 1, side)  # standard (ReLU) SAEs: L0 varies per position
    assert FRAOptions().k_active is None
    result, _ = compare(model, d, FRAOptions(top_m=3), heads=(0, 1))
    saes = d if isinstance(d, list) else [d]
    tok = tokens(model, 2, 7)
    _, cache = model.run_with_cache(tok, stop_at_layer=2)
    from fra_core.sae.loaders import sae_input

    l0 = sum((s.encode(sae_input(s, cache[s.cfg.metadata.hook_name])) != 0).sum(-1) for s in saes)
    assert result.q_side.ids.shape[-1] == int(l0.max()) > 4  # more than the capped runs keep
    assert not result.truncated and float(result.node_terms(0, 0)[..., result.q_node_names.index("truncation"), :]
                                           .abs().max()) == 0.0
    assert error_budget(result)["truncation_share"] == 0.0
    capped = compute_fra(model, tok, 1, [0, 1], d, None, FRAOptions(k_active=2, top_m=3))
    assert capped.truncated and error_budget(capped)["truncation_share"] > 0  # a cap shows its share

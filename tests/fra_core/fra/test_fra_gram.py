"""The Gram path of the top-m selection (`fra_core/fra/gram.py`) equals the block path: same entries in the
same order, values to float32 rounding, same kept sums, still complete."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fra_core.fra import FRAOptions, compute_fra, gram
from fra_core.fra.engine import ENTRY_FIELDS, gram_plan, run_sides

from .helpers_fra import side_saes, tiny, tokens

OPTS = FRAOptions(top_m=3)
CASES = {
    "causal LN, resid_pre": (dict(norm="LN"), "resid_pre", {}),
    "causal, hook_z list, BOS key excluded": (dict(norm="LN"), "hook_z", dict(exclude_bos_key=True)),
    "bidirectional, diagonal kept, BOS query excluded": (dict(norm="LNPre", bidirectional=True), "normalized",
                                                         dict(exclude_diagonal=False, exclude_bos_query=True)),
    "RMS + QK-norm, attention-weighted": (dict(norm="RMS", use_qk_norm=True), "resid_pre",
                                          dict(attention_weighted=True, top_m=2)),
    "sliding window (local attention), diagonal kept": (
        dict(norm="LN", use_local_attn=True, window_size=4, attn_types=["local", "local", "local"]), "resid_pre",
        dict(exclude_diagonal=False)),
    "no norm, top-1, BOS both sides, cells in chunks": (dict(norm=None), "hook_z", dict(
        top_m=1, exclude_bos_key=True, exclude_bos_query=True, chunk_elements=200)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gram_path_equals_block_path(name, monkeypatch):
    model_kw, side, kw = CASES[name]
    model = tiny(n_layers=3, **model_kw)
    layer = 2 if side == "hook_z" else 1
    d, tok = side_saes(model, layer, side), tokens(model, 3, 12)
    opts = dataclasses.replace(OPTS, **kw)
    monkeypatch.setattr(gram, "TILE", 16)  # several tiles (some beyond every reach) and position chunks
    monkeypatch.setattr(gram, "KEY_ROWS", 3)
    items, real = [], gram.top_m_item
    monkeypatch.setattr(gram, "top_m_item", lambda *a: items.append(a[2:4]) or real(*a))
    runs = []
    for use in (False, True):
        monkeypatch.setattr(gram, "cheaper", lambda *a, _u=use: _u)
        runs.append(compute_fra(model, tok, layer, None, d, None, opts))
    old, new = runs
    assert old.q_side.ids.shape[-1] > opts.top_m and old.n_entries > 0  # m < K, and something is selected
    assert items == [(b, h) for b in range(3) for h in range(model.cfg.n_heads)]  # only the 2nd run, every item
    for f in ENTRY_FIELDS[:-1]:
        assert torch.equal(new.entries[f], old.entries[f]), f  # same pairs, same order
    assert torch.allclose(new.entries["value"], old.entries["value"], rtol=1e-5, atol=1e-7)
    assert torch.allclose(new.kept_sum, old.kept_sum, rtol=1e-5, atol=1e-6)
    assert new.completeness_error() <= 1e-4


def test_gram_path_in_float64_is_the_block_path_to_rounding(monkeypatch):
    model = tiny("LN", n_layers=3).double()
    d = side_saes(model, 2, "hook_z")
    for sae in d:
        sae.double()
    tok = tokens(model, 2, 10)
    runs = []
    for use in (False, True):
        monkeypatch.setattr(gram, "cheaper", lambda *a, _u=use: _u)
        runs.append(compute_fra(model, tok, 2, [0, 1], d, None, FRAOptions(top_m=4, exclude_bos_key=True)))
    for f in ENTRY_FIELDS[:-1]:
        assert torch.equal(runs[0].entries[f], runs[1].entries[f]), f
    assert torch.allclose(runs[0].kept_sum, runs[1].kept_sum, rtol=1e-12, atol=1e-12)
    assert runs[1].completeness_error() <= runs[0].completeness_error() + 1e-12 <= 1e-4


def test_key_group_max_is_the_max_over_each_positions_key_slots():
    gen = torch.Generator().manual_seed(3)
    U, V = torch.randn(600, 8, generator=gen), torch.randn(40, 8, generator=gen)  # several column tiles
    ak, k_inv = torch.randn(11, 5, generator=gen), torch.randint(0, 40, (11, 5), generator=gen)
    M = gram.key_group_max(U, V, ak, k_inv)
    direct = (ak[..., None] * (U @ V[k_inv].reshape(-1, 8).T).T.view(11, 5, 600)).abs().amax(1)
    assert M.shape == (11, 600) and torch.allclose(M, direct, rtol=1e-6)
    # with each feature's reach (the last key position its cells need): exact up to it
    reach = torch.randint(-1, 11, (600,), generator=gen)
    M = gram.key_group_max(U, V, ak, k_inv, reach)
    inside = torch.arange(11)[:, None] <= reach[None, :]
    assert torch.allclose(M[inside], direct[inside], rtol=1e-6)


@pytest.mark.parametrize("kw", [dict(row_centre=True), dict(top_n=5, top_m=None), dict(top_m=None),
                                dict(top_m=10_000)])
def test_the_block_path_serves_what_the_gram_path_does_not_model(kw, monkeypatch):
    """Row-centred values depend on the query row, top-N ranks across cells, m ≥ K takes every group."""
    model = tiny("LN")
    d, tok = side_saes(model, 1, "resid_pre"), tokens(model, 2, 9)
    monkeypatch.setattr(gram, "cheaper", lambda *a: True)
    with torch.no_grad():
        _, _, _, qs, ks, *_ = run_sides(model, tok, 1, None, d, None, None)
    assert gram_plan(qs, ks, dataclasses.replace(OPTS, **kw), 5) is None
    r = compute_fra(model, tok, 1, None, d, None, dataclasses.replace(OPTS, **kw))
    assert r.completeness_error() <= 1e-4


def test_rotary_models_take_the_block_path(monkeypatch):
    model = tiny("LN", rotary=True)
    d, tok = side_saes(model, 1, "resid_pre"), tokens(model, 2, 9)
    monkeypatch.setattr(gram, "cheaper", lambda *a: True)
    with torch.no_grad():
        _, _, _, qs, ks, *_ = run_sides(model, tok, 1, None, d, None, None)
    assert gram_plan(qs, ks, OPTS, 5) is None  # R_i(U_f) depends on the position: no shared Gram matrix


def test_the_cost_model_picks_the_gram_path_at_gpt2_scale_only():
    # GPT-2 Small, T = 128, ≈ 447 slots per side, ≈ 8 400 distinct features, causal cells without the diagonal
    assert gram.cheaper(8400, 8400, 128, 447, 447, 128 * 127 // 2, 8, 64)
    # a demo-sized problem whose features are all distinct per position: the block GEMM is cheaper
    assert not gram.cheaper(60, 60, 6, 10, 10, 15, 8, 16)

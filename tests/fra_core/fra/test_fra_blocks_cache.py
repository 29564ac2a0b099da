"""Block planning (several items per block, row ranges) and the projected-row cache across calls."""

from __future__ import annotations

import dataclasses

import torch

from fra_core.fra import FRAOptions, compute_fra
from fra_core.fra.engine import ENTRY_FIELDS, plan_blocks
from fra_core.fra.rowcache import clear_cache

from .helpers_fra import side_saes, tiny, tokens

OPTS = FRAOptions(k_active=5, top_m=3, exclude_diagonal=False)


def _table(result) -> dict:
    e = result.entries
    return {tuple(int(e[f][r]) for f in ENTRY_FIELDS[:-1]): float(e["value"][r]) for r in range(result.n_entries)}


def test_plan_blocks_covers_rows_within_budget():
    per, ranges = plan_blocks(FRAOptions(chunk_elements=1 << 12), 8, 100, 4, 4, causal=True)
    assert per == 1 and ranges[0][0] == 0 and ranges[-1][1] == 100
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all((i1 - i0) * i1 * 16 <= 1 << 12 or i1 - i0 == 1 for i0, i1 in ranges)
    per, ranges = plan_blocks(FRAOptions(), 48, 10, 3, 3, causal=True)
    assert ranges == [(0, 10)] and per == FRAOptions().chunk_elements // 9 // 100


def test_block_shapes_do_not_change_the_table():
    model = tiny("LN", rotary=True)
    d, tok = side_saes(model, 1, "resid_pre"), tokens(model, 3, 11)
    runs = [compute_fra(model, tok, 1, None, d, None, dataclasses.replace(OPTS, **kw)) for kw in (
        {}, {"chunk_rows": 2}, {"chunk_elements": 64}, {"chunk_rows": 4, "chunk_elements": 4 * 11 * 25 * 2})]
    base = runs[0]
    for r in runs[1:]:
        for f in ENTRY_FIELDS[:-1]:
            assert torch.equal(r.entries[f], base.entries[f]), f  # same rows in the same order
        assert torch.allclose(r.entries["value"], base.entries["value"], atol=1e-6)
        assert torch.allclose(r.kept_sum, base.kept_sum, atol=1e-6)
    assert base.entries["query_pos"].dtype == torch.int32 and base.entries["value"].dtype == torch.float32


def test_row_cache_follows_weight_changes():
    clear_cache()
    model = tiny("LN")
    d, tok = side_saes(model, 1, "normalized"), tokens(model, 2, 9)
    first = compute_fra(model, tok, 1, [0, 2], d, None, OPTS)
    again = compute_fra(model, tok, 1, [0, 2], d, None, OPTS)  # served from the cache
    assert _table(first) == _table(again)
    one_head = compute_fra(model, tok, 1, [2], d, None, OPTS)
    e = first.entries
    # a 1-head and a 2-head run batch their GEMMs differently: same pairs, values equal to float32 rounding
    head2 = {k: v for k, v in _table(first).items() if k[1] == 2}
    assert _table(one_head).keys() == head2.keys() and len(e["value"])
    assert all(abs(v - head2[k]) <= 1e-6 for k, v in _table(one_head).items())
    with torch.no_grad():  # in-place changes of the decoder and of W_K: the cached rows are stale
        d.W_dec.mul_(1.5)
        model.blocks[1].attn.W_K.add_(0.1)
    changed = compute_fra(model, tok, 1, [0, 2], d, None, OPTS)
    assert changed.completeness_error() <= 1e-4
    clear_cache()
    fresh = compute_fra(model, tok, 1, [0, 2], d, None, OPTS)
    assert _table(changed).keys() == _table(fresh).keys()
    assert all(abs(v - _table(fresh)[k]) <= 1e-6 for k, v in _table(changed).items())


def test_key_ranges_bound_a_block_when_k_is_large():
    from fra_core.fra.engine import key_ranges

    opts = FRAOptions(chunk_elements=1 << 20)
    K = L = 400  # every active feature of five upstream SAEs kept: one row of 128 keys alone is 20 M values
    per, ranges = plan_blocks(opts, 12, 128, K, L, causal=True)
    for i0, i1 in ranges:
        keys = key_ranges(opts, i1 - i0, i1, K, L)
        assert keys[0][0] == 0 and keys[-1][1] == i1 and all(a[1] == b[0] for a, b in zip(keys, keys[1:]))
        assert all((i1 - i0) * (j1 - j0) * K * L <= opts.chunk_elements or j1 - j0 == 1 for j0, j1 in keys)
    assert key_ranges(dataclasses.replace(opts, row_centre=True), 1, 128, K, L) == [(0, 128)]  # needs whole rows


def test_split_keys_give_the_same_table_for_every_option():
    model = tiny("LN")
    d, tok = side_saes(model, 1, "resid_pre"), tokens(model, 2, 12)
    for opts in (FRAOptions(top_m=3), FRAOptions(top_m=None, attention_weighted=True), FRAOptions(top_n=20)):
        base = compute_fra(model, tok, 1, None, d, None, opts)
        small = compute_fra(model, tok, 1, None, d, None, dataclasses.replace(opts, chunk_elements=40))
        assert base.n_entries and small.n_entries == base.n_entries
        assert torch.allclose(small.kept_sum, base.kept_sum, atol=1e-6)
        if opts.top_n is not None:  # top-N rows come in no fixed order: compare as sets
            assert _table(small).keys() == _table(base).keys()
            continue
        for f in ENTRY_FIELDS[:-1]:
            assert torch.equal(small.entries[f], base.entries[f]), f  # same rows in the same order
        assert torch.allclose(small.entries["value"], base.entries["value"], atol=1e-6)

"""Integer-key aggregation: codec round trip, merge == one-shot reduce, top-k per key vs a sort."""

import pytest
import torch

from fra_core.accumulate.stats import entry_stats, merge, top_per_key
from fra_core.fra.aggregate import PairCodec, reduce_by_key


def test_codec_round_trip_and_overflow():
    codec = PairCodec(n_heads=12, n_sources=11, d_max=49_152)
    g = torch.Generator().manual_seed(0)
    parts = {"head": torch.randint(0, 12, (1000,), generator=g), "q_src": torch.randint(0, 11, (1000,), generator=g),
             "q_feat": torch.randint(0, 49_152, (1000,), generator=g),
             "k_src": torch.randint(0, 11, (1000,), generator=g), "k_feat": torch.randint(0, 49_152, (1000,), generator=g)}
    back = codec.decode(codec.encode(*parts.values()))
    for name, t in parts.items():
        assert torch.equal(back[name], t)
    with pytest.raises(ValueError, match="overflow"):
        PairCodec(n_heads=1000, n_sources=1000, d_max=10**6)


def test_merge_of_parts_equals_one_reduce():
    g = torch.Generator().manual_seed(1)
    key = torch.randint(0, 50, (3000,), generator=g)
    value = torch.randn(3000, generator=g)
    diag = torch.rand(3000, generator=g) < 0.2
    whole = reduce_by_key(key, entry_stats(value, diag))
    parts = [reduce_by_key(key[i:i + 700], entry_stats(value[i:i + 700], diag[i:i + 700])) for i in range(0, 3000, 700)]
    merged = merge(parts)
    for col, t in whole.items():
        torch.testing.assert_close(merged[col], t, rtol=1e-12, atol=1e-12)
    assert int(whole["n"].sum()) == 3000 and int(whole["diag_n"].sum()) == int(diag.sum())


def test_top_per_key_matches_sort():
    g = torch.Generator().manual_seed(2)
    key = torch.randint(0, 40, (2000,), generator=g)
    score = torch.rand(2000, generator=g)
    got = sorted(top_per_key(key, score, 3).tolist())
    expected = []
    for k in key.unique().tolist():
        rows = (key == k).nonzero().squeeze(1).tolist()
        expected += sorted(rows, key=lambda r: (-float(score[r]), r))[:3]
    assert got == sorted(expected)
    assert top_per_key(key, score, 0).numel() == 0


def test_effective_k_uses_topk_bound_only():
    from fra_core.accumulate.topm import effective_k
    from tests.fra_core.fra.helpers_fra import make_sae

    topk = make_sae(16, "blocks.1.ln1.hook_normalized", 32, kind="topk", k=3)
    relu = make_sae(16, "blocks.1.ln1.hook_normalized", 32)
    assert effective_k(64, [topk], [topk]) == 3
    assert effective_k(2, [topk], [topk]) == 2
    assert effective_k(64, [topk, topk], [topk]) == 6
    assert effective_k(64, [topk], [relu]) == 64


@pytest.mark.parametrize("k", [1, 3, 9, 40])
def test_top_per_key_ties_small_groups_and_both_paths(k):
    """The scatter rounds (k ≤ 8) and the sort (k > 8) pick the same rows as a plain sort, ties going to
    the earlier row; groups with ≤ k rows keep every row."""
    g = torch.Generator().manual_seed(k)
    key = torch.cat([torch.randint(0, 30, (1500,), generator=g), torch.arange(100, 160)])  # 60 groups of one
    score = torch.randint(0, 5, (len(key),), generator=g).float()  # many ties
    got = sorted(top_per_key(key, score, k).tolist())
    expected = []
    for v in key.unique().tolist():
        rows = (key == v).nonzero().squeeze(1).tolist()
        expected += sorted(rows, key=lambda r: (-float(score[r]), r))[:k]
    assert got == sorted(expected)

"""FeatureTokenCounter: the shard's top tokens per (source, feature, kind) equal a brute-force count."""

from collections import Counter

import pytest
import torch

from fra_core.accumulate.tokens import NO_TOKEN, TOP_TOKENS, FeatureTokenCounter


@pytest.mark.parametrize("n_batches", [1, 8, 20])  # one batch; exactly one fold; folds and a rest
def test_top_tokens_match_a_brute_force_count(n_batches):
    g = torch.Generator().manual_seed(0)
    counter, brute = FeatureTokenCounter(d_max=7, d_vocab=5), Counter()
    for _ in range(n_batches):
        n = 30
        src, feat = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 7, (n,), generator=g)
        tok, prev = torch.randint(0, 5, (n,), generator=g), torch.randint(-1, 5, (n,), generator=g)
        counter.add(src, feat, tok, prev)
        for s, f, t, p in zip(src.tolist(), feat.tolist(), tok.tolist(), prev.tolist()):
            brute[(s, f, "tok", f"t{t}")] += 1
            brute[(s, f, "prev", f"t{p}" if p >= 0 else NO_TOKEN)] += 1
    table = counter.table(lambda ids: [f"t{i}" for i in ids]).to_pylist()
    got = {(r["src"], r["feature"], r["kind"], r["token"]): r["n"] for r in table}
    assert len(got) == len(table)  # one row per (source, feature, kind, token)
    groups = {k[:3] for k in brute}
    assert {k[:3] for k in got} == groups
    for group in groups:  # ties may go either way: compare counts, and each kept token's own count
        kept = [(k[3], n) for k, n in got.items() if k[:3] == group]
        every = sorted((n for k, n in brute.items() if k[:3] == group), reverse=True)
        assert [n for _, n in kept] == every[:TOP_TOKENS]  # most frequent first
        assert all(brute[(*group, token)] == n for token, n in kept)


def test_empty_counter_gives_an_empty_table():
    assert FeatureTokenCounter(4, 10).table(lambda ids: []).num_rows == 0

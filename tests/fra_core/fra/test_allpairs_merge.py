"""Reducing co-activation tables in one pass (`merge_many`) against the generic sort-and-scatter reduction."""

import pytest
import torch

from fra_core.fra.allpairs import CO_COLUMNS
from fra_core.fra.allpairs_merge import merge_many, merge_sorted, reduce_tables


def random_tables(g: torch.Generator, n_tables: int, key_span: int, raw: bool) -> list[dict]:
    """Sorted distinct-key tables with shared, new and no keys; few extreme values (many ties)."""
    tables = []
    for _ in range(n_tables):
        size = int(torch.randint(0, key_span // 2 + 2, (1,), generator=g))
        key = torch.unique(torch.randint(0, key_span, (size,), generator=g))
        N = len(key)
        t = {"key": key, "n": torch.randint(1, 4, (N,), generator=g), "dn": torch.randint(0, 2, (N,), generator=g)}
        for c in ("s", "abs", "ds", "dabs"):
            t[c] = torch.randn(N, generator=g, dtype=torch.float64)
        if raw:  # raw values: one tensor for Σx and Σ|x| (`sample_table`)
            t["abs"], t["dabs"] = t["s"], t["ds"]
        for c in ("mx", "mn"):
            t[c] = torch.randint(0, 3, (N,), generator=g).double()
            t[c + "_c"] = torch.randint(0, 1000, (N,), generator=g)
        tables.append(t)
    return tables


@pytest.mark.parametrize("n_col_ids,block", [(1, 1 << 24), (7, 5), (7, 64), (61, 3), (200, 1 << 24)])
def test_merge_many_equals_the_generic_reduction(n_col_ids, block):
    """Every column identical to the sort-and-scatter reduction: keys, counts, extremes and their cells
    (ties: the earliest table's cell), and the sums too, since both add in table order (0 + a + b … and a
    + b …: randn has no −0.0); blocks smaller than a row of the dense space, and larger; aliases kept."""
    g = torch.Generator().manual_seed(n_col_ids * 100 + block)
    for trial in range(25):
        tables = random_tables(g, int(torch.randint(1, 7, (1,), generator=g)), 300, raw=bool(trial % 2))
        want, got = reduce_tables(tables, unique_keys=False), merge_many(tables, n_col_ids, block=block)
        if want is None:
            assert len(got["key"]) == 0
            continue
        for c in CO_COLUMNS:
            assert torch.equal(got[c], want[c]), (trial, c)
        assert bool((got["key"][1:] > got["key"][:-1]).all())
        if trial % 2:
            assert got["abs"] is got["s"] and got["dabs"] is got["ds"], trial


def test_two_tables_merge_as_the_sorted_merge_does():
    """merge_many of two tables == merge_sorted bit for bit (same order of additions and tie rule)."""
    g = torch.Generator().manual_seed(1)
    for trial in range(20):
        a, b = random_tables(g, 2, 120, raw=False)
        want, got = merge_sorted(a, b), merge_many([a, b], 11, block=40)
        for c in CO_COLUMNS:
            assert torch.equal(got[c], want[c]), (trial, c)


def test_later_tables_win_only_when_strictly_better():
    """A key in three tables: sums are (a + b) + c, the max cell is the first table attaining the max."""
    key = torch.tensor([5])

    def table(s, mx, cell):
        one = torch.ones(1, dtype=torch.long)
        return {"key": key, "n": one, "dn": one * 0, "s": torch.tensor([s], dtype=torch.float64),
                "abs": torch.tensor([abs(s)], dtype=torch.float64), "ds": torch.zeros(1, dtype=torch.float64),
                "dabs": torch.zeros(1, dtype=torch.float64), "mx": torch.tensor([mx], dtype=torch.float64),
                "mn": torch.tensor([mx], dtype=torch.float64), "mx_c": torch.tensor([cell]),
                "mn_c": torch.tensor([cell])}

    got = merge_many([table(0.1, 1.0, 10), table(0.2, 2.0, 20), table(0.3, 2.0, 30)], 4)
    assert got["s"].item() == (0.1 + 0.2) + 0.3 and int(got["n"]) == 3
    assert got["mx"].item() == 2.0 and int(got["mx_c"]) == 20  # tie with the third: the second's cell
    assert got["mn"].item() == 1.0 and int(got["mn_c"]) == 10


def test_reduce_tables_takes_the_one_pass_merge_for_many_tables(monkeypatch):
    """With the key's column span given, more than two sorted tables go through merge_many, not the tree."""
    from fra_core.fra import allpairs_merge

    calls = []
    monkeypatch.setattr(allpairs_merge, "merge_sorted", lambda a, b: calls.append(1) or merge_sorted(a, b))
    tables = random_tables(torch.Generator().manual_seed(2), 4, 80, raw=True)
    want = reduce_tables(tables, unique_keys=False)
    got = reduce_tables(tables, unique_keys=True, n_col_ids=9)
    assert not calls
    for c in CO_COLUMNS:
        assert torch.equal(got[c], want[c]), c
    reduce_tables(tables, unique_keys=True)  # without the span: the pairwise tree
    assert calls

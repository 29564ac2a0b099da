"""Compaction of co-activation rows in numpy: G by fixed-shape BLAS tiles (fra_core.contracts.row_strengths) is
each pair's own (the same bits whatever other pairs are computed with it), the merge equals the per-pair
enumeration of the rows (store.coact_merge), and the per-head totals equal a scan of the view pair_rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fra_core import contracts
from store import ingest_job_shards
from store.coact_merge import merge_rows
from tests.store.coact_jobs import dot, make_coact_job


def _vectors(rng, n: int, heads: int, d: int) -> np.ndarray:
    """[n, heads, d] rows of unequal scales (so G's rounding is not uniform)."""
    return rng.normal(size=(n, heads, d)) * rng.gamma(1.0, 1.0, (n, 1, 1))


@pytest.mark.parametrize("d", [8, 64])
def test_g_is_the_dot_product_of_the_rows(d):
    rng = np.random.default_rng(d)
    qv, kv = _vectors(rng, 70, 3, d), _vectors(rng, 90, 3, d)
    qi, ki = rng.integers(0, 70, 2_000), rng.integers(0, 90, 2_000)
    G = contracts.row_strengths(qv, qi, kv, ki)
    want = np.array([[dot(qv[q, h], kv[k, h]) for h in range(3)] for q, k in zip(qi, ki)])
    assert G.shape == (2_000, 3)
    np.testing.assert_allclose(G, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    one = contracts.row_strengths(qv[:, 1], qi, kv[:, 1], ki)  # [n_features, d_head]: one head
    assert one.shape == (2_000,) and np.array_equal(one, G[:, 1])
    assert contracts.row_strengths(qv, qi[:0], kv, ki[:0]).shape == (0, 3)


@pytest.mark.parametrize("d", [8, 64])
def test_a_pairs_g_does_not_depend_on_the_other_pairs(d):
    """Bit for bit: a few pairs alone, in another order, against vector tables that hold more features in
    other positions (a later compaction's), equal the same pairs inside a dense full set (other tiles)."""
    rng = np.random.default_rng(100 + d)
    nq, nk = 75, 300  # not multiples of the tile: edge positions of the full set's tiles are exercised
    qv, kv = _vectors(rng, nq, 4, d), _vectors(rng, nk, 4, d)
    codes = np.sort(rng.choice(nq * nk, nq * nk // 2, replace=False))
    qi, ki = codes // nk, codes % nk
    full = contracts.row_strengths(qv, qi, kv, ki)
    for n in (1, 3, 40, 333):  # unsorted, sparse: tiles of just their keys
        some = rng.choice(len(codes), n, replace=False)
        assert np.array_equal(contracts.row_strengths(qv, qi[some], kv, ki[some]), full[some]), n
    # vector tables with more features, shuffled: each pair's vectors sit elsewhere
    q_perm, k_perm = rng.permutation(nq + 13), rng.permutation(nk + 57)
    qv2, kv2 = _vectors(rng, nq + 13, 4, d), _vectors(rng, nk + 57, 4, d)
    qv2[q_perm[:nq]], kv2[k_perm[:nk]] = qv, kv
    assert np.array_equal(contracts.row_strengths(qv2, q_perm[qi], kv2, k_perm[ki]), full)
    half = rng.choice(len(codes), len(codes) // 3, replace=False)
    assert np.array_equal(contracts.row_strengths(qv2, q_perm[qi[half]], kv2, k_perm[ki[half]]), full[half])
    for h in range(4):  # one head at a time (the shard reference expansion's call) equals the stacked call
        assert np.array_equal(contracts.row_strengths(qv[:, h], qi[some], kv[:, h], ki[some]), full[some, h])


def _rows(rng, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """n co-activation rows over few pairs, products and cells that tie, NaN nowhere."""
    key = rng.integers(0, n // 3, n)
    cols = {"layer": np.zeros(n, np.uint16), "q_src": np.zeros(n, np.uint16), "q_feat": (key // 7).astype(np.uint32),
            "k_src": np.zeros(n, np.uint16), "k_feat": (key % 7).astype(np.uint32),
            "n": rng.integers(1, 5, n).astype(np.uint64), "s": rng.random(n), "abs": rng.random(n),
            "diag_n": rng.integers(0, 2, n).astype(np.uint64), "diag_s": rng.random(n), "diag_abs": rng.random(n)}
    for side in ("mx", "mn"):
        cols[side] = rng.choice([0.25, 0.5, 1.0], n)
        cols[f"{side}_sample"] = rng.integers(0, 3, n).astype(np.uint64)
        cols[f"{side}_q"] = rng.integers(0, 3, n).astype(np.uint16)
        cols[f"{side}_k"] = rng.integers(0, 3, n).astype(np.uint16)
    return cols, key.astype(np.int64)


def test_merge_equals_the_enumeration_per_pair():
    rng = np.random.default_rng(4)
    cols, key = _rows(rng, 3_000)
    got, first = merge_rows(cols, key)
    df = pd.DataFrame(cols).assign(key=key, row=np.arange(len(key)))
    pairs = np.unique(key)
    assert len(first) == len(pairs) and np.array_equal(np.sort(key[first]), key[first])
    for name in ("n", "diag_n"):
        np.testing.assert_array_equal(got[name], df.groupby("key")[name].sum().to_numpy())
    for name in ("s", "abs", "diag_s", "diag_abs"):
        np.testing.assert_allclose(got[name], df.groupby("key")[name].sum().to_numpy(), rtol=1e-15)
    for side, largest in (("mx", True), ("mn", False)):
        cell = [f"{side}_sample", f"{side}_q", f"{side}_k"]
        best = df.sort_values(["key", side] + cell, ascending=[True, not largest, True, True, True])
        best = best.groupby("key").first()
        for name in [side] + cell:
            np.testing.assert_array_equal(got[name], best[name].to_numpy(), err_msg=name)
    np.testing.assert_array_equal(first, df.groupby("key")["row"].min().to_numpy())  # the earliest row
    sizes = df.groupby("key").size()
    assert {1, 2, 3} <= set(sizes) and (df.groupby("key")["mx"].transform("max") == df["mx"]).sum() > len(pairs)


@pytest.mark.parametrize("n_rows", [2, 3])
def test_merge_leaves_nan_out_unless_all_are(n_rows):
    """As SQL orders NaN after every number: the other value wins; all NaN: NaN at the earliest cell."""
    rng = np.random.default_rng(7)
    cols, _ = _rows(rng, 3 * n_rows)
    key = np.repeat(np.arange(3, dtype=np.int64), n_rows)
    cols["mx"][:] = cols["mn"][:] = np.nan
    cols["mx"][n_rows - 1], cols["mn"][n_rows - 1] = 0.5, 0.25  # pair 0: one number among NaN
    cols["mx"][n_rows:2 * n_rows] = cols["mn"][n_rows:2 * n_rows] = 1.0  # pair 1: numbers; pair 2: all NaN
    got, _ = merge_rows(cols, key)
    assert got["mx"][0] == 0.5 and got["mn"][0] == 0.25 and got["mx"][1] == 1.0 and np.isnan(got["mx"][2])
    cells = np.stack([cols[c][2 * n_rows:] for c in ("mx_sample", "mx_q", "mx_k")], axis=1).tolist()
    assert [got[c][2] for c in ("mx_sample", "mx_q", "mx_k")] == min(cells)


def test_merge_keeps_rows_that_are_each_one_pair():
    rng = np.random.default_rng(5)
    cols, _ = _rows(rng, 50)
    key = np.arange(50, dtype=np.int64)
    got, first = merge_rows(cols, key)
    assert np.array_equal(first, key) and all(np.array_equal(got[c], cols[c]) for c in cols)
    shuffled = rng.permutation(50)
    got, first = merge_rows({c: v[shuffled] for c, v in cols.items()}, key[shuffled])
    assert np.array_equal(shuffled[first], key) and all(np.array_equal(got[c], cols[c]) for c in cols)


SCAN = """SELECT layer, head, count(*) AS unique_pairs, count_if(q_src = k_src AND q_feat = k_feat) AS self_pairs,
                 sum(n) AS occurrences, sum(diag_n) AS diagonal_occurrences, sum(sum) AS sum,
                 sum(abs_sum) AS abs_sum, max(greatest(abs(max), abs(min))) AS max_abs
          FROM pair_rows WHERE run = ? GROUP BY layer, head ORDER BY layer, head"""


def test_summary_equals_a_scan_of_the_view(tmp_path, store):
    """After a first and a second compaction (pairs merged, G kept and new): pair_summary as the view scan."""
    job, *_ = make_coact_job(tmp_path / "jobs", "coact-summary", n_shards=3, seed=11)
    last = contracts.shard_path(job, 2, "manifest")
    last.rename(last.with_suffix(".hidden"))
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
    last.with_suffix(".hidden").rename(last)
    with store.write() as con:
        assert ingest_job_shards(con, job)["shards"] == 1
        got = con.execute("SELECT layer, head, unique_pairs, self_pairs, occurrences, diagonal_occurrences, sum, "
                          "abs_sum, max_abs FROM pair_summary WHERE run = ? ORDER BY layer, head", [run]).df()
        want = con.execute(SCAN, [run]).df()
        n_pairs = con.execute("SELECT n_pairs FROM runs WHERE id = ?", [run]).fetchall()[0][0]
    assert len(got) == len(want) > 0 and n_pairs == want["unique_pairs"].sum()
    for col in ("layer", "head", "unique_pairs", "self_pairs", "occurrences", "diagonal_occurrences"):
        np.testing.assert_array_equal(got[col].to_numpy(np.int64), want[col].to_numpy(np.int64), err_msg=col)
    np.testing.assert_array_equal(got["max_abs"].to_numpy(), want["max_abs"].to_numpy(np.float64))
    for col in ("sum", "abs_sum"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-12, err_msg=col)


@pytest.mark.parametrize("big", [False, True])
def test_rows_find_their_vectors_or_are_refused(big):
    from store.coact_g import MAX_TABLE, _index
    from store.errors import StoreError

    offset = MAX_TABLE if big else 0  # feature indices too large for a table: searchsorted
    src = np.array([0, 0, 1, 1, 2], dtype=np.uint16)
    feat = np.array([3, 7, 0, 5, 9], dtype=np.uint32) + offset
    codes = contracts.feature_code(src, feat)
    rng = np.random.default_rng(6)
    rows = rng.integers(0, 5, 200)
    np.testing.assert_array_equal(_index(codes, src[rows], feat[rows], "query"), rows)
    with pytest.raises(StoreError, match=rf"query \(src, feature\) = \(1, {4 + offset}\) lacks a proj vector"):
        _index(codes, np.r_[src[rows], 1].astype(np.uint16), np.r_[feat[rows], 4 + offset].astype(np.uint32), "query")

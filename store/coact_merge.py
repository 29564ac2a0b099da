"""Co-activation rows merged per pair in numpy (compaction of all-pair runs; no database here).

A layer's compacted rows and its staged shard rows (fra_core.contracts.COACT_SCHEMA columns) become one row
per pair: counts and sums add (n, s, abs, diag_*), mx keeps the largest product with the earliest
(sample, q, k) cell among equal ones, mn the smallest likewise — whatever order the shards came in, as the
SQL merge did (`min` of the struct (−mx, cell)). Rows are identified by an int64 key that sorts as the pair
(layer, q_src, q_feat, k_src, k_feat) does; the result is in key order.
"""

from __future__ import annotations

import numpy as np

SUMS = ("n", "s", "abs", "diag_n", "diag_s", "diag_abs")
EXTREMES = (("mx", np.fmax, ("mx_sample", "mx_q", "mx_k")), ("mn", np.fmin, ("mn_sample", "mn_q", "mn_k")))


def merge_rows(cols: dict[str, np.ndarray], key: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(the merged columns [n_pairs] in key order, first [n_pairs]: the index in `cols` of each pair's
    first row). cols: COACT_SCHEMA columns [n_rows]; key int64 [n_rows]. Among rows of one pair the
    earlier ones are added first; a pair's other columns (layer, q_src, …) are its first row's."""
    n = len(key)
    if n == 0 or bool(np.all(key[1:] > key[:-1])):  # sorted, each pair once: nothing to merge
        return dict(cols), np.arange(n)
    order = np.argsort(key, kind="stable")
    k = key[order]
    new_pair = np.r_[True, k[1:] != k[:-1]]
    starts = np.flatnonzero(new_pair)
    first = order[starts]
    if len(starts) == n:
        return {c: v[order] for c, v in cols.items()}, first
    summed = {c for c in SUMS} | {c for value, _, cell in EXTREMES for c in (value, *cell)}
    out = {c: v[first] for c, v in cols.items() if c not in summed}  # the pair's key columns
    pair = np.cumsum(new_pair) - 1  # the pair of each sorted row
    row_pair = np.empty(n, dtype=np.int64)
    row_pair[order] = pair
    for c in SUMS:  # in row order: each pair's rows are added first to last, as along the sorted rows
        out[c] = _sum_by(cols[c], row_pair, len(starts), order, starts)
    sizes = np.diff(np.r_[starts, n])
    for value, best, cell in EXTREMES:
        win = _winners(cols[value], [cols[c] for c in cell], best, order, starts, sizes)
        for c in (value, *cell):
            out[c] = cols[c][win]
    return out, first


def _sum_by(v: np.ndarray, row_pair: np.ndarray, n_pairs: int, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Σ of v per pair, rows added in row order (bincount; integers exactly, while their total stays below
    2**53, else by reduceat over the sorted rows)."""
    if v.dtype.kind == "f" or int(v.sum(dtype=np.uint64)) < 2 ** 53:
        return np.bincount(row_pair, weights=v, minlength=n_pairs).astype(v.dtype)
    return np.add.reduceat(v[order], starts)


def _winners(v: np.ndarray, cell: list[np.ndarray], best, order: np.ndarray, starts: np.ndarray,
             sizes: np.ndarray) -> np.ndarray:
    """Per pair, the row (index into the unsorted rows) of its best value (best = np.fmax: the largest,
    np.fmin: the smallest; NaN only if all are) with the smallest cell (sample, q, k) among equal ones.
    Pairs of one row take it, of two rows a comparison, of more the segmented reductions of `_earliest`."""
    win = order[starts]
    two = np.flatnonzero(sizes == 2)
    a, b = order[starts[two]], order[starts[two] + 1]
    va, vb = v[a], v[b]
    better = (va > vb if best is np.fmax else va < vb) | (np.isnan(vb) & ~np.isnan(va))
    tie = (va == vb) | (np.isnan(va) & np.isnan(vb))
    earlier = np.ones(len(two), dtype=bool)  # a's cell <= b's, compared column by column from the last
    for col in cell[::-1]:
        earlier = (col[a] < col[b]) | ((col[a] == col[b]) & earlier)
    win[two] = np.where(better | (tie & earlier), a, b)
    many = np.flatnonzero(sizes > 2)
    if len(many):
        rows = np.flatnonzero(np.repeat(sizes > 2, sizes))  # sorted positions of their rows
        sub_starts = np.r_[0, np.cumsum(sizes[many])[:-1]]
        sub_pair = np.repeat(np.arange(len(many)), sizes[many])
        vs = v[order[rows]]
        top = best.reduceat(vs, sub_starts)[sub_pair]
        cand = (vs == top) | (np.isnan(vs) & np.isnan(top))
        at = _earliest(cand, [c[order[rows]] for c in cell], sub_pair, sub_starts)
        win[many] = order[rows[at]]
    return win


def _earliest(cand: np.ndarray, cell: list[np.ndarray], pair: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per pair (each has a candidate), the position in the sorted rows of its candidate with the smallest
    cell (sample, q, k), compared column by column."""
    for col in cell:
        low = np.minimum.reduceat(np.where(cand, col, np.iinfo(col.dtype).max), starts)
        cand = cand & (col == low[pair])
    return np.minimum.reduceat(np.where(cand, np.arange(len(cand)), len(cand)), starts)

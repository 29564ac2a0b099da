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
    out = {c: v[first] for c, v in cols.items()}
    for c in SUMS:
        out[c] = np.add.reduceat(cols[c][order], starts)
    pair = np.cumsum(new_pair) - 1  # the pair of each sorted row
    for value, best, cell in EXTREMES:
        v = cols[value][order]
        top = best.reduceat(v, starts)[pair]  # NaN is left out, as SQL orders it last; NaN only if all are
        cand = (v == top) | (np.isnan(v) & np.isnan(top))
        win = order[_earliest(cand, [cols[c][order] for c in cell], pair, starts)]
        for c in (value, *cell):
            out[c] = cols[c][win]
    return out, first


def _earliest(cand: np.ndarray, cell: list[np.ndarray], pair: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per pair (each has a candidate), the position in the sorted rows of its candidate with the smallest
    cell (sample, q, k), compared column by column."""
    for col in cell:
        low = np.minimum.reduceat(np.where(cand, col, np.iinfo(col.dtype).max), starts)
        cand = cand & (col == low[pair])
    return np.minimum.reduceat(np.where(cand, np.arange(len(cand)), len(cand)), starts)

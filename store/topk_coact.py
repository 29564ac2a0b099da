"""The candidate rows of a co-activation run's top-K lists, found in numpy without expanding every head.

A co-activation row r (pair_coact) stands for H rows of `pair_rows`, one per head h of its layer, whose
values are c_h · w_r / d_r up to rounding: c_h = G_h (sum, mean) or |G_h| (abs_sum, mean_abs, max |FRA|) or
1 (count), w_r and d_r per row (s, s − diag_s, abs, n, ...; `_row_terms`). The best of its H values is
therefore (c_max or c_min, by the sign of w_r) · w_r / d_r: two reductions of G per row serve every list.

Why the candidates suffice (desc; asc ranks −value the same way). Let lo_r ≤ (row r's best value) ≤ hi_r
(equal where the value is exact; `_row_terms`), T the K rows of largest lo, t the least lo among them,
and R = T ∪ {r : hi_r > t}. Each row of T has a value ≥ t, so the K-th best value among R's expanded
rows (the list's cut) is ≥ t, while every row outside R has all its values ≤ hi_r ≤ t: none beats the
cut. So the top K of R's expanded rows keep the guarantee of `store.topk` (every row strictly beyond
the cut is listed). A layer with at most K ranked rows gives all of them; ranking a superset of R (the
union over lists and layers) keeps the argument.

`candidate_rows` returns each list's rows expanded exactly as the view `pair_rows` expands them (migration
0013: sum = G·s, abs_sum = |G|·abs, max/min = float32 of the larger/smaller of G·mx and G·mn, ...), so
`store.topk` ranks them by the same SQL expressions as a scan of the view.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from store.coact_g import g_array
from store.errors import StoreError
from store.sqlparts import METRICS

EPS_DOUBLE = 1e-12  # relative bound on the rounding of two products and a difference (a few ulp), generous
COLUMNS = ("q_src", "q_feat", "k_src", "k_feat", "n", "s", "abs", "mx", "mn", "diag_n", "diag_s", "diag_abs")


def layer_arrays(con, run: int, layer: int, n_heads: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One layer's co-activation rows: ({column: [rows]}, G [rows, n_heads] in pair_coact_heads.idx order).
    G comes as a fixed-size array (DOUBLE[n_heads]): half the conversion time of a list column."""
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    try:
        tbl = con.sql(f"SELECT {cols}, g::DOUBLE[{int(n_heads)}] AS g FROM pair_coact WHERE run = ? AND layer = ?",
                      params=[run, layer]).to_arrow_table()
    except duckdb.Error as exc:  # a list of another length cannot be cast
        raise StoreError(f"run {run} layer {layer}: a pair_coact.g list does not hold {n_heads} values (the "
                         f"layer's heads in pair_coact_heads): {exc}") from exc
    return {c: tbl.column(c).to_numpy() for c in COLUMNS}, g_array(tbl.column("g"), n_heads)


def _term(a: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A row-level term shared by several lists, computed once per layer (kept in `a`)."""
    if name not in a:
        a[name] = {"n_f": lambda: a["n"].astype(np.float64),
                   "d_f": lambda: _term(a, "n_f") - a["diag_n"].astype(np.float64),
                   "s_nd": lambda: a["s"] - a["diag_s"], "abs_nd": lambda: a["abs"] - a["diag_abs"],
                   "abs_size": lambda: np.abs(a["abs"]) + np.abs(a["diag_abs"]),
                   "mx_abs": lambda: np.maximum(np.abs(a["mx"]), np.abs(a["mn"]))}[name]()
    return a[name]


def _row_terms(a: dict[str, np.ndarray], metric: str, diagonal: bool):
    """(coefficient kind, w, d or None, rounding bound per row or None) of a list: row r's value for head h
    is c_h · w_r (/ d_r). Exactly so (the rounding of c·w is monotone in c, and so are the division and
    the float32 cast) except for abs_sum / mean_abs without the diagonal, where the view subtracts two
    rounded products: their bound is EPS_DOUBLE · max|c| · (|abs| + |diag_abs|). For sum / mean the view
    subtracts s − diag_s before applying G, as w does here."""
    minus_diag = not diagonal and metric != "max_abs"
    d = _term(a, "d_f" if minus_diag else "n_f")
    if metric == "count":
        return "one", d, None, None
    if metric == "max_abs":
        return "abs", _term(a, "mx_abs"), None, None
    signed = metric in ("sum", "mean")
    if signed:
        w, size = (_term(a, "s_nd") if minus_diag else a["s"]), None
    else:
        w, size = (_term(a, "abs_nd"), _term(a, "abs_size")) if minus_diag else (a["abs"], None)
    return ("signed" if signed else "abs"), w, (d if metric.startswith("mean") else None), size


def list_rows(a: dict[str, np.ndarray], ranges: dict[str, tuple[np.ndarray, np.ndarray]], metric: str,
              diagonal: bool, k: int) -> dict[str, np.ndarray]:
    """{direction: indices of the layer's rows R} (see the module docstring) of the two lists of
    (metric, diagonal); `ranges[kind]` = (c_min, c_max) per row over its heads."""
    if metric not in METRICS:
        raise StoreError(f"unknown metric {metric!r}; choose one of {METRICS}")
    kind, w, d, size = _row_terms(a, metric, diagonal)
    cmin, cmax = ranges[kind]
    pos = w >= 0
    pos = True if pos.all() else pos  # True: every row takes the same end of the range (no where)
    valid = None if d is None else d != 0  # nullif(n, 0): no value
    valid = None if valid is None or valid.all() else valid
    err = None if size is None else np.maximum(np.abs(cmin), np.abs(cmax)) * size * EPS_DOUBLE
    if err is not None and d is not None:
        err /= d if valid is None else np.where(valid, d, 1.0)
    out = {}
    # asc ranks −value as desc ranks value; −value = (−c)·w / d exactly (rounding is symmetric in sign), so
    # the negated ends of the range (`coefficient_ranges`, computed once per layer) save a pass per list
    for direction, top, bottom in (("desc", cmax, cmin), ("asc", *ranges["-" + kind])):
        best = (top if pos is True else np.where(pos, top, bottom)) * w  # the row's largest / −smallest value
        if metric == "max_abs":
            best = best.astype(np.float32).astype(np.float64)  # the view's ::FLOAT (monotone: still exact)
        if d is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                best /= d
        out[direction] = _select(best, err, valid, k)
    return out


def _select(best: np.ndarray, err: np.ndarray | None, valid: np.ndarray | None, k: int) -> np.ndarray:
    """R = T ∪ {hi > t} for ranked values `best` (larger is better) ± `err`, over the `valid` rows."""
    idx = None
    if valid is not None:
        idx = np.flatnonzero(valid)
        best, err = best[idx], (None if err is None else err[idx])
    if len(best) <= k:
        return np.arange(len(best)) if idx is None else idx
    lo = best if err is None else best - err
    t, at_least = _kth_largest(lo, k)  # T: the rows with lo > t, then rows with lo == t up to K
    above = at_least[lo[at_least] > t]
    chosen = np.concatenate([above, at_least[lo[at_least] == t][: k - len(above)]])
    if err is not None:
        chosen = np.union1d(chosen, np.flatnonzero(best + err > t))
    return chosen if idx is None else idx[chosen]


def _kth_largest(x: np.ndarray, k: int, stride: int = 8) -> tuple[float, np.ndarray]:
    """(t: the k-th largest value of x (k <= len(x)), the indices of x >= t, ascending). The k-th largest of
    every `stride`-th value is a lower bound, so the values at or above it hold the answer: one pass over x
    and a partition of a few k."""
    if len(x) // stride >= k:
        sub = x[::stride]
        cand = np.flatnonzero(x >= np.partition(sub, len(sub) - k)[len(sub) - k])
    else:
        cand = np.arange(len(x))
    v = x[cand]
    t = float(np.partition(v, len(v) - k)[len(v) - k])
    return t, cand[v >= t]


def coefficient_ranges(G: np.ndarray, block: int = 1 << 14) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per row, the range of each coefficient kind over its heads: G, |G| and the constant 1, and (key "-kind") the
    negated range (−c_min, −c_max)."""
    gmin, gmax, amin = (np.empty(len(G)) for _ in range(3))
    for lo in range(0, len(G), block):  # a transposed block at a time: reductions over contiguous rows
        part = np.ascontiguousarray(G[lo:lo + block].T)
        gmin[lo:lo + block], gmax[lo:lo + block] = np.minimum.reduce(part), np.maximum.reduce(part)
        amin[lo:lo + block] = np.minimum.reduce(np.abs(part, out=part))
    one = np.ones(len(G))
    amax = np.maximum(gmax, -gmin)
    out = {"signed": (gmin, gmax), "abs": (amin, amax), "one": (one, one)}
    # negated: (−c_min, −c_max) per kind, the ends `list_rows` ranks its asc lists by
    return {**out, **{"-" + kind: (-lo, -hi) for kind, (lo, hi) in out.items()}}


def expand(run: int, layer: int, heads: list[int], a: dict[str, np.ndarray], G: np.ndarray,
           rows: np.ndarray) -> pa.Table:
    """`rows` of the layer expanded to every head, in pair_stats' columns, as the view `pair_rows` does."""
    H = len(heads)
    g = G[rows].ravel()  # row-major: row 0's heads, then row 1's, ...
    rep = {c: np.repeat(a[c][rows], H) for c in COLUMNS}
    gmx, gmn = g * rep["mx"], g * rep["mn"]
    return pa.table({
        "run": np.full(len(g), run, dtype=np.uint32), "layer": np.full(len(g), layer, dtype=np.uint16),
        "head": np.tile(np.asarray(heads, dtype=np.uint16), len(rows)),
        "q_src": rep["q_src"], "q_feat": rep["q_feat"], "k_src": rep["k_src"], "k_feat": rep["k_feat"],
        "n": rep["n"], "sum": g * rep["s"], "abs_sum": np.abs(g) * rep["abs"],
        "max": np.maximum(gmx, gmn).astype(np.float32), "min": np.minimum(gmx, gmn).astype(np.float32),
        "diag_n": rep["diag_n"], "diag_sum": g * rep["diag_s"], "diag_abs_sum": np.abs(g) * rep["diag_abs"],
        "nd_sum": g * (rep["s"] - rep["diag_s"])})


def candidate_rows(con, run: int, specs: list[tuple[str, bool]], k: int,
                   held: dict[int, tuple[dict[str, np.ndarray], np.ndarray]] | None = None
                   ) -> dict[tuple[str, bool, str], pa.Table]:
    """{(metric, diagonal, direction): its rows R of every co-activation layer of the run, expanded to
    every head (`expand`)} for every (metric, diagonal) of `specs`. held: {layer: `layer_arrays`' result}
    for the layers the caller already holds in memory (compaction: the merged rows and their G), read from
    pair_coact otherwise."""
    out: dict[tuple[str, bool, str], list[pa.Table]] = {}
    layers = con.execute("""SELECT layer, list(head ORDER BY idx) FROM pair_coact_heads WHERE run = ?
                            GROUP BY layer ORDER BY layer""", [run]).fetchall()
    for layer, heads in layers:
        a, G = (held or {}).get(layer) or layer_arrays(con, run, layer, len(heads))
        if not len(G):
            continue
        ranges = coefficient_ranges(G)
        for metric, diagonal in specs:
            for direction, rows in list_rows(a, ranges, metric, diagonal, k).items():
                out.setdefault((metric, diagonal, direction), []).append(expand(run, layer, list(heads), a, G, rows))
    return {key: pa.concat_tables(tables) for key, tables in out.items()}

"""Each co-activation row's per-head factor G, computed by compaction in numpy (no torch in the store), and the
per-head totals of rows with their G.

For pair (f, g) of layer L and head h, G_h[f, g] = q_f[h] · k_g[h] (pair_proj: side 'q' U_f[h], side 'k'
V_g[h] / attn_scale; fra_core.contracts). Compaction stores, per pair_coact row, the list of its heads' G in
pair_coact_heads.idx order, so the views expand a row by a list lookup.

Why not in SQL: joining each row with the two features' stacked vectors [head_index, d_head] carries
2 · H · d_head doubles per row through the join (≈ 12 KB per row at GPT-2 shape: 3.2 M rows took 33 s and
22 GB), while here the vectors stay in two arrays [n_features, head_index, d_head] and the rows only carry
indices: G = Σ_d Q[qi, h, d] · K[ki, h, d] by fixed-shape tiles (`contracts.row_strengths`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from fra_core import contracts
from store.errors import StoreError


def layer_vectors(con, run: int, layer: int, side: str, heads: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(codes [n_features] sorted: src << 32 | feature, vectors [n_features, head_index, d_head] float64)
    of one side of a layer, heads in the given order; a feature lacking some head's vector is left out
    (its rows are refused by `layer_index`)."""
    tbl = con.sql("""SELECT src, feature, head, vec FROM pair_proj
                     WHERE run = ? AND layer = ? AND side = ? AND list_contains(?, head)""",
                  params=[run, layer, side, heads]).to_arrow_table()
    code = contracts.feature_code(tbl.column("src").to_numpy(), tbl.column("feature").to_numpy())
    head_at = np.full(max(heads, default=0) + 1, -1)
    head_at[heads] = np.arange(len(heads))
    order = np.lexsort((head_at[tbl.column("head").to_numpy()], code))  # by feature, then the heads' order
    code = code[order]
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]) if len(code) else np.zeros(0, dtype=np.int64)
    whole = np.diff(np.r_[starts, len(code)]) == len(heads)  # (run, layer, head, side, feature) is a key
    vecs = tbl.column("vec").combine_chunks()
    lengths = np.diff(vecs.offsets.to_numpy()) if len(vecs) else np.zeros(0, dtype=np.int64)
    d = int(lengths[0]) if len(lengths) else 0
    if (lengths != d).any():
        raise StoreError(f"run {run} layer {layer} side {side!r}: projected rows of unequal length "
                         f"({int(lengths.min())} to {int(lengths.max())} values)")
    flat = vecs.flatten().to_numpy(zero_copy_only=False).reshape(len(vecs), d)
    rows = order[(starts[whole][:, None] + np.arange(len(heads))[None, :]).ravel()]
    return code[starts[whole]], flat[rows].reshape(int(whole.sum()), len(heads), d)


def _index(codes: np.ndarray, src: np.ndarray, feature: np.ndarray, what: str) -> np.ndarray:
    """Each row's position (int64) in the sorted `codes` of (src, feature): by a table per source indexed by
    feature (searchsorted where features are too large for one); refuses a row whose code is missing."""
    code_src, code_feat = (codes >> np.uint64(32)).astype(np.int64), (codes & np.uint64(0xFFFFFFFF)).astype(np.int64)
    if len(codes) == 0 or code_feat.max() >= MAX_TABLE:
        at, missing = contracts.find_codes(codes, contracts.feature_code(src, feature))
        at = np.where(missing, -1, at)
    else:
        at = np.full(len(feature), -1, dtype=np.int64)
        one = src.min() == src.max() if len(src) else True
        for s in np.unique(src):
            rows = slice(None) if one else src == s
            mine = np.flatnonzero(code_src == int(s))
            table = np.full(int(code_feat[mine].max(initial=-1)) + 2, -1, dtype=np.int64)  # last: missing
            table[code_feat[mine]] = mine
            at[rows] = table[np.minimum(feature[rows].astype(np.int64), len(table) - 1)]
    if (at < 0).any():
        bad = int(np.argmax(at < 0))
        raise StoreError(f"co-activation row with {what} {contracts.describe_code((int(src[bad]) << 32) | int(feature[bad]))} "
                         "lacks a proj vector of some head of its layer, so its per-head statistics cannot be computed")
    return at


MAX_TABLE = 1 << 22  # largest feature index looked up by a table (4 M entries: 32 MB)


def layer_index(con, run: int, layer: int, heads: list[int], cols: dict[str, np.ndarray]):
    """(Q, qi, K, ki) of co-activation rows of one layer: the layer's vectors [n_features, head_index, d_head]
    of each side (heads in the given order) and each row's position in them (int64; sorted like the
    features, so qi · len(K) + ki sorts like the pair). Refuses a row lacking a vector."""
    (qc, Q), (kc, K) = (layer_vectors(con, run, layer, side, heads) for side in ("q", "k"))
    qi = _index(qc, cols["q_src"], cols["q_feat"], f"layer {layer}: query")
    ki = _index(kc, cols["k_src"], cols["k_feat"], f"layer {layer}: key")
    return Q, qi, K, ki


def g_list(G: np.ndarray) -> pa.ListArray:
    """G [rows, head_index] as pair_coact's g column (one list per row)."""
    rows, H = G.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, rows * H + 1, H, dtype=np.int64), pa.int32()),
                                    pa.array(np.ascontiguousarray(G).ravel()))


def g_array(g: pa.ChunkedArray, H: int) -> np.ndarray:
    """pair_coact's g column back as [rows, head_index] (every list has H values)."""
    flat = g.combine_chunks().flatten().to_numpy(zero_copy_only=False) if len(g) else np.zeros(0)
    if flat.size != len(g) * H:
        raise StoreError(f"pair_coact g: {flat.size} values for {len(g)} rows of {H} heads")
    return flat.reshape(len(g), H)


CHUNK = 1 << 13  # rows per pass of the per-head totals: [CHUNK, head_index] temporaries stay in cache (3x faster than 1 << 18)


def head_totals(cols: dict[str, np.ndarray], G: np.ndarray) -> dict[str, np.ndarray]:
    """Per head [head_index] what pair_summary holds of these rows, as a scan of the view `pair_rows` gives
    it: sum Σ G·s, abs_sum Σ |G|·abs, max_abs the largest |max| or |min| of a row (float32 values, as the view
    casts them: |G|·max(|mx|, |mn|) rounded once), and the head-independent counts."""
    H = G.shape[1]
    total, total_abs, top = np.zeros(H), np.zeros(H), np.full(H, -np.inf)
    m = np.maximum(np.abs(cols["mx"]), np.abs(cols["mn"]))
    for r0 in range(0, len(G), CHUNK):
        sl = slice(r0, r0 + CHUNK)
        a = np.abs(G[sl])
        total += cols["s"][sl] @ G[sl]
        total_abs += cols["abs"][sl] @ a
        a *= m[sl, None]
        top = np.maximum(top, a.max(axis=0))
    return {"unique_pairs": len(G), "self_pairs": int(np.count_nonzero(
                (cols["q_src"] == cols["k_src"]) & (cols["q_feat"] == cols["k_feat"]))),
            "occurrences": int(cols["n"].sum()), "diagonal_occurrences": int(cols["diag_n"].sum()),
            "sum": total, "abs_sum": total_abs, "max_abs": top.astype(np.float32).astype(np.float64)}

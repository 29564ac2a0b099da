"""Each co-activation row's per-head factor G, computed by compaction in numpy (no torch in the store).

For pair (f, g) of layer L and head h, G_h[f, g] = q_f[h] · k_g[h] (pair_proj: side 'q' U_f[h], side 'k'
V_g[h] / attn_scale; fra_core.contracts). Compaction stores, per pair_coact row, the list of its heads' G in
pair_coact_heads.idx order, so the views expand a row by a list lookup.

Why not in SQL: joining each row with the two features' stacked vectors [head_index, d_head] carries
2 · H · d_head doubles per row through the join (≈ 12 KB per row at GPT-2 shape: 3.2 M rows took 33 s and
22 GB), while here the vectors stay in two arrays [n_features, head_index, d_head] and the rows only carry
indices: G = Σ_d Q[qi, h, d] · K[ki, h, d], a block of rows at a time (bounded memory).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from fra_core import contracts
from store.errors import StoreError


def layer_vectors(con, run: int, layer: int, side: str, heads: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(codes [n_features] sorted: src << 32 | feature, vectors [n_features, head_index, d_head] float64)
    of one side of a layer, heads in the given order; a feature lacking some head's vector is left out
    (its rows are refused by `fill_g`)."""
    tbl = con.sql("""
        SELECT src, feature, list(vec ORDER BY list_position(?, head)) AS vecs
        FROM pair_proj WHERE run = ? AND layer = ? AND side = ? AND list_contains(?, head)
        GROUP BY src, feature HAVING count(*) = len(?) ORDER BY src, feature""",
                  params=[heads, run, layer, side, heads, heads]).to_arrow_table()
    codes = contracts.feature_code(tbl.column("src").to_numpy(), tbl.column("feature").to_numpy())
    flat = tbl.column("vecs").combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False)
    n, H = len(codes), len(heads)
    d = flat.size // max(1, n * H)
    if flat.size != n * H * d:
        raise StoreError(f"run {run} layer {layer} side {side!r}: projected rows of unequal length "
                         f"({flat.size} values for {n} features × {H} heads)")
    return codes, flat.reshape(n, H, d)


def _index(codes: np.ndarray, want: np.ndarray, what: str) -> np.ndarray:
    at, missing = contracts.find_codes(codes, want)
    if missing.any():
        raise StoreError(f"co-activation row with {what} {contracts.describe_code(want[np.argmax(missing)])} lacks "
                         "a proj vector of some head of its layer, so its per-head statistics cannot be computed")
    return at


def fill_g(con, run: int, table: str) -> int:
    """Compute G for the rows of `table` (pair_coact's columns) whose g is NULL; returns how many.

    Rows are matched back by rowid: the result goes into the temp table `_g_new(rid, g)` for the caller
    to join (`coalesce(m.g, n.g)`)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _g_new (rid BIGINT, g DOUBLE[])")
    heads = con.execute("""SELECT layer, list(head ORDER BY idx) FROM pair_coact_heads WHERE run = ?
                           GROUP BY layer ORDER BY layer""", [run]).fetchall()
    done = 0
    for layer, hs in heads:
        rows = con.execute(f"""SELECT rowid AS rid, q_src, q_feat, k_src, k_feat FROM {table}
                               WHERE layer = ? AND g IS NULL""", [layer]).fetchnumpy()
        if len(rows["rid"]) == 0:
            continue
        (qc, Q), (kc, K) = (layer_vectors(con, run, layer, s, list(hs)) for s in ("q", "k"))
        qi = _index(qc, contracts.feature_code(rows["q_src"], rows["q_feat"]), f"layer {layer}: query")
        ki = _index(kc, contracts.feature_code(rows["k_src"], rows["k_feat"]), f"layer {layer}: key")
        G = contracts.row_strengths(Q, qi, K, ki)  # [rows, head_index]
        g = pa.ListArray.from_arrays(np.arange(0, G.size + 1, len(hs), dtype=np.int32), pa.array(G.ravel()))
        new = pa.table({"rid": pa.array(np.asarray(rows["rid"], dtype=np.int64)), "g": g})
        con.register("_g_arrow", new)
        try:
            con.execute("INSERT INTO _g_new SELECT rid, g FROM _g_arrow")
        finally:
            con.unregister("_g_arrow")
        done += len(qi)
    return done

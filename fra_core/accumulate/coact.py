"""An all-pair shard's head-independent co-activation table (`coact`) and its heads' projected rows (`proj`):
building them from the shard's reduced table, expanding them into per-head pairs, pruning rare pairs.

With σ frozen and SAE activations ã ≥ 0, the (f, g) term of cell (i, j) of head h (no attention weighting,
no rotary) is x(i, j, f, g) · G_h[f, g] with x = ã_if · κ_jg independent of the head and

    G_h[f, g] = Σ_d q.vec[d] · k.vec[d],   q.vec = U_f[h] = d_f W_Q^h,   k.vec = V_g[h] / attn_scale.

So a shard stores the co-activation statistics of x once per layer (COACT_SCHEMA: n, s = Σx, abs = Σ|x|,
mx / mn = max / min x and their cells, the diagonal i = j apart) and each head's q / k vectors of the
features in it (PROJ_SCHEMA); head h's statistics of pair (f, g) follow exactly (`expand_coact`):

    sum = G·s,  abs_sum = |G|·abs,  max = max(G·mx, G·mn),  min = min(G·mx, G·mn)   (float32 of float64)

(G < 0 swaps which extreme of x gives the head's max, and its cell with it). This module is the numpy
float64 reference of that expansion (the store does the same in SQL, `store.schema.pair_rows`); it is
also what the job uses to record the exact mass of pairs it drops (`prune_coact`).

Shapes: coact rows [n_pairs]; proj vec [d_head] per (layer, head, side, src, feature).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fra_core import contracts
from fra_core.errors import FRAStudioError


class CoactError(FRAStudioError):
    """A coact / proj pair of tables that do not fit together (a feature without its projected row, …)."""


def coact_table(layer: int, ids: dict[str, np.ndarray], co: dict[str, np.ndarray], P: int) -> pa.Table:
    """COACT_SCHEMA table of one layer from a shard's reduced co-activation table.

    ids: q_src, q_feat, k_src, k_feat [n_pairs] (run ids); co: `fra_core.fra.allpairs` table columns as numpy
    (n, s, abs, dn, ds, dabs [n_pairs], mx, mn, mx_c, mn_c), cells coded (sample · P + q) · P + k."""
    n = len(co["n"])
    count = lambda c: c.view(np.uint64) if c.dtype == np.int64 else c  # noqa: E731  counts ≥ 0: same bits
    cols = {"layer": np.full(n, layer, dtype=np.uint16), **ids, "n": count(co["n"]), "s": co["s"], "abs": co["abs"],
            "mx": co["mx"], "mn": co["mn"], "diag_n": count(co["dn"]), "diag_s": co["ds"], "diag_abs": co["dabs"]}
    for c, cell in (("mx", co["mx_c"]), ("mn", co["mn_c"])):
        cols[f"{c}_sample"], cols[f"{c}_q"], cols[f"{c}_k"] = split_cells(cell, P)
    return pa.table({f.name: pa.array(np.asarray(cols[f.name], dtype=f.type.to_pandas_dtype()), f.type)
                     for f in contracts.COACT_SCHEMA})


def split_cells(cell: np.ndarray, P: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell codes (sample · P + q) · P + k (int64 ≥ 0) → (sample, q, k); when P is a power of two (every
    usual context length) by shifts and masks straight into COACT_SCHEMA's dtypes (uint64, uint16, uint16)
    with one int64 temporary: 0.11–0.19 → 0.02 s per 3.2 M cells, against 0.13 s for two divmods."""
    if P & (P - 1) == 0 and P <= 1 << 16:
        bits = P.bit_length() - 1
        k = (cell & (P - 1)).astype(np.uint16)
        tmp = np.right_shift(cell, bits)
        q = np.bitwise_and(tmp, P - 1, out=tmp).astype(np.uint16)
        return np.right_shift(cell, 2 * bits, out=tmp).view(np.uint64), q, k
    rest, k = np.divmod(cell, P)
    return (*np.divmod(rest, P), k)


def proj_table(layer: int, heads: list[int], sides: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
               ) -> pa.Table:
    """PROJ_SCHEMA table: sides = {"q": (src [n], feature [n], vec [head_index, n, d_head]), "k": (…)} —
    per head, the q rows then the k rows."""
    parts = {c: [] for c in ("head", "side", "src", "feature")}
    vecs = []
    for hi, h in enumerate(heads):
        for side in ("q", "k"):
            src, feat, vec = sides[side]
            parts["head"].append(np.full(len(src), h)), parts["side"].append(np.full(len(src), side, dtype=object))
            parts["src"].append(src), parts["feature"].append(feat)
            vecs.append(vec[hi])
    n = sum(len(s) for s in parts["src"])
    d = vecs[0].shape[1] if vecs else 0
    flat = np.concatenate(vecs).reshape(-1) if vecs else np.zeros(0)
    vec = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * d), pa.array(flat, pa.float64()))
    cols = {"layer": pa.array(np.full(n, layer, dtype=np.uint16))}
    for c, f in (("head", np.uint16), ("src", np.uint16), ("feature", np.uint32)):
        cols[c] = pa.array(np.concatenate(parts[c]).astype(f) if n else np.zeros(0, f))
    cols["side"] = pa.array(np.concatenate(parts["side"]) if n else [], pa.string())
    cols["vec"] = vec
    return pa.table({f.name: cols[f.name].cast(f.type) for f in contracts.PROJ_SCHEMA})


def _side_rows(proj: pa.Table, layer: int, head: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted codes [n], vec [n, d_head] float64 in that order) of one (layer, head, side) of proj."""
    sel = proj.filter(pc.and_(pc.and_(pc.equal(proj["layer"], layer), pc.equal(proj["head"], head)),
                              pc.equal(proj["side"], side)))
    code = contracts.feature_code(sel["src"].to_numpy(), sel["feature"].to_numpy())
    vals = pc.list_flatten(sel["vec"]).to_numpy()
    d = len(vals) // max(len(code), 1)
    vec = vals.reshape(len(code), d) if len(code) else np.zeros((0, 0))
    order = np.argsort(code, kind="stable")
    return code[order], vec[order]


def _lookup(codes: np.ndarray, want: np.ndarray, what: str) -> np.ndarray:
    at, missing = contracts.find_codes(codes, want)
    if missing.any():
        raise CoactError(f"proj has no {what} row for {contracts.describe_code(want[np.argmax(missing)])} of coact "
                         f"({int(missing.sum())} of {len(want)} rows miss theirs)")
    return at


def strengths(coact: pa.Table, proj: pa.Table, layer: int, head: int) -> np.ndarray:
    """G_h[f, g] = Σ_d q.vec[d] · k.vec[d] (float64) of every coact row of `layer` [n_pairs], head `head`:
    a row-wise dot product, so a pair's G never depends on which other pairs are in the table."""
    rows = coact.filter(pc.equal(coact["layer"], layer)) if coact.num_rows else coact
    qc, qv = _side_rows(proj, layer, head, "q")
    kc, kv = _side_rows(proj, layer, head, "k")
    qi = _lookup(qc, contracts.feature_code(rows["q_src"].to_numpy(), rows["q_feat"].to_numpy()), f"layer {layer} head {head} side q")
    ki = _lookup(kc, contracts.feature_code(rows["k_src"].to_numpy(), rows["k_feat"].to_numpy()), f"layer {layer} head {head} side k")
    return contracts.row_strengths(qv, qi, kv, ki)


def _heads(proj: pa.Table) -> list[tuple[int, int]]:
    if proj.num_rows == 0:
        return []
    lh = np.unique(contracts.feature_code(proj["layer"].to_numpy(), proj["head"].to_numpy()))
    return [(int(c >> np.uint64(32)), int(c & np.uint64(0xFFFFFFFF))) for c in lh]


def expand_coact(coact: pa.Table, proj: pa.Table, examples_per_pair: int) -> tuple[pa.Table, pa.Table]:
    """The per-head (pairs PAIRS_SCHEMA, examples EXAMPLES_SCHEMA) that coact + proj stand for, per (layer,
    head) of proj, each head's rows in coact's order.

    Examples: k = 0 none; k = 1 the one of the max cell / min cell with the larger |value| (ties: the max);
    k ≥ 2 the max cell and, where it is another cell, the min cell (all max rows of a head first)."""
    pairs, examples = [], []
    for layer, head in _heads(proj):
        rows = coact.filter(pc.equal(coact["layer"], layer))
        if rows.num_rows == 0:
            continue
        G = strengths(rows, proj, layer, head)
        c = {name: rows[name].to_numpy() for name in rows.column_names}
        a, b = G * c["mx"], G * c["mn"]
        keycols = {"layer": c["layer"], "head": np.full(len(G), head, dtype=np.uint16), "q_src": c["q_src"],
                   "q_feat": c["q_feat"], "k_src": c["k_src"], "k_feat": c["k_feat"]}
        st = {"n": c["n"], "sum": G * c["s"], "abs_sum": np.abs(G) * c["abs"],
              "max": np.maximum(a, b).astype(np.float32), "min": np.minimum(a, b).astype(np.float32),
              "diag_n": c["diag_n"], "diag_sum": G * c["diag_s"], "diag_abs_sum": np.abs(G) * c["diag_abs"]}
        pairs.append(_arrow({**keycols, **st}, contracts.PAIRS_SCHEMA))
        pos = G >= 0  # G < 0: the head's max is at x's min cell
        cell = {e: tuple(np.where(pos if e == "max" else ~pos, c[f"mx_{x}"], c[f"mn_{x}"]) for x in ("sample", "q", "k"))
                for e in ("max", "min")}
        examples.append(_arrow(_examples(keycols, st, cell, examples_per_pair), contracts.EXAMPLES_SCHEMA))
    return (pa.concat_tables(pairs) if pairs else contracts.PAIRS_SCHEMA.empty_table(),
            pa.concat_tables(examples) if examples else contracts.EXAMPLES_SCHEMA.empty_table())


def _examples(keycols: dict, st: dict, cell: dict, k: int) -> dict[str, np.ndarray]:
    if k <= 0:
        return {c: v[:0] for c, v in keycols.items()} | {c: np.zeros(0) for c in ("sample", "q_pos", "k_pos", "value")}
    if k == 1:
        take_min = np.abs(st["min"]) > np.abs(st["max"])
        pick = [np.where(take_min, cell["min"][x], cell["max"][x]) for x in range(3)]
        return {**keycols, "sample": pick[0], "q_pos": pick[1], "k_pos": pick[2],
                "value": np.where(take_min, st["min"], st["max"])}
    other = np.flatnonzero((cell["min"][0] != cell["max"][0]) | (cell["min"][1] != cell["max"][1])
                           | (cell["min"][2] != cell["max"][2]))
    cols = {c: np.concatenate([v, v[other]]) for c, v in keycols.items()}
    both = [np.concatenate([cell["max"][x], cell["min"][x][other]]) for x in range(3)]
    return {**cols, "sample": both[0], "q_pos": both[1], "k_pos": both[2],
            "value": np.concatenate([st["max"], st["min"][other]])}


def _arrow(cols: dict[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    return pa.table({f.name: pa.array(np.asarray(cols[f.name], dtype=f.type.to_pandas_dtype()), f.type)
                     for f in schema})


def prune_coact(coact: pa.Table, proj: pa.Table, min_count: int) -> tuple[pa.Table, pa.Table, list[dict]]:
    """Drop coact rows with n < min_count (n is head-independent) and the proj rows of features no kept row
    uses. Returns (coact, proj, dropped) with dropped per (layer, head): n_pairs, n, sum = Σ G·s,
    abs_sum = Σ |G|·abs of the dropped rows — so stored + dropped = the shard's exact per-head totals."""
    if min_count <= 1 or coact.num_rows == 0:
        return coact, proj, []
    low = pc.less(coact["n"], pa.scalar(min_count, pa.uint64()))
    gone = coact.filter(low)
    if gone.num_rows == 0:
        return coact, proj, []
    kept = coact.filter(pc.invert(low))
    dropped = []
    for layer, head in _heads(proj):
        rows = gone.filter(pc.equal(gone["layer"], layer))
        if rows.num_rows == 0:
            continue
        G = strengths(rows, proj, layer, head)
        dropped.append({"layer": layer, "head": head, "n_pairs": rows.num_rows,
                        "n": int(rows["n"].to_numpy().sum()), "sum": float((G * rows["s"].to_numpy()).sum()),
                        "abs_sum": float((np.abs(G) * rows["abs"].to_numpy()).sum())})
    keep = np.zeros(proj.num_rows, dtype=bool)
    p_layer, p_side = proj["layer"].to_numpy(), proj["side"].to_numpy(zero_copy_only=False)
    p_code = contracts.feature_code(proj["src"].to_numpy(), proj["feature"].to_numpy())
    for layer in np.unique(p_layer):
        mine = kept.filter(pc.equal(kept["layer"], int(layer)))
        for side in ("q", "k"):
            used = np.unique(contracts.feature_code(mine[f"{side}_src"].to_numpy(), mine[f"{side}_feat"].to_numpy()))
            at = (p_layer == layer) & (p_side == side)
            keep[at] = np.isin(p_code[at], used)
    return kept, proj.filter(pa.array(keep)), dropped


def shard_pairs(job_dir: str | Path, shard: int, examples_per_pair: int) -> tuple[pa.Table, pa.Table]:
    """What a shard means per head: its stored per-head (pairs, examples) ∪ the expansion of its coact /
    proj (`expand_coact`)."""
    pairs = contracts.read_shard_table(job_dir, shard, "pairs")
    examples = contracts.read_shard_table(job_dir, shard, "examples")
    p, e = expand_coact(contracts.read_shard_table(job_dir, shard, "coact"),
                        contracts.read_shard_table(job_dir, shard, "proj"), examples_per_pair)
    return pa.concat_tables([pairs, p]), pa.concat_tables([examples, e])


def run_ids(gid, offsets: list[int], src_map: list[int]):
    """Engine global ids (torch, int64) → (run source, feature) through a side's offsets and run source map."""
    import torch

    offs = torch.tensor(offsets, device=gid.device)
    s = torch.searchsorted(offs, gid, right=True) - 1
    return torch.tensor(src_map, device=gid.device)[s], gid - offs[s]


def layer_tables(layer: int, heads: list[int], template, co: dict, projectors, q_map: list[int],
                 k_map: list[int], P: int) -> tuple[pa.Table, pa.Table]:
    """(coact, proj) of one head-independent layer from the shard's reduced co-activation table co
    (`fra_core.fra.allpairs`, keyed (0 · Gq + q_gid) · Gk + k_gid, cells in the shard's span P); template: the
    layer's `BatchStats` (spans, offsets, scale). proj holds, per head, exactly the features co uses, with
    the vectors `fra_core.fra.allpairs_batch.strengths` multiplies: q = U_f[h], k = V_g[h] / attn_scale."""

    from fra_core.fra.aggregate import compact_ids
    from fra_core.fra.allpairs import split_key

    _, qg, kg = split_key(co["key"], *template.spans)
    (uq, qi), (uk, ki) = compact_ids(qg, template.spans[0]), compact_ids(kg, template.spans[1])
    (qs, qf), (ks, kf) = run_ids(uq, template.q_offsets, q_map), run_ids(uk, template.k_offsets, k_map)
    pq, pk = projectors
    # [head_index, n, d_head]: every head's rows in one gather (the values `Projector.get(ids, hi)` gives)
    qv = pq.get(uq).permute(1, 0, 2)
    kv = pk.get(uk).permute(1, 0, 2) / template.scale
    qs, qf, ks, kf, qi, ki = (t.cpu().numpy() for t in (qs, qf, ks, kf, qi, ki))
    # narrowed to the schema's types before the gather (no int64 copies of the rows)
    ids = {"q_src": qs.astype(np.uint16)[qi], "q_feat": qf.astype(np.uint32)[qi],
           "k_src": ks.astype(np.uint16)[ki], "k_feat": kf.astype(np.uint32)[ki]}
    coact = coact_table(layer, ids, {c: v.cpu().numpy() for c, v in co.items() if c != "key"}, P)
    proj = proj_table(layer, heads, {"q": (qs, qf, qv.contiguous().cpu().numpy()),
                                     "k": (ks, kf, kv.contiguous().cpu().numpy())})
    return coact, proj

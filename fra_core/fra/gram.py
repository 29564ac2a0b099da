"""Exact top-m pairs per cell from the Gram matrix of a sample's distinct features (models without rotary).

For item (sample b, head h), query slot (i, k) holds feature f_ik with coefficient a_ik (÷ attn_scale, × the
per-position head factor of QK-norm / log-n) and projected row U_f [d_head] (`rowcache`: the same row at every
position); key slot (j, l) likewise a_jl, V_g. Without a position-dependent rotation

    v[i, k, j, l] = a_ik · a_jl · (U_{f_ik} · V_{g_jl}) = a_ik · a_jl · G[f_ik, g_jl],   G = U Vᵀ [Uq, Uk]

over the sample's Uq, Uk distinct features. The block path (`blocks.py`) computes all C·K·L values of the C
selected cells, d_head FLOPs each. Its top-m selection needs only, per cell and query slot k (a group of L
values), the group max |a_ik| · max_l |a_jl G[f_ik, g_jl]| — and the inner max

    M[j, f] = max_l |a_jl| · |G[f, g_jl]|          [key_pos, Uq]

depends on the query feature f, not on the query position i. So M costs Uq·Uk·d_head FLOPs (G, in column
tiles of Gᵀ that stay cache-sized) plus T·L·Uq multiply-max steps, instead of C·K·L·d_head; the column maxima
|a_jl| · M'[i, g_jl] (M' the same with the sides swapped) likewise. As in `blocks.top_m_cells`, every one of a
cell's m largest |values| lies in one of its m rows (query slots) with the largest maxima — a value x in any
other row is beaten by those m rows' maxima, i.e. by m values ≥ x — and by the same argument in one of its m
columns with the largest maxima. So the top m lie in those m × m pairs: per cell, m² dot products q̃_ik · k̃_jl
(the block path's own vectors) and a top-m of m² values. Exact in exact arithmetic; in floating point the
maxima are rounded differently from the values, so a pair whose |value| ties the cell's m-th within rounding
may be exchanged for the tying one (the block path's ranking of its own rounded values is no less arbitrary).

Only the positions a feature's cells need are computed: target features sorted by reach (the last position
their cells need), the other side's by first occurrence, so a tile of targets needs a prefix of positions and
a prefix of the other side's rows (causal cells: ≈ 2/3 of G and 55–70 % of the gathers on the bench below).

GPT-2 Small at T = 128 with ≈ 400 active features per position and side (kk hook_z SAEs + transcoders of
layers 0–4), per head and sample: the block path C·K·L·d_head ≈ 10¹¹ multiply-adds; here Uq ≈ Uk ≈ 8 400
distinct features, so 2·Uq·Uk·d_head ≈ 9·10⁹ (G, once per direction; ×2/3) plus 2·T·L·Uq ≈ 10⁹ gathered
values (×0.6) and C·m²·d_head ≈ 3·10⁷.
"""

from __future__ import annotations

import dataclasses

import torch

TILE = 256  # target features per column tile of |Gᵀ|: [Uo, TILE] float32 ≈ 8 MB at Uo = 8 400
KEY_ROWS = 8  # positions per gathered chunk [KEY_ROWS·L, TILE] (≈ 3.7 MB at L = 447)
GPU_SCALE = 8  # on a GPU: 8× wider tiles and 8× more positions per chunk (fewer, larger kernels)


def _sizes(device) -> tuple[int, int]:
    return (TILE * GPU_SCALE, KEY_ROWS * GPU_SCALE) if torch.device(device).type == "cuda" else (TILE, KEY_ROWS)


def distinct(side, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [U] of `side.rows` used by sample b, inverse [pos, K] into them): the sample's distinct features."""
    return torch.unique(side.row_of[b], return_inverse=True)


def cheaper(uq: int, uk: int, T: int, K: int, L: int, n_cells: int, m: int, d: int) -> bool:
    """True when this path costs fewer operations than the block path for one item (module docstring):
    2·Uq·Uk·d (G per direction) + 4·T·(L·Uq + K·Uk) (gather, scale, max: memory-bound steps weighed ×4)
    + C·(m²·d + 4·(K + L)) (the m × m values, row and column scores) against C·K·L·(d + 3) (the block
    GEMM + the selection's passes over every value)."""
    gram = 2 * uq * uk * d + 4 * T * (L * uq + K * uk) + n_cells * (m * m * d + 4 * (K + L))
    return gram < n_cells * K * L * (d + 3)


def coefficients(side, b: int, hi: int, scale: float = 1.0) -> torch.Tensor:
    """[pos, K] a_ik: coef (÷ scale) × the head's per-position factor (QK-norm 1/σ, log-n), as `feature_block`."""
    a = side.coef[b]
    if side.head_scale is not None:
        a = a * side.head_scale[b, :, hi][:, None]
    return a / scale if scale != 1.0 else a


@dataclasses.dataclass
class Direction:
    """The plan of one maximum table M [pos, U] = max_l |a_pl| · |U_f · V_{o_pl}| of a sample, for any head.

    Target features (U) sorted by reach (the last position their cells need), other-side features (V) by
    first occurrence, so that tile t of TILE target features needs positions [0, P_t] and the first n_t
    V rows only (`max_tiles`)."""

    target: torch.Tensor  # [U] target row ids (into the side's rows table), sorted by reach
    order: torch.Tensor  # [U] target feature (distinct index) of each sorted column
    rank: torch.Tensor  # [U] sorted column of each target feature (distinct index)
    other: torch.Tensor  # [Uo] other-side row ids, sorted by first occurrence
    idx: torch.Tensor  # [pos·L] each other-side slot's index into `other`
    tiles: list  # [(first column, P, n)]
    n_pos: int
    tile: int  # target columns per tile
    key_rows: int  # positions per gathered chunk


def direction(t_rows: torch.Tensor, reach: torch.Tensor, o_rows: torch.Tensor, o_inv: torch.Tensor) -> Direction:
    """t_rows [U] distinct target rows and their reach [U] (−1: no cell); o_rows [Uo] the other side's
    distinct rows, o_inv [pos, L] each of its slots' index into them (positions in this direction's order)."""
    J, L = o_inv.shape
    dev = o_inv.device
    tile, key_rows = _sizes(dev)
    pos = torch.arange(J, device=dev)[:, None].expand(J, L).reshape(-1)
    first = torch.full((len(o_rows),), J, dtype=torch.long, device=dev).scatter_reduce_(
        0, o_inv.reshape(-1), pos, "amin")  # first position of each other-side feature (J: never)
    first_s, order_v = first.sort(stable=True)
    rank_v = torch.empty_like(order_v)
    rank_v[order_v] = torch.arange(len(order_v), device=dev)
    reach_s, order_u = reach.sort(stable=True)
    rank_u = torch.empty_like(order_u)
    rank_u[order_u] = torch.arange(len(order_u), device=dev)
    starts = list(range(0, len(t_rows), tile))
    last = reach_s[[min(c0 + tile, len(t_rows)) - 1 for c0 in starts]]  # each tile's largest reach
    n_rows = torch.searchsorted(first_s, last, right=True).tolist()  # other rows occurring up to it
    return Direction(t_rows[order_u], order_u, rank_u, o_rows[order_v], rank_v[o_inv].reshape(-1),
                     list(zip(starts, last.tolist(), n_rows)), J, tile, key_rows)


def max_tiles(d: Direction, t_table: torch.Tensor, o_table: torch.Tensor, hi: int, w: torch.Tensor) -> torch.Tensor:
    """[n_tiles, pos, tile]: M of direction d for head index hi, tile-major (column c of tile t is sorted
    target column t·tile + c); t_table / o_table [n_rows, head_index, d_head] the sides' projected rows,
    w [pos·L] the other side's |coefficients|. Entries beyond a tile's P are 0 (never read)."""
    U, V = t_table[d.target, hi], o_table[d.other, hi]  # sorted rows [U, d_head], [Uo, d_head]
    L, TW, KR = len(d.idx) // max(1, d.n_pos), d.tile, d.key_rows
    out = U.new_zeros(len(d.tiles), d.n_pos, TW)
    gt_buf = U.new_empty(max((n for _, _, n in d.tiles), default=0) * TW)  # reused: no page faults per tile
    rows_buf = U.new_empty(KR * L * TW)
    for t, (c0, P, n) in enumerate(d.tiles):
        if P < 0:
            continue
        width = min(TW, len(U) - c0)
        gt = torch.mm(V[:n], U[c0:c0 + width].T, out=gt_buf[:n * width].view(n, width)).abs_()  # |Gᵀ| tile
        for j0 in range(0, P + 1, KR):
            j1 = min(P + 1, j0 + KR)
            s = slice(j0 * L, j1 * L)
            rows = torch.index_select(gt, 0, d.idx[s], out=rows_buf[:(j1 - j0) * L * width].view(-1, width))
            torch.amax(rows.mul_(w[s, None]).view(j1 - j0, L, width), 1, out=out[t, j0:j1, :width])
    return out


def take_index(d: Direction, pos: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """[C, K] flat index into `max_tiles` of (each cell's position pos [C], each slot's target feature inv [C, K])."""
    base = (d.rank // d.tile) * (d.n_pos * d.tile) + d.rank % d.tile  # [U]: column c of tile t at position 0
    return base[inv].add_(pos[:, None] * d.tile)


def key_group_max(U: torch.Tensor, V: torch.Tensor, ak: torch.Tensor, k_inv: torch.Tensor,
                  reach: torch.Tensor | None = None) -> torch.Tensor:
    """M [key_pos, Uq] = max_l |ak[j, l]| · |U_f · V_{k_inv[j, l]}| for j ≤ reach[f] (None: every position).

    U [Uq, d_head], V [Uk, d_head] distinct rows; ak [key_pos, L]; k_inv [key_pos, L] each key slot's row of V.
    Entries beyond a feature's reach are never read (0 or filled). One head's `max_tiles`, in column order.
    """
    J = ak.shape[0]
    reach = torch.full((len(U),), J - 1, dtype=torch.long, device=U.device) if reach is None else reach
    d = direction(torch.arange(len(U), device=U.device), reach, torch.arange(len(V), device=U.device), k_inv)
    tiles = max_tiles(d, U[:, None], V[:, None], 0, ak.abs().reshape(-1))
    return tiles.permute(1, 0, 2).reshape(J, -1)[:, d.rank]


@dataclasses.dataclass
class SamplePlan:
    """One sample's head-independent part: distinct features, both directions, and the cells in chunks of
    ≤ chunk_elements scores, each with its score gathers' take indices (kept when there is one chunk, else
    rebuilt per head so that memory stays bounded by the chunk)."""

    q_rows: torch.Tensor
    q_inv: torch.Tensor
    k_rows: torch.Tensor
    k_inv: torch.Tensor
    fwd: Direction  # M [key_pos, Uq] for query features
    bwd: Direction  # M' [reversed query_pos, Uk] for key features
    chunks: list  # [(c0, c1, take_rows [n, K] or None, take_cols [n, L] or None)]

    def takes(self, ic: torch.Tensor, jc: torch.Tensor, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """take indices of cells c0..c1 into `max_tiles` of fwd (rows) and bwd (columns)."""
        i, j = ic[c0:c1], jc[c0:c1]
        T = self.q_inv.shape[0]
        return (take_index(self.fwd, j, self.q_inv.index_select(0, i)),
                take_index(self.bwd, T - 1 - i, self.k_inv.index_select(0, j)))


def plan_sample(q_u, k_u, ic: torch.Tensor, jc: torch.Tensor, chunk_elements: int = 1 << 22) -> SamplePlan:
    """q_u, k_u: `distinct(side, b)`; ic, jc [C] the selected cells."""
    (rq, q_inv), (rk, k_inv) = q_u, k_u
    T = q_inv.shape[0]
    # the positions each feature's cells need: query feature f the keys up to the last selected key of its
    # rows; key feature g the queries from the first selected query of its keys on (counted from the end)
    last_key = torch.full((T,), -1, dtype=torch.long, device=ic.device).scatter_reduce_(0, ic, jc, "amax")
    from_end = torch.full((T,), -1, dtype=torch.long, device=ic.device).scatter_reduce_(0, jc, T - 1 - ic, "amax")
    fwd = direction(rq, _feature_reach(q_inv, last_key, len(rq)), rk, k_inv)
    # M' [query_pos, Uk]: the same with the sides swapped, positions reversed so that needs are prefixes
    bwd = direction(rk, _feature_reach(k_inv, from_end, len(rk)), rq, q_inv.flip(0))
    per = max(1, chunk_elements // max(q_inv.shape[1], k_inv.shape[1]))
    plan = SamplePlan(rq, q_inv, rk, k_inv, fwd, bwd, [(c, min(len(ic), c + per), None, None)
                                                       for c in range(0, len(ic), per)])
    if len(plan.chunks) == 1:
        plan.chunks = [(0, len(ic), *plan.takes(ic, jc, 0, len(ic)))]
    return plan


def top_m_item(q_side, k_side, b: int, hi: int, plan: SamplePlan, ic: torch.Tensor, jc: torch.Tensor, m: int,
               scale: float, pattern: torch.Tensor | None):
    """The m largest-|value| pairs of the cells (ic, jc) [C] of item (b, hi), as `blocks.top_m_cells`.

    plan: `plan_sample` of sample b; pattern [query_pos, key_pos] multiplies the values (attention_weighted:
    A_ij ≥ 0 is constant over a cell, so the ranking is that of the raw values) or None. Requires m < K.
    Returns value, k, l, keep [C, m], each cell's pairs in descending |value|.
    """
    aq, ak = coefficients(q_side, b, hi, scale), coefficients(k_side, b, hi)  # [pos, K], [pos, L]
    aq_abs, ak_abs = aq.abs(), ak.abs()
    # row (query slot k) and column (key slot l) maxima of each cell's K × L values:
    # |a_ik|·M[j, f_ik] and |a_jl|·M'[i, g_jl]
    m_q = max_tiles(plan.fwd, q_side.rows, k_side.rows, hi, ak_abs.reshape(-1))
    m_k = max_tiles(plan.bwd, k_side.rows, q_side.rows, hi, aq_abs.flip(0).reshape(-1))
    U, V = q_side.rows[plan.q_rows, hi], k_side.rows[plan.k_rows, hi]  # [Uq, d_head], [Uk, d_head]
    out = []
    for c0, c1, t_rows, t_cols in plan.chunks:
        if t_rows is None:
            t_rows, t_cols = plan.takes(ic, jc, c0, c1)
        i, j = ic[c0:c1], jc[c0:c1]
        rows = m_q.take(t_rows).mul_(aq_abs.index_select(0, i))  # [n, K]
        cols = m_k.take(t_cols).mul_(ak_abs.index_select(0, j))  # [n, L]
        out.append(_top_of_maxima(rows, cols, i, j, aq, ak, U, V, plan, m))
    value, k, l = (torch.cat(c) if len(out) > 1 else c[0] for c in zip(*out))
    if pattern is not None:
        value = value * pattern[ic, jc][:, None]
    return value, k, l, value != 0


def _top_of_maxima(rows, cols, i, j, aq, ak, U, V, plan: SamplePlan, m: int):
    """value, k, l [n, m] of cells (i, j) [n] from their row and column maxima rows [n, K], cols [n, L]."""
    ksel = rows.topk(m, dim=-1, sorted=False).indices  # [n, m]
    lsel = cols.topk(min(m, cols.shape[1]), dim=-1, sorted=False).indices  # [n, m_c]
    # the block path's vectors: q̃ = coef · row (× head factor) ÷ attn_scale, k̃ = coef · row (× head factor)
    qv = aq[i[:, None], ksel, None] * U[plan.q_inv[i[:, None], ksel]]  # [n, m, d_head]
    kv = ak[j[:, None], lsel, None] * V[plan.k_inv[j[:, None], lsel]]  # [n, m_c, d_head]
    cand = torch.bmm(qv, kv.transpose(1, 2)).flatten(1)  # [n, m·m_c]
    t = cand.abs().topk(m, dim=-1, sorted=True).indices
    return cand.gather(-1, t), ksel.gather(-1, t // lsel.shape[1]), lsel.gather(-1, t % lsel.shape[1])


def _feature_reach(inv: torch.Tensor, per_pos: torch.Tensor, n: int) -> torch.Tensor:
    """[n] max of per_pos [pos] over the positions where each distinct feature occurs (inv [pos, K]); −1: none."""
    vals = per_pos[:, None].expand_as(inv).reshape(-1)
    return torch.full((n,), -1, dtype=torch.long, device=inv.device).scatter_reduce_(0, inv.reshape(-1), vals, "amax")

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
(the block path's own vectors) and a top-m of m² values.

GPT-2 Small at T = 128 with ≈ 400 active features per position and side (kk hook_z SAEs + transcoders of
layers 0–4): C·K·L·d_head ≈ 2·10¹¹ FLOPs per head and sample; Uq ≈ Uk ≈ 8 400 distinct features, so
2·Uq·Uk·d_head ≈ 9·10⁹ (G, once per direction) plus 2·T·L·Uq ≈ 10⁹ gather-max steps and C·m²·d_head ≈ 3·10⁷.
"""

from __future__ import annotations

import torch

TILE = 256  # query features per column tile of Gᵀ: [Uk, TILE] float32 ≈ 8 MB at Uk = 8 400
KEY_ROWS = 8  # key positions per gathered chunk [KEY_ROWS·L, TILE]


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


def key_group_max(U: torch.Tensor, V: torch.Tensor, ak: torch.Tensor, k_inv: torch.Tensor) -> torch.Tensor:
    """M [key_pos, Uq] = max_l |ak[j, l]| · |U_f · V_{k_inv[j, l]}|.

    U [Uq, d_head], V [Uk, d_head] distinct rows; ak [key_pos, L] key coefficients; k_inv [key_pos, L]
    each key slot's row of V. Column tiles of |Gᵀ| = |V U_tileᵀ| [Uk, TILE] are gathered by key slot, scaled
    and max-reduced over each position's L slots.
    """
    J, L = ak.shape
    M = U.new_empty(J, len(U))
    idx, w = k_inv.reshape(-1), ak.abs().reshape(-1, 1)
    for c0 in range(0, len(U), TILE):
        gt = (V @ U[c0:c0 + TILE].T).abs_()  # [Uk, tile]
        for j0 in range(0, J, KEY_ROWS):
            s = slice(j0 * L, min(J, j0 + KEY_ROWS) * L)
            rows = gt.index_select(0, idx[s]).mul_(w[s])  # [rows·L, tile]
            M[j0:j0 + KEY_ROWS, c0:c0 + TILE] = rows.view(-1, L, rows.shape[1]).amax(1)
    return M


def top_m_item(q_side, k_side, b: int, hi: int, q_u, k_u, ic: torch.Tensor, jc: torch.Tensor, m: int,
               scale: float, pattern: torch.Tensor | None):
    """The m largest-|value| pairs of the cells (ic, jc) [C] of item (b, hi), as `blocks.top_m_cells`.

    q_u, k_u: `distinct(side, b)`; pattern [query_pos, key_pos] multiplies the values (attention_weighted:
    A_ij ≥ 0 is constant over a cell, so the ranking is that of the raw values) or None. Requires m < K.
    Returns value, k, l, keep [C, m], each cell's pairs in descending |value|.
    """
    (rq, q_inv), (rk, k_inv) = q_u, k_u
    U, V = q_side.rows[rq, hi], k_side.rows[rk, hi]  # [Uq, d_head], [Uk, d_head]
    aq, ak = coefficients(q_side, b, hi, scale), coefficients(k_side, b, hi)  # [pos, K], [pos, L]
    L = ak.shape[1]
    # row (query slot k) and column (key slot l) maxima of each cell's K × L values:
    # |a_ik|·M[j, f_ik] and |a_jl|·M'[i, g_jl], M' the same maximum with the sides' roles swapped
    rows = aq.abs()[ic] * key_group_max(U, V, ak, k_inv)[jc[:, None], q_inv[ic]]  # [C, K]
    cols = ak.abs()[jc] * key_group_max(V, U, aq, q_inv)[ic[:, None], k_inv[jc]]  # [C, L]
    ksel = rows.topk(m, dim=-1, sorted=False).indices  # [C, m]
    lsel = cols.topk(min(m, L), dim=-1, sorted=False).indices  # [C, m_c]
    # the block path's vectors: q̃ = coef · row (× head factor) ÷ attn_scale, k̃ = coef · row (× head factor)
    qv = aq[ic[:, None], ksel, None] * U[q_inv[ic[:, None], ksel]]  # [C, m, d_head]
    kv = ak[jc[:, None], lsel, None] * V[k_inv[jc[:, None], lsel]]  # [C, m_c, d_head]
    cand = torch.bmm(qv, kv.transpose(1, 2)).flatten(1)  # [C, m·m_c]
    t = cand.abs().topk(m, dim=-1, sorted=True).indices
    value = cand.gather(-1, t)
    if pattern is not None:
        value = value * pattern[ic, jc][:, None]
    return value, ksel.gather(-1, t // lsel.shape[1]), lsel.gather(-1, t % lsel.shape[1]), value != 0

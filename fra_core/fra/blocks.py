"""Pair blocks: feature×feature values of G (sample, head) items × a range of query rows, and their selection.

For item g, query row i (slot k, feature f_ik) and key j (slot l, feature g_jl):

    v[g, i, k, j, l] = q̃_gik · k̃_gjl          (q̃ already ÷ attn_scale; both rotated at their position)

One batched GEMM per block writes it: [G, rows·K, d_head] @ [G, d_head, keys·L] (no permute copy).

Top-m per cell (i, j) without sorting all K·L values of the cell: split the cell's values into K groups
(one per query slot k, each holding the L values of the key slots) and take each group's max |v|. Every
one of the m largest |values| lies in one of the m groups with the largest maxima — a value x in any
other group is beaten by those m groups' maxima, i.e. by m values ≥ x, so it is not in the top m.
So: streaming max/min reductions over the block, a top-m over K group maxima per cell, and a top-m
over the m·L candidates gathered from the chosen groups (contiguous runs of L values).
"""

from __future__ import annotations

import torch

from fra_core.fra.options import FRAOptions


def block_values(qf, kf, amask, pattern, k_bucket, n_buckets: int, opts: FRAOptions, buf=None) -> torch.Tensor:
    """v [G, rows, K, keys, L] (see the module docstring), optionally row-centred and attention-weighted.

    qf [G, rows, K, d_head] (÷ attn_scale), kf [G, keys, L, d_head]; amask [rows, keys] bool;
    pattern [G, rows, keys]; k_bucket [G, keys, L]: bucket (distinct feature) of each key slot.
    """
    G, ci, K, d = qf.shape
    J, L = kf.shape[1], kf.shape[2]
    n = G * ci * K * J * L
    out = (buf[:n] if buf is not None and buf.numel() >= n else qf.new_empty(n)).view(G, ci * K, J * L)
    torch.bmm(qf.reshape(G, ci * K, d), kf.reshape(G, J * L, d).transpose(1, 2), out=out)
    v = out.view(G, ci, K, J, L)
    if opts.row_centre:
        # mean_i(f, g) = (1/n_i) Σ_{j' allowed} v(i, j', f, g): per row and query slot, sum the values of each
        # key feature (bucket) over the allowed keys, divide by the number of allowed keys, subtract
        m = amask[None, :, None, :, None].to(v.dtype)
        v = (v * m).view(G, ci, K, J * L)
        idx = k_bucket.reshape(G, 1, 1, J * L).expand(G, ci, K, J * L)
        sums = v.new_zeros(G, ci, K, n_buckets).scatter_add_(3, idx, v)
        means = sums / amask.sum(1).clamp(min=1).to(v.dtype)[None, :, None, None]
        v = (v - means.gather(3, idx)).view(G, ci, K, J, L) * m
    if opts.attention_weighted:
        v = v * pattern[:, :, None, :, None]
    return v


def top_m_cells(v: torch.Tensor, ic: torch.Tensor, jc: torch.Tensor, m: int):
    """The m largest-|value| pairs of each listed cell (all non-zero ones when m ≥ K·L).

    v [G, rows, K, keys, L]; ic, jc [C]: the cells (block row, key). Returns value, k, l [G, C, m'] and
    keep [G, C, m'] (|value| > 0: padding slots and zero products are never kept), m' = min(m, K·L),
    each cell's pairs in descending |value|. The values are the GEMM's own: the numbers that were ranked.
    """
    G, ci, K, J, L = v.shape
    m = min(m, K * L)
    n_groups = min(m, K)
    if n_groups < K:
        # group max |v| = max(max v, −min v) over the key slots l of each (g, i, k, j): two streaming
        # reductions (cheaper than writing |v| and recomputing the kept values' signs)
        gmax = torch.maximum(v.amax(-1), v.amin(-1).neg_())  # [G, rows, K, keys]
        ksel = gmax.permute(0, 1, 3, 2)[:, ic, jc].topk(n_groups, dim=-1, sorted=False).indices  # [G, C, n]
    else:
        ksel = torch.arange(K, device=v.device).expand(G, len(ic), K)
    # each chosen group is a contiguous run of L values: row ((g·rows + i)·K + k)·keys + j of v [·, L]
    g_ar = torch.arange(G, device=v.device)[:, None, None]
    run = ((g_ar * ci + ic[None, :, None]) * K + ksel) * J + jc[None, :, None]
    cand = v.reshape(-1, L).index_select(0, run.flatten()).view(G, len(ic), n_groups * L)
    if m < n_groups * L:
        t = cand.abs().topk(m, dim=-1, sorted=True).indices
        value = cand.gather(-1, t)
    else:
        t, value = torch.arange(n_groups * L, device=v.device).expand_as(cand), cand
    return value, ksel.gather(-1, t // L), t % L, value != 0


def top_n_block(v: torch.Tensor, sel: torch.Tensor, n: int):
    """The n largest-|value| pairs of each item g over the selected cells of a block.

    v [G, rows, K, keys, L], sel [rows, keys] bool. Returns value, i, k, j, l [G, n'] (n' ≤ n); entries
    with value 0 may be among them (dropped by the caller).
    """
    G, ci, K, J, L = v.shape
    score = (v.abs() * sel[None, :, None, :, None].to(v.dtype)).view(G, -1)
    top = score.topk(min(n, score.shape[1]), dim=-1, sorted=False)
    i, k, j, l = torch.unravel_index(top.indices, (ci, K, J, L))
    return v.reshape(G, -1).gather(1, top.indices), i, k, j, l


def merge_top_n(parts: list[tuple], n: int) -> tuple:
    """Concatenate per-block (value, i, k, j, l) [G, *] candidates and keep the n largest |value| per g."""
    cat = [torch.cat(cols, dim=1) for cols in zip(*parts)]
    if cat[0].shape[1] > n:
        idx = cat[0].abs().topk(n, dim=-1, sorted=False).indices
        cat = [c.gather(1, idx) for c in cat]
    return tuple(cat)

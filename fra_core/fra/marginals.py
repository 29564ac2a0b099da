"""Per-feature marginals and the named non-feature nodes' own totals, exactly, per head.

A query component c at position i (feature f with vector q_i^f = ã_if·R_i U_f, or a named node: SAE
error, b_dec, ln1.b, bias, truncation, embeddings, …) contributes q_i^c·k_j/attn_scale to cell (i, j),
with k_j the WHOLE key (every feature and node of the key side): its marginal. Likewise a key component
against the whole query. Over the selected cells, per (head, side, component):

    n = cells where the component is present (a feature: active at its position; a node: every cell),
    sum = Σ value, abs_sum = Σ |value|, and for nodes also sum_vs_features (against the other side's
    features only).

So the query side's marginals and node totals add up to Σ of the (transformed) scores over the selected
cells, the key side's too, and Σ pairs + Σ query nodes + Σ key nodes' sum_vs_features = Σ scores: the
share of a head's scores that features explain. Values are transformed like the pairs: row-centred
(minus the mean over the keys the softmax sees; a key feature's mean counts absent positions as 0 and
its absent cells are left out, as for pairs) and attention-weighted (× A_ij).

Cost per sample and head: T²·(K + n_nodes)·d_head: per-cell work, cheap next to the pairs.
"""

from __future__ import annotations

import torch

F64 = torch.float64


def _transform(V: torch.Tensor, amask, centre: bool, weight) -> torch.Tensor:
    """V [..., query_pos, key_pos]: centred over amask rows and/or weighted."""
    if centre:
        m = amask.to(V.dtype)
        V = V - (V * m).sum(-1, keepdim=True) / m.sum(-1).clamp(min=1)[:, None]
    return V * weight.to(V.dtype) if weight is not None else V


def sample_marginals(qf, qon, kf, kon, kid, qn, kn, sel, amask, centre: bool, weight, scale: float) -> dict:
    """One (sample, head). qf [T, K, d] / kf [T, L, d]: feature vectors (ã·R U, float64, 0 if absent),
    qon/kon [T, K] bool; kid [T, L] key global ids (for the centring buckets); qn [T, Nq, d] / kn
    [T, Nk, d]: node vectors (rotated, ÷σ applied). Returns per-slot feature rows (q_val [T, K, 3] and
    k_val [T, L, 3]: n, sum, abs_sum) and node totals q_nodes [Nq, 4] / k_nodes [Nk, 4] (n, sum,
    abs_sum, sum_vs_features)."""
    qF, kF = qf.sum(1), kf.sum(1)  # [T, d]: all features of a position
    qt, kt = qF + qn.sum(1), kF + kn.sum(1)  # the whole query / key
    s = sel.to(F64)
    n_row = s.sum(1)  # selected keys per query row

    def stats(V, on_rows):  # V [X, T, T] transformed; → n, sum, abs over selected cells
        Vs = V * s
        return torch.stack([on_rows, Vs.sum((-1, -2)), Vs.abs().sum((-1, -2))], -1)

    # query features: value(i, j) = q_i^f · k_j, one row i per slot
    Vq = _transform(torch.einsum("ikd,jd->kij", qf, kt) / scale, amask, centre, weight)  # [K, T, T]
    Vq = Vq * s
    q_val = torch.stack([n_row[:, None].expand(qf.shape[:2]), Vq.sum(-1).T, Vq.abs().sum(-1).T], -1)
    q_val = q_val * qon[..., None]
    # key features: value(i, j) = q_i · k_j^g − (centred) the mean of q_i · k_j'^g over amask row i
    Vk = torch.einsum("id,jld->lij", qt, kf) / scale  # [L, T_i, T_j]
    if centre:
        T, L = kid.shape
        buckets, bk = torch.unique(kid, return_inverse=True)  # key feature of each slot (j, l)
        src = (Vk * amask[None].to(F64)).permute(1, 2, 0).reshape(T, T * L)  # [i, (j, l)]
        per = torch.zeros(T, len(buckets), dtype=F64, device=qt.device)
        per.scatter_add_(1, bk.reshape(1, T * L).expand(T, -1), src)
        Vk = Vk - _key_means(per / amask.sum(1).clamp(min=1)[:, None].to(F64), bk)
    if weight is not None:
        Vk = Vk * weight.to(F64)
    Vk = Vk * s
    on_k = kon.T.to(F64)[:, None, :] * s  # [L, T_i, T_j]: cells where the key slot is active
    k_val = torch.stack([on_k.sum(1).T, (Vk * on_k).sum(1).T, (Vk * on_k).abs().sum(1).T], -1)
    # nodes: against the whole other side, and against its features only
    n_all = s.sum().expand(qn.shape[1])
    qN = _transform(torch.einsum("icd,jd->cij", qn, kt) / scale, amask, centre, weight)
    qNF = _transform(torch.einsum("icd,jd->cij", qn, kF) / scale, amask, centre, weight)
    kN = _transform(torch.einsum("id,jcd->cij", qt, kn) / scale, amask, centre, weight)
    kNF = _transform(torch.einsum("id,jcd->cij", qF, kn) / scale, amask, centre, weight)
    q_nodes = torch.cat([stats(qN, n_all), (qNF * s).sum((-1, -2))[:, None]], -1)
    k_nodes = torch.cat([stats(kN, s.sum().expand(kn.shape[1])), (kNF * s).sum((-1, -2))[:, None]], -1)
    return {"q_val": q_val, "k_val": k_val, "q_nodes": q_nodes, "k_nodes": k_nodes}


def _key_means(mean: torch.Tensor, bk: torch.Tensor) -> torch.Tensor:
    """mean [i, bucket], bk [j, l] → [l, i, j]: the row-i mean of the key feature at slot (j, l)."""
    return mean[:, bk].permute(2, 0, 1)

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

Cost per sample and head: T²·(K + n_nodes)·d_head: per-cell work, cheap next to the pairs; all heads of a
sample in one set of batched products. Without centring (`sample_marginals`' fast path) a sum is linear in
the cell values (Σ_j w_ij q_i^f·k_j = q_i^f·Σ_j w_ij k_j: one [T, T] × [T, d] product per side), so only the
abs sums need the cells, and of those only the ones the selection reaches: `BANDS` bands of rows, each
against the columns its selected cells span (a causal mask: 62.5 % of the T² cells), as plain contiguous
products whose |values| are summed by a product with the (weighted) mask. Row-centred values go through
`sample_marginals_general` (the per-cell reference: every cell of [head_index, component, T, T]).
"""

from __future__ import annotations

import torch

F64 = torch.float64
BANDS = 4  # row bands of the fast path's abs sums (fewer, larger products: each op is a thread barrier)


def _transform(V: torch.Tensor, amask, centre: bool, weight) -> torch.Tensor:
    """V [..., query_pos, key_pos]: centred over amask rows and/or weighted (weight broadcasts to V)."""
    if centre:
        m = amask.to(V.dtype)
        V = V - (V * m).sum(-1, keepdim=True) / m.sum(-1).clamp(min=1)[:, None]
    return V * weight.to(V.dtype) if weight is not None else V


def sample_marginals(qf, qon, kf, kon, kid, qn, kn, sel, amask, centre: bool, weight, scale: float) -> dict:
    """One sample, every head at once. qf [head_index, T, K, d] / kf [head_index, T, L, d]: feature vectors
    (ã·R U, float64, 0 if absent), qon/kon [T, K] bool; kid [T, L] key global ids (the centring
    buckets); qn [head_index, T, Nq, d] / kn [head_index, T, Nk, d]: node vectors (rotated, ÷σ applied);
    weight [head_index, T, T] or None. Returns per-slot feature rows q_val [head_index, T, K, 3] and
    k_val [head_index, T, L, 3] (n, sum, abs_sum) and node totals q_nodes [head_index, Nq, 4] /
    k_nodes [head_index, Nk, 4] (n, sum, abs_sum, sum_vs_features), and the side sums the caller reuses
    (completeness, feature share): q_feat / k_feat [head_index, T, d] (Σ of the side's features) and
    q_all / k_all [head_index, T, d] (the whole query / key)."""
    if centre:
        return sample_marginals_general(qf, qon, kf, kon, kid, qn, kn, sel, amask, centre, weight, scale)
    return sample_marginals_fast(qf, qon, kf, kon, qn, kn, sel, weight, scale)


def sample_marginals_general(qf, qon, kf, kon, kid, qn, kn, sel, amask, centre: bool, weight, scale: float) -> dict:
    """`sample_marginals` from every cell's value: [head_index, component, T, T] per side and node kind,
    transformed (centred, weighted), masked and summed. The reference, and the path of row-centred values."""
    H, T, K, _ = qf.shape
    L = kf.shape[2]
    qF, kF = qf.sum(2), kf.sum(2)  # [head_index, T, d]: all features of a position
    qt, kt = qF + qn.sum(2), kF + kn.sum(2)  # the whole query / key
    # 1/attn_scale on the [head_index, T, d] sums, not on the [head_index, X, T, T] values
    qts, kts, qFs, kFs = qt / scale, kt / scale, qF / scale, kF / scale
    s = sel.to(F64)
    w = weight[:, None] if weight is not None else None  # broadcasts over the component axis

    def stats(V):  # V [head_index, X, T, T] transformed → [head_index, X, 3]: n, sum, abs over selected cells
        Vs = V * s
        return torch.stack([s.sum().expand(V.shape[:2]), Vs.sum((-1, -2)), _abs_sum(Vs, (-1, -2))], -1)

    # query features: value(i, j) = q_i^f · k_j, one row i per slot
    Vq = _transform(torch.einsum("hikd,hjd->hkij", qf, kts), amask, centre, w).mul_(s)  # [H, K, T, T] (own)
    q_val = torch.stack([s.sum(1)[None, :, None].expand(H, T, K), Vq.sum(-1).transpose(1, 2),
                         _abs_sum(Vq, -1).transpose(1, 2)], -1) * qon[None, :, :, None]
    # key features: value(i, j) = q_i · k_j^g − (centred) the mean of q_i · k_j'^g over amask row i
    Vk = torch.einsum("hid,hjld->hlij", qts, kf)  # [H, L, T_i, T_j]
    if centre:
        buckets, bk = torch.unique(kid, return_inverse=True)  # key feature of each slot (j, l)
        src = (Vk * amask.to(F64)).permute(0, 2, 3, 1).reshape(H, T, T * L)  # [h, i, (j, l)]
        per = torch.zeros(H, T, len(buckets), dtype=F64, device=qt.device)
        per.scatter_add_(2, bk.reshape(1, 1, T * L).expand(H, T, -1), src)
        Vk = Vk - _key_means(per / amask.sum(1).clamp(min=1)[None, :, None].to(F64), bk)
    if w is not None:
        Vk = Vk * w.to(F64)
    on_k = kon.T.to(F64)[None, :, None, :] * s  # [1, L, T_i, T_j]: cells where the key slot is active
    Vk = Vk.mul_(on_k)  # Vk is this function's own tensor
    k_val = torch.stack([on_k.sum(2).transpose(1, 2).expand(H, T, L), Vk.sum(2).transpose(1, 2),
                         _abs_sum(Vk, 2).transpose(1, 2)], -1)
    # nodes: against the whole other side, and against its features only
    qN = _transform(torch.einsum("hicd,hjd->hcij", qn, kts), amask, centre, w)
    qNF = _transform(torch.einsum("hicd,hjd->hcij", qn, kFs), amask, centre, w)
    kN = _transform(torch.einsum("hid,hjcd->hcij", qts, kn), amask, centre, w)
    kNF = _transform(torch.einsum("hid,hjcd->hcij", qFs, kn), amask, centre, w)
    q_nodes = torch.cat([stats(qN), (qNF * s).sum((-1, -2))[..., None]], -1)
    k_nodes = torch.cat([stats(kN), (kNF * s).sum((-1, -2))[..., None]], -1)
    return {"q_val": q_val, "k_val": k_val, "q_nodes": q_nodes, "k_nodes": k_nodes, "q_feat": qF, "k_feat": kF,
            "q_all": qt, "k_all": kt}


def _abs_sum(V: torch.Tensor, dim) -> torch.Tensor:
    """Σ |V| over dim in one pass (the 1-norm: no |V| temporary)."""
    return torch.linalg.vector_norm(V, ord=1, dim=dim)


def _key_means(mean: torch.Tensor, bk: torch.Tensor) -> torch.Tensor:
    """mean [head_index, i, bucket], bk [j, l] → [head_index, l, i, j]: the row-i mean of the key feature
    at slot (j, l)."""
    return mean[:, :, bk].permute(0, 3, 1, 2)


def sample_marginals_fast(qf, qon, kf, kon, qn, kn, sel, weight, scale: float, bands: int = BANDS) -> dict:
    """`sample_marginals` of uncentred values (any selection mask, weighted or not): sums from the side
    sums (S_q = W @ k / attn_scale, S_k = Wᵀ @ q / attn_scale, W = sel × weight), abs sums from the cells the
    selection reaches (`_abs_rows`, with |W|). Same numbers as `sample_marginals_general` up to float64
    rounding (the sums are reassociated)."""
    H, T, K, _ = qf.shape
    qF, kF = qf.sum(2), kf.sum(2)  # [head_index, T, d]
    qt, kt = qF + qn.sum(2), kF + kn.sum(2)
    qts, kts, qFs, kFs = qt / scale, kt / scale, qF / scale, kF / scale
    s = sel.to(F64)
    w = s if weight is None else s * weight.to(F64)  # [T, T] or [head_index, T, T]: the sums' cell weights
    wa = s if weight is None else w.abs()  # the abs sums' (|v·w| = |v|·|w|)
    wT = w.transpose(-1, -2)
    out = {"q_feat": qF, "k_feat": kF, "q_all": qt, "k_all": kt}
    # the query side sums over key positions (rows i of W), the key side over query positions (rows j of Wᵀ)
    for name, X, N, other, otherF, W, Wa, on, n in (
            ("q", qf, qn, kts, kFs, w, wa, qon, s.sum(1)),
            ("k", kf, kn, qts, qFs, wT, wa.transpose(-1, -2).contiguous(), kon, s.sum(0))):
        C = X.shape[2]
        XN = _joined(X, N)  # [head_index, T, C + n_nodes, d]: features and nodes in one product
        vals = _dot(XN, W @ other)  # [head_index, T, C + n_nodes]: Σ over the other side's positions
        absv = _abs_rows(XN, other, Wa, _bands(sel if name == "q" else sel.T, bands))
        onf = on.to(F64)  # [T, C]
        out[f"{name}_val"] = torch.stack([(n[:, None] * onf).expand(H, T, C), vals[..., :C] * onf,
                                          absv[..., :C] * onf], -1)
        out[f"{name}_nodes"] = torch.stack([s.sum().expand(H, N.shape[2]), vals[..., C:].sum(1),
                                            absv[..., C:].sum(1), _dot(N, W @ otherF).sum(1)], -1)
    return out


def _dot(X: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """X [head_index, T, C, d] · S [head_index, T, d] → [head_index, T, C]."""
    return torch.matmul(X, S[..., None]).squeeze(-1)


def _joined(X: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
    """X [..., C, d] and N [..., n, d] side by side → [..., C + n, d]: a view when N follows X in one buffer
    with the same strides (as `batch_marginals` lays them out), else a copy."""
    same = (X.dtype == N.dtype and X.device == N.device and X.stride() == N.stride()
            and X.untyped_storage().data_ptr() == N.untyped_storage().data_ptr()
            and N.storage_offset() == X.storage_offset() + X.shape[-2] * X.stride(-2))
    if same:
        return X.as_strided(X.shape[:-2] + (X.shape[-2] + N.shape[-2], X.shape[-1]), X.stride())
    return torch.cat([X, N], -2)


def _bands(sel: torch.Tensor, n: int) -> list[tuple[int, int, int, int]]:
    """[(r0, r1, c0, c1)]: n bands of sel's rows [r0, r1) and the columns [c0, c1) their selected cells span
    (bands that select nothing left out)."""
    R = sel.shape[0]
    cols = torch.arange(sel.shape[1], device=sel.device)
    out = []
    for r0, r1 in zip([R * b // n for b in range(n)], [R * (b + 1) // n for b in range(n)]):
        on = cols[sel[r0:r1].any(0)]
        if len(on):
            out.append((r0, r1, int(on[0]), int(on[-1]) + 1))
    return out


def _abs_rows(X: torch.Tensor, Y: torch.Tensor, W: torch.Tensor, bands: list) -> torch.Tensor:
    """Σ_j W[r, j]·|X[h, r, c]·Y[h, j]| → [head_index, R, C] for X [head_index, R, C, d], Y [head_index, R', d],
    W [R, R'] or [head_index, R, R'] (0 off the selection), one band of rows at a time against its columns
    (the bands' values [head_index, rows · C, columns] share one buffer: no fresh pages per band)."""
    H, R, C, d = X.shape
    out = torch.zeros(H, R, C, dtype=F64, device=X.device)
    buf = torch.empty(H * C * max([(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in bands], default=0), dtype=F64,
                      device=X.device)
    for r0, r1, c0, c1 in bands:
        V = buf[:H * (r1 - r0) * C * (c1 - c0)].view(H, (r1 - r0) * C, c1 - c0)
        torch.bmm(X[:, r0:r1].reshape(H, (r1 - r0) * C, d), Y[:, c0:c1].transpose(1, 2), out=V).abs_()
        out[:, r0:r1] = torch.matmul(V.view(H, r1 - r0, C, c1 - c0), W[..., r0:r1, c0:c1, None]).squeeze(-1)
    return out

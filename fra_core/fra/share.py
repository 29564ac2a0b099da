"""The share of the score that features explain, per cell, per text and per run.

A cell's (transformed) score splits into the feature×feature part F_ij (every kept query feature with every
kept key feature: the "features"×"features" node term) and the rest N_ij = score_ij − F_ij (every term that
involves a named node: SAE errors, b_dec, biases, opaque attn_out / mlp_out outputs, truncation, …). Parts can
cancel, so the share is taken on magnitudes:

    share_ij = |F_ij| / (|F_ij| + |N_ij|)                          ∈ [0, 1]
    share    = Σ_ij |F_ij| / (Σ_ij |F_ij| + Σ_ij |N_ij|)        over the masked-in cells (a text, a run)

1 means feature pairs carry the whole score, 0 that nothing of it is in features. F is bilinear in the two
sides' feature sums, F_ij = (Σ_f q_i^f)·(Σ_g k_j^g)/attn_scale, so it costs one [T, d_head]×[d_head, T]
product per (sample, head): cheap enough for every batch of a job.
"""

from __future__ import annotations

import torch

from fra_core.fra.result import transform


def split(q_side, k_side, b: int, hi: int, scores, pattern, amask, options, scale: float):
    """(F, N) [query_pos, key_pos] of sample b, head index hi from the engine's two sides (`sides.Side`):
    feature×feature part and the rest of the transformed score (0 off the mask)."""
    q = q_side.feature_vectors(b, hi).sum(1)  # [query_pos, d_head]
    k = k_side.feature_vectors(b, hi).sum(1)  # [key_pos, d_head]
    F = transform(q @ k.T / scale, amask, pattern[b, hi], options)
    target = transform(torch.where(amask, scores[b, hi], torch.zeros_like(scores[b, hi])), amask, pattern[b, hi],
                       options)
    return F, target - F


def cell_split(result, b: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`split` of an `FRAResult`."""
    return split(result.q_side, result.k_side, b, hi, result.scores, result.pattern, result.attn_mask,
                 result.options, result.attn_scale)


def sides_share_sums(heads, q_side, k_side, scores, pattern, amask, options, scale: float) -> dict:
    """{head: (Σ |F_ij|, Σ |N_ij|)} over a batch's masked-in cells (what jobs add up)."""
    out = {}
    for hi, h in enumerate(heads):
        f = n = 0.0
        for b in range(scores.shape[0]):
            F, N = split(q_side, k_side, b, hi, scores, pattern, amask, options, scale)
            f, n = f + float(F[amask].abs().sum()), n + float(N[amask].abs().sum())
        out[h] = (f, n)
    return out


def side_share_sums(q_feat: torch.Tensor, k_feat: torch.Tensor, scores: torch.Tensor, amask: torch.Tensor,
                    centre: bool, weight: torch.Tensor | None, scale: float) -> torch.Tensor:
    """[head_index, 2] (Σ |F_ij|, Σ |N_ij|) over the masked-in cells of one sample, from the side sums the
    all-pair marginals already hold: q_feat [head_index, query_pos, d_head] / k_feat [head_index, key_pos,
    d_head] = Σ of each side's feature vectors (float64, rotated), scores [head_index, query_pos, key_pos]
    (hook_attn_scores), weight [head_index, query_pos, key_pos] (the pattern, attention-weighted) or None.

    F_ij = q_feat_i · k_feat_j / attn_scale and the target score are transformed as `split` does (centred
    over the amask row, weighted), N = target − F; one batched [T, d_head]×[d_head, T] product per head,
    in float64 (`split` works in the engine's float32: the two agree to float32 rounding)."""
    from fra_core.fra.marginals import _transform

    F = _transform(torch.einsum("hid,hjd->hij", q_feat, k_feat) / scale, amask, centre, weight)
    target = _transform(torch.where(amask, scores.to(F.dtype), 0.0), amask, centre, weight)
    m = amask.to(F.dtype)
    return torch.stack([(F.abs() * m).sum((1, 2)), ((target - F).abs() * m).sum((1, 2))], -1)


def share_sums(result) -> dict[int, tuple[float, float]]:
    """`sides_share_sums` of an `FRAResult`."""
    return sides_share_sums(result.heads, result.q_side, result.k_side, result.scores, result.pattern,
                            result.attn_mask, result.options, result.attn_scale)


def add_sums(acc: dict, sums: dict) -> None:
    """acc {head: [ΣF, ΣN]} += sums {head: (F, N)}."""
    for h, (f, n) in sums.items():
        a = acc.setdefault(h, [0.0, 0.0])
        a[0], a[1] = a[0] + f, a[1] + n


def ratio(f: float, n: float) -> float:
    return f / (f + n) if f + n > 0 else float("nan")


def feature_share(result, b: int = 0) -> dict:
    """Sample `b` of an `FRAResult`: {"cells": [head_index, query_pos, key_pos] share_ij (NaN off the mask or
    where the score is exactly 0), "per_head": {head: share}, "text": share over every selected head}."""
    cells, per_head, f_all, n_all = [], {}, 0.0, 0.0
    for hi, h in enumerate(result.heads):
        F, N = (x.abs() for x in cell_split(result, b, hi))
        total = F + N
        cells.append(torch.where(result.attn_mask & (total > 0), F / total.clamp(min=1e-30),
                                 torch.full_like(F, float("nan"))))
        f, n = float(F[result.attn_mask].sum()), float(N[result.attn_mask].sum())
        per_head[h] = ratio(f, n)
        f_all, n_all = f_all + f, n_all + n
    return {"cells": torch.stack(cells), "per_head": per_head, "text": ratio(f_all, n_all)}


def merge_parts(parts: dict) -> dict:
    """{"<part>": {"<layer>": {"<head>": [ΣF, ΣN]}}} (one part per shard) → {"<layer>": {"<head>": share}}."""
    sums: dict = {}
    for per_layer in parts.values():
        for layer, heads in per_layer.items():
            for head, (f, n) in heads.items():
                acc = sums.setdefault(layer, {}).setdefault(head, [0.0, 0.0])
                acc[0], acc[1] = acc[0] + f, acc[1] + n
    return {layer: {head: ratio(f, n) for head, (f, n) in heads.items()} for layer, heads in sums.items()}

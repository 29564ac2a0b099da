"""The share of the score that features explain, per cell and per text.

A cell's score is a sum of node×node terms t_ij[a, b] (`FRAResult.node_terms`: node 0 is "features", the sum
of the kept features, on both sides). Terms can cancel, so the share is taken on magnitudes:

    share_ij = |t_ij[features, features]| / Σ_ab |t_ij[a, b]|           ∈ [0, 1]
    share_text = Σ_ij |t_ij[features, features]| / Σ_ij Σ_ab |t_ij[a, b]|   over the masked-in cells

so 1 means the feature×feature pairs carry the whole cell, 0 that errors, biases and opaque outputs do.
"""

from __future__ import annotations

import torch


def feature_share(result, b: int = 0) -> dict:
    """{"cells": [head_index, query_pos, key_pos] share_ij (NaN outside the mask), "per_head": {head: share},
    "text": share over every selected head} for sample `b` of an `FRAResult`."""
    cells, per_head, ff_all, tot_all = [], {}, 0.0, 0.0
    for hi, h in enumerate(result.heads):
        t = result.node_terms(b, hi).abs()  # [query_pos, key_pos, n_q_nodes, n_k_nodes]
        ff, total = t[:, :, 0, 0], t.sum((-1, -2))
        mask = result.attn_mask
        share = torch.where(mask & (total > 0), ff / total.clamp(min=1e-30), torch.full_like(ff, float("nan")))
        cells.append(share)
        f, s = float(ff[mask].sum()), float(total[mask].sum())
        per_head[h] = f / s if s > 0 else float("nan")
        ff_all, tot_all = ff_all + f, tot_all + s
    return {"cells": torch.stack(cells), "per_head": per_head,
            "text": ff_all / tot_all if tot_all > 0 else float("nan")}

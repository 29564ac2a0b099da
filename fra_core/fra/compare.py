"""Weights-only pair ranking (U_f·V_g/√d_head) against the data-dependent FRA ranking, and induction
positions of a token sequence (pure torch/pandas, no UI)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from fra_core.fra.cells import aggregates_frame


def induction_positions(tokens: Sequence[int], skip_first: bool = True) -> pd.DataFrame:
    """Cells (query i, key j) where token[i] = token[j − 1] for an earlier j − 1 < i (the induction key).

    The key j is the position right after an earlier occurrence of the current token; skip_first drops
    position 0 (BOS). Columns: query_pos, key_pos, token_id (A), next_id (token at j).
    """
    toks = [int(t) for t in tokens]
    rows = []
    for i in range(1 if skip_first else 0, len(toks)):
        for j in range(1 if skip_first else 0, i):
            if j >= 1 and toks[j - 1] == toks[i] and (j - 1 > 0 or not skip_first):
                rows.append({"query_pos": i, "key_pos": j, "token_id": toks[i], "next_id": toks[j]})
    return pd.DataFrame(rows, columns=["query_pos", "key_pos", "token_id", "next_id"])


# ----------------------------------------------------------------------------- weights vs data
def strength_table(S: torch.Tensor, q_ids: torch.Tensor, k_ids: torch.Tensor, top: int | None = None) -> pd.DataFrame:
    """S [n_q, n_k] for global ids → long table q_gid, k_gid, strength (strongest |S| first, optional top)."""
    flat = S.reshape(-1)
    order = flat.abs().argsort(descending=True)
    if top is not None:
        order = order[:top]
    qi, ki = order // S.shape[1], order % S.shape[1]
    return pd.DataFrame({"q_gid": q_ids[qi].numpy(), "k_gid": k_ids[ki].numpy(), "strength": flat[order].numpy()})


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return float("nan")
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(data: pd.DataFrame, strengths: pd.DataFrame, k: int = 20) -> dict[str, float]:
    """Agreement of the data-dependent ranking (`data`: q_gid, k_gid, abs_sum) with the weights-only one.

    strengths: q_gid, k_gid, strength for the candidate pairs (active q features × active k features).
    overlap_at_k: |top-k by data ∩ top-k by |strength|| / k; spearman: rank correlation of abs_sum and
    |strength| over the pairs seen in the data; spearman_signed: of sum and strength.
    """
    merged = data if "strength" in data else data.merge(strengths, on=["q_gid", "k_gid"], how="left")
    top_data = set(map(tuple, data.nlargest(k, "abs_sum")[["q_gid", "k_gid"]].to_numpy()))
    s = strengths.assign(a=strengths["strength"].abs())
    top_w = set(map(tuple, s.nlargest(k, "a")[["q_gid", "k_gid"]].to_numpy()))
    kk = min(k, len(top_data), len(top_w))
    ok = merged["strength"].notna()
    return {"k": kk, "overlap_at_k": len(top_data & top_w) / kk if kk else float("nan"),
            "spearman": _rank_corr(merged["abs_sum"][ok].to_numpy(), merged["strength"][ok].abs().to_numpy()),
            "spearman_signed": _rank_corr(merged["sum"][ok].to_numpy(), merged["strength"][ok].to_numpy())
            if "sum" in merged else float("nan"),
            "n_data_pairs": int(len(data)), "n_candidates": int(len(strengths))}


def active_gids(acts: pd.DataFrame, offsets: Sequence[int], limit: int = 4096) -> torch.Tensor:
    """Global ids of the features active in `acts` (most frequent first when more than `limit`)."""
    gid = np.asarray(offsets)[acts["source"].to_numpy()] + acts["feature"].to_numpy()
    counts = pd.Series(gid).value_counts()
    return torch.as_tensor(np.sort(counts.index.to_numpy()[:limit]), dtype=torch.long)


def weights_vs_data(model, layer: int, head: int, q_dict, k_dict, result, acts_q: pd.DataFrame,
                    acts_k: pd.DataFrame, k: int = 20):
    """Weights-only strengths of the candidate pairs (features active on each side of the texts) and the
    data-dependent FRA aggregates of `result` for `head`; returns (strengths, data, agreement dict).

    data gains columns strength and weight_rank (rank of |strength| among all candidates, 1 = strongest).
    """
    from fra_core.fra import pair_aggregates, pair_strengths

    oq, ok = result.q_side.offsets, result.k_side.offsets
    q_ids, k_ids = active_gids(acts_q, oq), active_gids(acts_k, ok)
    S = pair_strengths(model, layer, head, q_dict, k_dict, q_features=q_ids, k_features=k_ids).cpu()
    strengths = strength_table(S, q_ids, k_ids)
    strengths["weight_rank"] = np.arange(1, len(strengths) + 1)
    data = aggregates_frame(pair_aggregates(result), oq, ok)
    data = data[data["head"] == head].sort_values("abs_sum", ascending=False, kind="stable").reset_index(drop=True)
    data = data.merge(strengths, on=["q_gid", "k_gid"], how="left")
    return strengths, data, agreement(data, strengths, k)

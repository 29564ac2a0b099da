"""Tables of one FRA result for the explorer pages: one (query, key) cell, a head's scores, aggregates,
error budgets by source (pure torch/pandas, no UI)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from fra_core.errors import FRAStudioError


class ExploreError(FRAStudioError):
    """Bad explorer input (positions out of range, masked cells, missing features)."""

# ----------------------------------------------------------------------------- one cell
def check_cell(result, b: int, hi: int, query_pos: int, key_pos: int) -> None:
    T = result.scores.shape[-1]
    if not 0 <= query_pos < T or not 0 <= key_pos < T:
        raise ExploreError(f"(query {query_pos}, key {key_pos}) is outside the text: positions are 0..{T - 1}")
    if not bool(result.attn_mask[query_pos, key_pos]):
        if key_pos > query_pos:
            raise ExploreError(f"key {key_pos} comes after query {query_pos}: a causal head never attends there")
        raise ExploreError(f"key {key_pos} is outside query {query_pos}'s attention window: this layer's mask "
                           "hides it (sliding-window attention)")
    if not 0 <= hi < len(result.heads) or not 0 <= b < result.scores.shape[0]:
        raise ExploreError(f"sample {b} / head index {hi} not in this result (heads {result.heads})")


def cell_pairs(result, b: int, hi: int, query_pos: int, key_pos: int, acts_q: pd.DataFrame | None = None,
               acts_k: pd.DataFrame | None = None, top: int = 20) -> pd.DataFrame:
    """The kept feature pairs of one cell, strongest |value| first, with each feature's activation."""
    check_cell(result, b, hi, query_pos, key_pos)
    e = result.entries
    sel = ((e["batch"] == b) & (e["head"] == result.heads[hi]) & (e["query_pos"] == query_pos)
           & (e["key_pos"] == key_pos))
    df = pd.DataFrame({c: e[c][sel].cpu().numpy() for c in ("q_source", "q_feature", "k_source", "k_feature", "value")})
    df = df.reindex(df["value"].abs().sort_values(ascending=False).index).head(top).reset_index(drop=True)
    for side, acts, pos in (("q", acts_q, query_pos), ("k", acts_k, key_pos)):
        lookup = {}
        if acts is not None:
            here = acts[(acts["batch"] == b) & (acts["pos"] == pos)]
            lookup = {(int(s), int(f)): float(v)
                      for s, f, v in zip(here["source"], here["feature"], here["activation"])}
        df[f"{side}_act"] = [lookup.get((int(s), int(f)), float("nan"))
                             for s, f in zip(df[f"{side}_source"], df[f"{side}_feature"])]
    target = float(result.target(b, hi)[query_pos, key_pos])
    df["share"] = df["value"] / target if abs(target) > 1e-12 else float("nan")
    return df[["q_source", "q_feature", "q_act", "k_source", "k_feature", "k_act", "value", "share"]]


def cell_terms(result, b: int, hi: int, query_pos: int, key_pos: int) -> pd.DataFrame:
    """Every term of one cell: kept pairs, the feature×feature rest, and each non-feature node×node term.

    Columns: term, q_node, k_node, value (transformed like the result's values). Σ value = the real
    (transformed) score up to float error.
    """
    check_cell(result, b, hi, query_pos, key_pos)
    terms = result.node_terms(b, hi)[query_pos, key_pos]  # [n_q_nodes, n_k_nodes]
    kept = float(result.kept_sum[b, hi, query_pos, key_pos])
    rows = [{"term": "kept feature pairs", "q_node": "features", "k_node": "features", "value": kept},
            {"term": "other feature pairs", "q_node": "features", "k_node": "features",
             "value": float(terms[0, 0]) - kept}]
    for a, qn in enumerate(result.q_node_names):
        for c, kn in enumerate(result.k_node_names):
            if a or c:
                rows.append({"term": f"{qn} × {kn}", "q_node": qn, "k_node": kn, "value": float(terms[a, c])})
    return pd.DataFrame(rows)


def exactness(result, b: int, hi: int, query_pos: int, key_pos: int) -> dict[str, float]:
    """Σ of all terms of a cell vs the real score: sum, actual, abs_error, rel_error (vs max |score|)."""
    check_cell(result, b, hi, query_pos, key_pos)
    total = float(result.node_terms(b, hi)[query_pos, key_pos].sum())
    target = result.target(b, hi)
    actual = float(target[query_pos, key_pos])
    abs_err = abs(total - actual)
    return {"sum_of_terms": total, "actual": actual, "abs_error": abs_err,
            "rel_error": abs_err / max(abs(actual), 1e-12),
            "rel_error_vs_max": abs_err / max(float(target.abs().max()), 1e-12)}


def score_frame(result, b: int, hi: int, str_tokens: Sequence[str]) -> pd.DataFrame:
    """Long table of the attention mask's cells: query_pos, key_pos, labels, attention, score."""
    m = result.attn_mask.cpu()
    q, k = torch.nonzero(m, as_tuple=True)
    labels = [f"{i}:{t}" for i, t in enumerate(str_tokens)]
    return pd.DataFrame({"query_pos": q.numpy(), "key_pos": k.numpy(),
                         "query": [labels[i] for i in q.tolist()], "key": [labels[j] for j in k.tolist()],
                         "attention": result.pattern[b, hi].cpu()[q, k].numpy(),
                         "score": result.target(b, hi).cpu()[q, k].numpy()})


def head_summary(result, b: int = 0) -> pd.DataFrame:
    """Per head of a result: max attention off BOS, completeness error, kept pairs, strongest pair."""
    e = result.entries
    rows = []
    for hi, h in enumerate(result.heads):
        tgt = result.target(b, hi)
        err = float((result.node_terms(b, hi).sum((2, 3)) - tgt).abs().max()) / max(float(tgt.abs().max()), 1e-12)
        sel = (e["batch"] == b) & (e["head"] == h)
        row = {"head": h, "mean_attn_off_bos": float(result.pattern[b, hi][1:, 1:].sum(-1).mean()),
               "max_abs_score": float(tgt.abs().max()), "rel_error": err, "kept_pairs": int(sel.sum())}
        if sel.any():
            i = int(e["value"][sel].abs().argmax())
            pick = {c: e[c][sel][i].item() for c in ("query_pos", "key_pos", "q_feature", "k_feature", "value")}
            row.update({f"top_{c}": v for c, v in pick.items()})
        rows.append(row)
    return pd.DataFrame(rows)



def aggregates_frame(agg: dict[str, torch.Tensor], offsets_q: Sequence[int], offsets_k: Sequence[int]) -> pd.DataFrame:
    """`pair_aggregates` output as a DataFrame with global ids q_gid / k_gid added."""
    df = pd.DataFrame({c: v.cpu().numpy() for c, v in agg.items()})
    df["q_gid"] = np.asarray(offsets_q)[df["q_source"].to_numpy()] + df["q_feature"].to_numpy()
    df["k_gid"] = np.asarray(offsets_k)[df["k_source"].to_numpy()] + df["k_feature"].to_numpy()
    return df


def split_gid(gid: int, offsets: Sequence[int]) -> tuple[int, int]:
    """Global id → (source, local feature)."""
    src = int(np.searchsorted(np.asarray(offsets), gid, side="right") - 1)
    return src, int(gid - offsets[src])


def budget_frame(budgets: Sequence[dict[str, float]], labels: Sequence[str]) -> pd.DataFrame:
    """Error budgets (one per text) → rows per (text, source) with mean |contribution| and share."""
    from fra_core.fra.validate import SOURCES

    rows = [{"text": lab, "source": s, "mean_abs": bud[s], "share": bud[f"{s}_share"]}
            for bud, lab in zip(budgets, labels) for s in SOURCES]
    return pd.DataFrame(rows)


def terms_by_source(terms: pd.DataFrame) -> pd.DataFrame:
    """`cell_terms` grouped by error-budget source (sae_error > truncation > b_dec > bias > other), with
    the feature×feature value split into kept pairs and the rest. Columns: kind, value."""
    from fra_core.fra.validate import SOURCES, node_source

    def kind(term: str, q: str, k: str) -> str:
        if q == "features" and k == "features":
            return term
        return SOURCES[min(SOURCES.index(node_source(q)), SOURCES.index(node_source(k)))]

    out = terms.assign(kind=[kind(t, q, k) for t, q, k in zip(terms.term, terms.q_node, terms.k_node)])
    return out.groupby("kind", as_index=False, sort=False)["value"].sum()

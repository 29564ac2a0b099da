"""Explorer helpers for the single-text, data-independent and validation pages (pure torch/pandas).

They turn an `FRAResult` into tables for one (query, key) cell, describe features by the tokens they
fire on, find induction positions in a token sequence, and compare the weights-only pair ranking
(U_f·V_g/√d_head) with the data-dependent FRA ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

NEURONPEDIA = "https://www.neuronpedia.org/gpt2-small/{layer}-att-kk/{feature}"


class ExploreError(ValueError):
    """Bad explorer input (positions out of range, masked cells, missing features)."""


def as_list(dictionary) -> list:
    """An FRA dictionary side (one SAE or a list of hook_z SAEs) as a list of SAEs."""
    return list(dictionary) if isinstance(dictionary, (list, tuple)) else [dictionary]


def hook_layer(hook: str) -> int | None:
    """`blocks.L.…` → L (None for other hooks)."""
    parts = (hook or "").split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None


def neuronpedia_url(hook: str, feature: int, ckkissane: bool) -> str | None:
    """Neuronpedia page of a GPT-2 Small ckkissane attention-output feature (`{layer}-att-kk`), else None."""
    layer = hook_layer(hook)
    if not ckkissane or layer is None or not hook.endswith("attn.hook_z"):
        return None
    return NEURONPEDIA.format(layer=layer, feature=int(feature))


# ----------------------------------------------------------------------------- activations
@torch.no_grad()
def feature_activations(model, tokens: torch.Tensor, dictionary) -> pd.DataFrame:
    """Non-zero SAE activations of every source of a dictionary side on `tokens` [batch, pos].

    Columns: batch, pos, source (index into the side's SAEs), feature, activation.
    """
    saes = as_list(dictionary)
    tokens = tokens if tokens.ndim == 2 else tokens[None]
    hooks = [s.cfg.metadata.hook_name for s in saes]
    stop = max(hook_layer(h) or 0 for h in hooks) + 1
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in hooks,
                                    stop_at_layer=min(stop, model.cfg.n_layers))
    frames = []
    for s, (sae, hook) in enumerate(zip(saes, hooks)):
        x = cache[hook]
        if getattr(sae.cfg, "reshape_activations", "none") != "hook_z":
            x = x.flatten(2)
        acts = sae.encode(x.to(sae.W_dec.dtype)).float().cpu()
        b, p, f = torch.nonzero(acts != 0, as_tuple=True)
        frames.append(pd.DataFrame({"batch": b.numpy(), "pos": p.numpy(), "source": s, "feature": f.numpy(),
                                    "activation": acts[b, p, f].numpy()}))
    return pd.concat(frames, ignore_index=True)


def feature_profiles(acts: pd.DataFrame, str_tokens: Sequence[Sequence[str]], n_top: int = 3,
                     min_count: int = 2) -> pd.DataFrame:
    """Describe each (source, feature) by the tokens it fires on, from `feature_activations` output.

    top_token: the token carrying the largest share of the feature's total activation (top_token_share);
    top_prev: the same for the token before it (top_prev_share). after: the `n_top` previous tokens with
    the highest mean activation of the feature over all positions that follow them (tokens seen at least
    `min_count` times) — frequency-corrected, so a "previous token ∈ {A, B, C}" feature lists A, B, C.
    n: activations seen, mean_act: their mean.
    """
    cols = ["source", "feature", "top_token", "top_token_share", "top_prev", "top_prev_share", "after", "n",
            "mean_act"]
    if acts.empty:
        return pd.DataFrame(columns=cols)
    df = acts.copy()
    df["token"] = [str_tokens[b][p] for b, p in zip(df["batch"], df["pos"])]
    df["prev"] = [str_tokens[b][p - 1] if p > 0 else "∅" for b, p in zip(df["batch"], df["pos"])]
    df["mass"] = df["activation"].abs()
    total = df.groupby(["source", "feature"])["mass"].sum().rename("total")

    def best(col: str, name: str) -> pd.DataFrame:
        g = df.groupby(["source", "feature", col])["mass"].sum().reset_index()
        g = g.sort_values("mass", ascending=False, kind="stable").drop_duplicates(["source", "feature"])
        g = g.set_index(["source", "feature"]).join(total)
        return pd.DataFrame({name: g[col], f"{name}_share": g["mass"] / g["total"]})

    counts = pd.Series([toks[p - 1] if p > 0 else "∅" for toks in str_tokens for p in range(len(toks))]).value_counts()
    g = df.groupby(["source", "feature", "prev"])["mass"].sum().reset_index()
    g["seen"] = g["prev"].map(counts)
    g = g[g["seen"] >= min_count].assign(rate=lambda x: x["mass"] / x["seen"])
    after = (g.sort_values(["rate", "prev"], ascending=[False, True], kind="stable")
             .groupby(["source", "feature"]).head(n_top).groupby(["source", "feature"])["prev"].agg(tuple)
             .rename("after"))
    stats = df.groupby(["source", "feature"])["activation"].agg(n="size", mean_act="mean")
    out = best("token", "top_token").join(best("prev", "top_prev")).join(after).join(stats).reset_index()
    out["after"] = [a if isinstance(a, tuple) else () for a in out["after"]]
    return out[cols]


def describe(profiles: pd.DataFrame, source: int, feature: int) -> str:
    """One-line description: 'tok ‘A’ 90% · after ‘B’/‘C’/‘D’' (or '—' when the feature never fired)."""
    if profiles is None or profiles.empty:
        return "—"
    row = profiles[(profiles["source"] == source) & (profiles["feature"] == feature)]
    if row.empty:
        return "—"
    r = row.iloc[0]
    after = "/".join(f"‘{t}’" for t in r.after) or "—"
    return f"tok ‘{r.top_token}’ {r.top_token_share:.0%} · after {after}"


def token_strip(acts: pd.DataFrame, str_tokens: Sequence[str], profiles: pd.DataFrame | None = None,
                batch: int = 0, top: int = 3, source_names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per token of sample `batch`: pos, token, n_active, its `top` features by |activation|."""
    a = acts[acts["batch"] == batch]
    rows = []
    for p, tok in enumerate(str_tokens):
        here = a[a["pos"] == p].reindex(a[a["pos"] == p]["activation"].abs().sort_values(ascending=False).index)
        bits = []
        for r in here.head(top).itertuples():
            src = f"{source_names[r.source]}:" if source_names and len(source_names) > 1 else ""
            desc = describe(profiles, r.source, r.feature) if profiles is not None else ""
            bits.append(f"{src}f{r.feature}={r.activation:.2f}" + (f" [{desc}]" if desc and desc != "—" else ""))
        rows.append({"pos": p, "token": tok, "n_active": len(here), "top features": "; ".join(bits)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- one cell
def check_cell(result, b: int, hi: int, query_pos: int, key_pos: int) -> None:
    T = result.scores.shape[-1]
    if not 0 <= query_pos < T or not 0 <= key_pos < T:
        raise ExploreError(f"(query {query_pos}, key {key_pos}) is outside the text: positions are 0..{T - 1}")
    if not bool(result.attn_mask[query_pos, key_pos]):
        raise ExploreError(f"key {key_pos} comes after query {query_pos}: a causal head never attends there")
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


# ----------------------------------------------------------------------------- induction
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

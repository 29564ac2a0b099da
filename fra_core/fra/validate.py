"""Validation: the error budget of an FRA result and the loss recovered by FRA-reconstructed scores.

Error budget. Every node×node term of a cell is attributed to one source by priority (a term that
involves the SAE error is "sae_error" even if its other side is a feature, and so on):
sae_error > truncation > b_dec > bias (b_Q/b_K, ln1.b, b_O) > other (embeddings, MLP/attention outputs)
> features (feature×feature only). Σ sources = the (transformed) score; "numerical" = Σ − actual.
Reported per source: mean |Σ of its terms| over the cells of the attention mask, and that divided by
mean |score| (a share; shares can sum to more than 1 when sources cancel).

Loss recovered. Replace `hook_attn_scores` of the chosen heads by the sum of a subset of the raw
(untransformed) terms, run the model, and compare: fraction = (L_ablated − L_patched) /
(L_ablated − L_clean), with zero-ablation (all allowed scores 0 ⇒ uniform attention) and
mean-ablation (each score replaced by its batch mean) baselines.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SOURCES = ("sae_error", "truncation", "b_dec", "bias", "other", "features")


def node_source(name: str) -> str:
    """The error-budget source of a node name."""
    if name == "features":
        return "features"
    for prefix, src in (("sae_error", "sae_error"), ("truncation", "truncation"), ("b_dec", "b_dec"),
                        ("bias", "bias"), ("ln1.b", "bias"), ("b_O", "bias")):
        if name.startswith(prefix):
            return src
    return "other"


def _term_sources(result) -> torch.Tensor:
    """[n_q_nodes, n_k_nodes] index into SOURCES of each node pair (the higher-priority side wins)."""
    q = [SOURCES.index(node_source(n)) for n in result.q_node_names]
    k = [SOURCES.index(node_source(n)) for n in result.k_node_names]
    return torch.minimum(torch.tensor(q)[:, None], torch.tensor(k)[None, :])


def error_budget(result) -> dict[str, float]:
    """Mean |contribution| per source, its share of mean |score|, kept-pair share, numerical error."""
    src = _term_sources(result)
    sums = {s: 0.0 for s in SOURCES}
    kept = numerical = score = 0.0
    n_cells = 0
    for b in range(result.scores.shape[0]):
        for hi in range(len(result.heads)):
            terms, tgt, m = result.node_terms(b, hi), result.target(b, hi), result.attn_mask
            for i, s in enumerate(SOURCES):
                part = (terms * (src == i).to(terms.dtype)).sum((2, 3))
                sums[s] += float(part.abs()[m].sum())
            kept += float(result.kept_sum[b, hi].abs()[m].sum())
            numerical += float((terms.sum((2, 3)) - tgt).abs()[m].sum())
            score += float(tgt.abs()[m].sum())
            n_cells += int(m.sum())
    out = {f"{s}": v / n_cells for s, v in sums.items()}
    mean_score = score / n_cells
    out.update({f"{s}_share": sums[s] / max(score, 1e-12) for s in SOURCES})
    out.update(mean_abs_score=mean_score, kept_pairs=kept / n_cells, kept_pairs_share=kept / max(score, 1e-12),
               numerical=numerical / n_cells, truncated=float(result.truncated))
    return out


def reconstructed_scores(result, include: Sequence[str] = ()) -> torch.Tensor:
    """[batch, head_index, query_pos, key_pos] Σ of raw terms whose q and k nodes are both in
    {"features"} ∪ include (include=() → feature×feature only; node names or source names)."""
    def allowed(names):
        return torch.tensor([n == "features" or n in include or node_source(n) in include for n in names])
    sel = (allowed(result.q_node_names)[:, None] & allowed(result.k_node_names)[None, :]).to(result.scores.dtype)
    out = torch.zeros_like(result.scores)
    for b in range(out.shape[0]):
        for hi in range(out.shape[1]):
            out[b, hi] = (result.node_terms(b, hi, raw=True) * sel).sum((2, 3))
    return out


def loss_recovered(model, tokens, result, include: Sequence[str] = ()) -> dict[str, float]:
    """Clean, patched (FRA-reconstructed scores), zero- and mean-ablated losses and fractions recovered.

    `tokens` must be the batch `result` was computed on.
    """
    tokens = tokens if tokens.ndim == 2 else tokens[None]
    hook = f"blocks.{result.layer}.attn.hook_attn_scores"
    heads, m = result.heads, result.attn_mask
    recon = reconstructed_scores(result, include)
    clean_scores = result.scores

    def patch_with(new):
        def fn(scores, hook):
            scores = scores.clone()
            scores[:, heads] = torch.where(m, new, scores[:, heads])
            return scores
        return fn

    def loss(new=None):
        with torch.no_grad():
            hooks = [] if new is None else [(hook, patch_with(new))]
            return float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks))

    mean = torch.where(m, clean_scores, torch.zeros_like(clean_scores)).mean(0, keepdim=True).expand_as(clean_scores)
    out = {"clean": loss(), "patched": loss(recon), "zero_ablated": loss(torch.zeros_like(recon)),
           "mean_ablated": loss(mean)}
    for base in ("zero", "mean"):
        gap = out[f"{base}_ablated"] - out["clean"]
        out[f"fraction_recovered_{base}"] = (out[f"{base}_ablated"] - out["patched"]) / gap if abs(gap) > 1e-12 else float("nan")
    return out

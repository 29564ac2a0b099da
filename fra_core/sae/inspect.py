"""Inspect an SAE on a model over a set of texts: sparsity, density, top contexts, pattern search,
decoder -> vocab projection, and a comparison table across SAEs.

`collect_activations` runs the model once and keeps the SAE's non-zero activations as flat arrays
(sample, pos, feature, value), so d_sae = 24 576 SAEs on hundreds of texts fit in memory; every view
below is a cheap numpy/pandas reduction of that. Results are pandas DataFrames ready for charts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fra_core.sae.loaders import SAECompatibilityError, check_sae_fits_model, sae_input

SPARSITY_TRAP_FRACTION = 0.10  # L0 above this fraction of d_sae: the SAE is dense, not a dictionary


@dataclass
class SAEActivations:
    """Sparse SAE activations over texts. `tokens`/`mask`: [sample, pos]; flat arrays: one row per
    non-zero (sample, pos, feature) activation."""

    hook_name: str
    d_sae: int
    tokens: np.ndarray          # [sample, pos] int64 (padding where ~mask)
    mask: np.ndarray            # [sample, pos] bool
    str_tokens: list[list[str]]
    sample: np.ndarray          # [nnz] int32
    pos: np.ndarray             # [nnz] int32
    feature: np.ndarray         # [nnz] int32
    value: np.ndarray           # [nnz] float32
    l0: np.ndarray              # [sample, pos] active features per token (0 where ~mask)
    explained_variance: float
    mse: float

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def mean_l0(self) -> float:
        return float(self.l0[self.mask].mean()) if self.n_tokens else 0.0


def _tokenize(model, texts: list[str], context_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [model.to_tokens(t, prepend_bos=True, truncate=True)[0, :context_size] for t in texts if t.strip()]
    if not rows:
        raise ValueError("no (non-empty) texts to run the SAE on")
    width = max(len(r) for r in rows)
    pad = getattr(model.tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else pad
    tokens = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, :len(r)], mask[i, :len(r)] = r.cpu(), True
    return tokens, mask


@torch.no_grad()
def collect_activations(model, sae, texts: list[str], context_size: int | None = None,
                        batch_size: int = 16) -> SAEActivations:
    """Run `model` on `texts` (BOS prepended, truncated to `context_size`) and encode the SAE's hook."""
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    hook = check_sae_fits_model(sae, model)
    context_size = min(context_size or model.cfg.n_ctx, model.cfg.n_ctx)
    tokens, mask = _tokenize(model, list(texts), context_size)
    stop = extract_stop_at_layer_from_tlens_hook_name(hook)
    device = next(sae.parameters()).device
    parts: list[tuple] = []
    l0 = torch.zeros(tokens.shape, dtype=torch.int32)
    sse, xs_sum, xs_sq, n = 0.0, None, 0.0, 0
    for start in range(0, len(tokens), batch_size):
        tok, m = tokens[start:start + batch_size], mask[start:start + batch_size]
        _, cache = model.run_with_cache(tok.to(model.cfg.device), names_filter=[hook], stop_at_layer=stop)
        x = cache[hook].to(device)
        feats = sae.encode(sae_input(sae, x))                          # [batch, pos, d_sae]
        recon = sae.decode(feats).reshape(*x.shape[:2], -1)
        x_flat = x.reshape(*x.shape[:2], -1)
        mm = m.to(device)
        feats = feats * mm[..., None]
        l0[start:start + len(tok)] = (feats > 0).sum(-1).int().cpu()
        b, p, f = torch.nonzero(feats > 0, as_tuple=True)
        parts.append(((b + start).cpu(), p.cpu(), f.cpu(), feats[b, p, f].float().cpu()))
        xv = x_flat[mm]                                               # [tokens, d_in]
        sse += float((recon[mm] - xv).pow(2).sum())
        xs_sum = xv.sum(0) if xs_sum is None else xs_sum + xv.sum(0)
        xs_sq += float(xv.pow(2).sum())
        n += xv.shape[0]
    total_var = xs_sq - float(xs_sum.pow(2).sum()) / max(n, 1)      # sum_i |x_i - mean|^2
    cat = [torch.cat(col).numpy() for col in zip(*parts)]
    str_tokens = [[str(s) for s in model.to_str_tokens(tokens[i, :int(mask[i].sum())])] for i in range(len(tokens))]
    return SAEActivations(
        hook_name=hook, d_sae=int(sae.cfg.d_sae), tokens=tokens.numpy(), mask=mask.numpy(), str_tokens=str_tokens,
        sample=cat[0].astype(np.int32), pos=cat[1].astype(np.int32), feature=cat[2].astype(np.int32),
        value=cat[3].astype(np.float32), l0=l0.numpy(), explained_variance=1.0 - sse / max(total_var, 1e-12),
        mse=sse / max(n, 1),
    )


# ----------------------------------------------------------------------------- sparsity views
def l0_histogram(acts: SAEActivations) -> pd.DataFrame:
    """Columns l0, tokens: how many tokens have each number of active features."""
    values, counts = np.unique(acts.l0[acts.mask], return_counts=True)
    return pd.DataFrame({"l0": values.astype(int), "tokens": counts.astype(int)})


def activation_histogram(acts: SAEActivations, bins: int = 40, log: bool = True) -> pd.DataFrame:
    """Histogram of the non-zero activation values (log10 bins by default): bin_start, bin_end, count."""
    vals = acts.value[acts.value > 0]
    if vals.size == 0:
        return pd.DataFrame({"bin_start": [], "bin_end": [], "count": []})
    data = (np.log10(vals) if log else vals).astype(np.float64)
    lo, hi = float(data.min()), float(data.max())
    spread = hi - lo > 1e-4 * max(1.0, abs(hi))                     # all equal: one bin around the value
    counts, edges = np.histogram(data, bins=bins if spread else 1, range=(lo, hi) if spread else (lo - 0.5, lo + 0.5))
    return pd.DataFrame({"bin_start": edges[:-1], "bin_end": edges[1:], "count": counts,
                         "scale": "log10(activation)" if log else "activation"})


def feature_density(acts: SAEActivations) -> pd.DataFrame:
    """Per feature: firing fraction over tokens (density), log10 density, mean and max activation."""
    d = acts.d_sae
    fires = np.bincount(acts.feature, minlength=d)
    total = np.bincount(acts.feature, weights=acts.value, minlength=d)
    mx = np.zeros(d, dtype=np.float32)
    np.maximum.at(mx, acts.feature, acts.value)
    density = fires / max(acts.n_tokens, 1)
    with np.errstate(divide="ignore"):
        log_density = np.where(fires > 0, np.log10(np.maximum(density, 1e-12)), -np.inf)
    return pd.DataFrame({"feature": np.arange(d), "fires": fires, "density": density, "log10_density": log_density,
                         "mean_act": np.divide(total, np.maximum(fires, 1)), "max_act": mx})


def dead_features(acts: SAEActivations) -> np.ndarray:
    """Features that never fire on these texts."""
    return np.flatnonzero(np.bincount(acts.feature, minlength=acts.d_sae) == 0)


def sparsity_warning(l0: float, d_sae: int, fraction: float = SPARSITY_TRAP_FRACTION) -> str | None:
    """The sparsity trap: a message when mean L0 exceeds `fraction` of d_sae, else None."""
    if d_sae > 0 and l0 > fraction * d_sae:
        return (f"This SAE is dense: mean L0 = {l0:.1f} active features per token, {100 * l0 / d_sae:.0f} % of "
                f"d_sae = {d_sae} (a useful dictionary keeps it under {100 * fraction:.0f} %). Its features are "
                f"not individually meaningful; retrain with a larger sparsity coefficient (standard/jumprelu) "
                f"or a smaller k (topk/batchtopk).")
    return None


# ----------------------------------------------------------------------------- features and tokens
def top_contexts(acts: SAEActivations, feature: int, k: int = 10, window: int = 6) -> pd.DataFrame:
    """The `k` strongest activations of `feature`: sample, pos, token, activation, left/right context."""
    if not 0 <= feature < acts.d_sae:
        raise ValueError(f"feature {feature} is out of range [0, {acts.d_sae})")
    rows = np.flatnonzero(acts.feature == feature)
    rows = rows[np.argsort(-acts.value[rows], kind="stable")[:k]]
    out = []
    for r in rows:
        s, p = int(acts.sample[r]), int(acts.pos[r])
        toks = acts.str_tokens[s]
        out.append({"sample": s, "pos": p, "token": toks[p], "activation": float(acts.value[r]),
                    "left": " ".join(toks[max(0, p - window):p]), "right": " ".join(toks[p + 1:p + 1 + window])})
    return pd.DataFrame(out, columns=["sample", "pos", "token", "activation", "left", "right"])


def _token_matcher(pattern: str, mode: str):
    if mode == "exact":
        return lambda t: t.strip() == pattern
    if mode == "suffix":
        return lambda t: t.strip().endswith(pattern)
    if mode == "prefix":
        return lambda t: t.strip().startswith(pattern)
    if mode == "regex":
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return lambda t: rx.search(t) is not None
    if mode == "substring":
        return lambda t: pattern in t
    raise ValueError(f"mode must be substring, exact, prefix, suffix or regex; got {mode!r}")


def match_mask(acts: SAEActivations, pattern: str, mode: str = "substring", offset: int = 0) -> np.ndarray:
    """[sample, pos] bool: tokens at `pos` whose token at `pos - offset` matches (offset 1 = previous token)."""
    if not pattern:
        raise ValueError("empty search pattern")
    match = _token_matcher(pattern, mode)
    out = np.zeros(acts.mask.shape, dtype=bool)
    for s, toks in enumerate(acts.str_tokens):
        for p in range(offset, len(toks)):
            out[s, p] = match(toks[p - offset])
    return out & acts.mask


def search_features(acts: SAEActivations, pattern: str, mode: str = "substring", offset: int = 0,
                    top: int = 20) -> pd.DataFrame:
    """Features that fire on tokens matching `pattern` (e.g. suffix "am"): ranked by mean activation on
    matching tokens minus mean activation on all other tokens. `offset=1` matches the previous token."""
    hits = match_mask(acts, pattern, mode, offset)
    n_on, n_off = int(hits.sum()), int(acts.n_tokens - hits.sum())
    if n_on == 0:
        raise ValueError(f"no token matches {pattern!r} ({mode}) in these texts")
    on = hits[acts.sample, acts.pos]
    d = acts.d_sae
    sum_on = np.bincount(acts.feature[on], weights=acts.value[on], minlength=d)
    sum_off = np.bincount(acts.feature[~on], weights=acts.value[~on], minlength=d)
    fire_on = np.bincount(acts.feature[on], minlength=d)
    mean_on, mean_off = sum_on / n_on, sum_off / max(n_off, 1)
    df = pd.DataFrame({"feature": np.arange(d), "mean_on_match": mean_on, "mean_off_match": mean_off,
                       "score": mean_on - mean_off, "frac_match_tokens_firing": fire_on / n_on,
                       "precision": np.divide(sum_on, np.maximum(sum_on + sum_off, 1e-12))})
    df = df[df["mean_on_match"] > 0].sort_values("score", ascending=False, kind="stable").head(top)
    return df.assign(n_match=n_on).reset_index(drop=True)


def decoder_residual_directions(sae, model, features: torch.Tensor | None = None) -> torch.Tensor:
    """Each feature's decoder row as a residual-stream direction [n_features, d_model].

    Residual-space hooks (resid_pre/mid/post, ln*.hook_normalized, attn_out, mlp_out): the row itself.
    hook_z: W_dec[f].view(head_index, d_head) summed through W_O of that layer. MLP neurons: through W_out.
    """
    hook = sae.cfg.metadata.hook_name or ""
    W_dec = sae.W_dec.detach() if features is None else sae.W_dec.detach()[features]
    W_dec = W_dec.to(model.W_U.device, model.W_U.dtype)
    layer = int(hook.split(".")[1]) if hook.startswith("blocks.") else None
    if hook.endswith("attn.hook_z"):
        W_O = model.W_O[layer]                                       # [head_index, d_head, d_model]
        return torch.einsum("fhd,hdm->fm", W_dec.view(W_dec.shape[0], *W_O.shape[:2]), W_O)
    if hook.endswith(("mlp.hook_post", "mlp.hook_pre")) and layer is not None:
        if hook.endswith("hook_pre"):
            raise SAECompatibilityError(f"{hook} is before the MLP non-linearity: no direct vocab projection")
        return W_dec @ model.W_out[layer]
    if W_dec.shape[-1] != model.cfg.d_model or not re.search(r"(hook_resid_|hook_normalized|_out$|hook_embed)", hook):
        raise SAECompatibilityError(f"no residual-stream direction for an SAE on {hook!r} (d_in {W_dec.shape[-1]})")
    return W_dec


@torch.no_grad()
def vocab_projection(sae, model, feature: int, k: int = 10) -> pd.DataFrame:
    """Top promoted and suppressed tokens of a feature: its residual direction @ W_U (direct logit effect)."""
    if not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(f"feature {feature} is out of range [0, {sae.cfg.d_sae})")
    direction = decoder_residual_directions(sae, model, torch.tensor([feature]))[0]
    logits = direction @ model.W_U                                     # [d_vocab]
    top, bottom = torch.topk(logits, k), torch.topk(-logits, k)
    def name(t) -> str:
        return model.to_single_str_token(int(t)) if model.tokenizer is not None else f"#{int(t)}"

    rows = [{"kind": "promoted", "rank": i + 1, "token": name(t), "logit": float(v)}
            for i, (v, t) in enumerate(zip(top.values, top.indices))]
    rows += [{"kind": "suppressed", "rank": i + 1, "token": name(t), "logit": -float(v)}
             for i, (v, t) in enumerate(zip(bottom.values, bottom.indices))]
    return pd.DataFrame(rows)


def summarize(name: str, acts: SAEActivations) -> dict:
    dead = dead_features(acts)
    dens = feature_density(acts)["density"].to_numpy()
    return {"sae": name, "hook": acts.hook_name, "d_sae": acts.d_sae, "tokens": acts.n_tokens,
            "mean_l0": acts.mean_l0, "l0_fraction": acts.mean_l0 / max(acts.d_sae, 1),
            "explained_variance": acts.explained_variance, "mse": acts.mse, "dead": int(dead.size),
            "dead_fraction": dead.size / max(acts.d_sae, 1),
            "median_density_alive": float(np.median(dens[dens > 0])) if (dens > 0).any() else 0.0,
            "dense_warning": sparsity_warning(acts.mean_l0, acts.d_sae) is not None}


def compare_saes(results: dict[str, SAEActivations]) -> pd.DataFrame:
    """One row per SAE (e.g. different layers) with the headline sparsity / fidelity figures."""
    return pd.DataFrame([summarize(name, acts) for name, acts in results.items()])

"""Describe SAE features by what they fire on: activations on texts, token profiles, one-line
descriptions, Neuronpedia links (pure torch/pandas, no UI)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

NEURONPEDIA = "https://www.neuronpedia.org/gpt2-small/{layer}-att-kk/{feature}"

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

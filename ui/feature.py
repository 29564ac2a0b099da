"""The Feature page's views (one feature of one SAE, from stored runs; weight-based parts on demand).

Stored parts never import torch: contexts with per-token highlighting, the activation histogram, FRA
partners per head. `weight_views` (behind a button) loads the model and the SAE: decoder → vocabulary
projection (through W_O then W_U for hook_z SAEs, W_U for residual-stream ones) and the strongest
partners from the weights (`fra_core.fra.top_partners`).
"""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from ui import tables

HIGHLIGHT = "255, 140, 0"  # rgb of the activation highlight


def meaning(info: dict) -> str:
    """The one meaning string of a feature everywhere: the human label, else the automatic one."""
    return info.get("label") or info.get("auto_label") or "— (no label and no token counts in this run)"


def context_html(tokens: list[str], acts: list[float], center: int, scale: float) -> str:
    """One context: each token shaded by the feature's activation on it (relative to `scale`), the
    activating token boxed, the activation in each token's tooltip."""
    spans = []
    for i, (tok, a) in enumerate(zip(tokens, acts)):
        alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, abs(a) / scale))
        border = "border:1px solid #333;" if i == center else ""
        text = html.escape(tok.replace("\n", "⏎")) or "&nbsp;"
        spans.append(f'<span title="{a:.3g}" style="background:rgba({HIGHLIGHT},{alpha:.2f});{border}'
                     f'padding:0 2px;border-radius:3px;margin:0 1px">{text}</span>')
    return "<div style='font-family:monospace;line-height:1.9'>" + "".join(spans) + "</div>"


def contexts(df: pd.DataFrame, scale: float, caption: str | None = None) -> None:
    """Rows of `store.feature_queries.feature_contexts`: one highlighted line each, its activation first."""
    if caption:
        st.caption(caption)
    lines = [f"<div style='display:flex;gap:8px'><code style='min-width:4.5em'>{r.value:.3g}</code>"
             f"{context_html(list(r.tokens), list(r.acts), int(r.center), scale)}"
             f"<span style='color:#888;font-size:0.8em'>sample {r.sample} · pos {r.pos}</span></div>"
             for r in df.itertuples()]
    st.html("".join(lines))


def histogram(hist: pd.DataFrame):
    """Bars of the log2-spaced activation bins, one labelled bar per bin (in activation order)."""
    import altair as alt

    df = hist.assign(bin=[f"{lo:.3g}–{hi:.3g}" for lo, hi in zip(hist["bin_lo"], hist["bin_hi"])])
    return alt.Chart(df, title="Activations (log₂-spaced bins)").mark_bar().encode(
        x=alt.X("bin:N", title="activation", sort=list(df["bin"]), axis=alt.Axis(labelAngle=-45, labelOverlap=False)),
        y=alt.Y("count:Q", title="active tokens"), tooltip=["bin", "count"]).properties(height=220)


def partners_table(df: pd.DataFrame, sae_of_src: dict[int, str | None], model: str | None, run: int,
                   metric_label: str) -> tuple[pd.DataFrame, dict]:
    """Per-head partner rows (`partners_by_head`) with the partner as a link to its Feature page."""
    out = df.copy()
    out["partner"] = [tables.feature_url(f, sae_of_src.get(int(s)), model, run)
                      for s, f in zip(out["partner_src"], out["partner"])]
    out["head"] = [f"L{int(layer)}H{int(h)}" for layer, h in zip(out["layer"], out["head"])]
    out = out[["head", "partner", "label", "value", "n", "mean"]]
    return out, {"partner": st.column_config.LinkColumn("partner", display_text=r"feature=(\d+)",
                                                        help="opens the partner's Feature page"),
                 "label": st.column_config.TextColumn("partner meaning"),
                 "value": st.column_config.NumberColumn(metric_label, format="%.4g"),
                 "n": st.column_config.NumberColumn("occurrences", format="%d"),
                 "mean": st.column_config.NumberColumn("mean FRA", format="%.4g")}


@st.cache_data(show_spinner=False, max_entries=32)
def _weight_parts(model_ref: str, sae_ref: str, feature: int, layer: int, device: str, k: int = 10) -> dict:
    from fra_core.fra import top_partners
    from fra_core.sae import load_sae
    from fra_core.sae.inspect import vocab_projection
    from ui.common import get_model, workspace

    model, sae = get_model(model_ref), load_sae(sae_ref, device=device, workspace=workspace())
    out = {"vocab": vocab_projection(sae, model, int(feature), k=k), "partners": {}}
    hook = out["hook"] = sae.cfg.metadata.hook_name or ""
    if hook.endswith("attn.hook_z"):
        return out  # a hook_z SAE is an upstream side: its partners need the layer's other dictionary
    for head in range(model.cfg.n_heads):
        for side in ("q", "k"):
            v, i = top_partners(model, layer, head, int(feature), sae, side=side, top=k)
            out["partners"][(head, side)] = pd.DataFrame({"partner": i.tolist(), "S": v.tolist()})
    return out


def weight_views(model_ref: str, sae_ref: str, feature: int, layer: int | None, sae_of_src: dict, run: int) -> None:
    """The weight-based parts: decoder → vocabulary and the strongest partners from the weights."""
    from ui.common import device_choice

    try:
        with st.spinner(f"Loading {model_ref} and {sae_ref}…"):
            parts = _weight_parts(model_ref, sae_ref, int(feature), int(layer or 0), device_choice())
    except (ValueError, OSError, RuntimeError) as exc:
        st.error(f"Weight-based views unavailable for model {model_ref!r}, SAE {sae_ref!r}: {exc}",
                 icon=":material/error:")
        return
    vocab = parts["vocab"]
    st.markdown("**Decoder → vocabulary** (direct logit effect of the feature's decoder row"
                + (", through W_O then W_U)" if parts["hook"].endswith("hook_z") else " @ W_U)"))
    c = st.columns(2)
    for col, kind in zip(c, ("promoted", "suppressed")):
        col.dataframe(vocab[vocab["kind"] == kind][["rank", "token", "logit"]], hide_index=True, width="stretch")
    if not parts["partners"]:
        st.caption("Partners from the weights: a hook_z SAE is an upstream side (pick a run of the layer it feeds).")
        return
    st.markdown(f"**Strongest partners from the weights** (layer {layer}; S = q·k / √d_head of decoder rows)")
    rows = []
    for (head, side), df in parts["partners"].items():
        for r in df.itertuples():
            rows.append({"head": f"L{layer}H{head}", "as": "query" if side == "q" else "key",
                         "partner": tables.feature_url(r.partner, sae_ref, model_ref, run), "S": r.S})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"partner": st.column_config.LinkColumn("partner", display_text=r"feature=(\d+)")})


def open_pair_controls(version: tuple, run_id: int, run_info: dict, fid: int, src: int,
                       partners: dict[str, pd.DataFrame]) -> None:
    """Pick one of the partner pairs shown and open its best stored context (largest |FRA|) in Single
    text FRA, on that pair's cell."""
    from ui import auth as ui_auth
    from ui import goto as ui_goto
    from ui import store as ui_store

    rows = [(side, r) for side, df in partners.items() for r in df.itertuples()]
    if not rows or not ui_auth.can("run"):  # Single text FRA is not among a viewer's pages
        return
    c = st.columns([4, 1], vertical_alignment="bottom")
    i = c[0].selectbox("Pair to open", range(len(rows)), key="fp_open_pair",
                       help="a partner pair of a head above: its strongest stored context opens in Single text FRA",
                       format_func=lambda j: f"L{rows[j][1].layer}H{rows[j][1].head} · "
                                             + (f"q {fid} × k {rows[j][1].partner}" if rows[j][0] == "query"
                                                else f"q {rows[j][1].partner} × k {fid}") + f" · {rows[j][1].value:.3g}")
    if not c[1].button("Open in Single text FRA", key="fp_open", help="on the pair's best cell (largest |FRA|)"):
        return
    side, r = rows[int(i)]
    q_feat, k_feat = (fid, int(r.partner)) if side == "query" else (int(r.partner), fid)
    ex = ui_store.query("pair_examples", version, run_id, n=50, feature=fid, side=side, src=src,
                        layer=int(r.layer), head=int(r.head))
    ex = ex[(ex["q_feat"] == q_feat) & (ex["k_feat"] == k_feat)]
    if ex.empty:
        st.error(f"No stored context for the pair q {q_feat} × k {k_feat} of L{r.layer}H{r.head} in run #{run_id}.",
                 icon=":material/error:")
        return
    best = ex.iloc[0]
    tokens = ui_store.query("sample_tokens", version, run_id, int(best["sample"]))
    if tokens is None:
        st.error(f"Sample {int(best['sample'])} has no stored tokens in run #{run_id}.", icon=":material/error:")
        return
    ui_goto.request(run_info, best, tokens)

"""Shared widgets and cached computations of the FRA explorer pages (single text, weights, validation).

Model, SAE sides, layer/head and text pickers; cached FRA results keyed on (model ref, SAE refs, text,
layer, heads, options) so reruns (clicks, toggles elsewhere) never recompute. torch-heavy modules are
imported inside functions.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui import common as ui
from ui import goto as ui_goto
from ui import pickers

CUSTOM = pickers.CUSTOM


def select_model(prefix: str):
    """Model selectbox (+ custom TransformerLens name); returns (ref, model) or stops with st.error."""
    from fra_core.models import list_models

    refs = [e.ref for e in list_models(ui.workspace())]
    ui_goto.take_model(prefix, refs)
    ref = st.selectbox("Model", refs, key=f"{prefix}_model",
                       help="The built-in demo works offline; gpt2-small needs the Hugging Face cache.")
    pickers.reset_on_model_change(prefix, ref)
    try:
        model = ui.get_model(ref)
    except Exception as exc:  # ModelLoadError and friends: a message, not a traceback
        ui.show_error(exc, f"Could not load {ref!r}")
        st.stop()
    if ref == "demo":
        ensure_demo_saes()
    ui_goto.apply(prefix, model)
    return ref, model


@st.cache_resource(show_spinner="Preparing the demo SAEs…")
def _demo_saes(root: str, train: bool) -> list[str]:
    from fra_core.sae.demo import ensure_demo_saes as ensure
    from fra_core.workspace import Workspace

    return sorted(ensure(Workspace(Path(root)), train_if_missing=train))


def ensure_demo_saes() -> None:
    """Copy the shipped demo SAEs into the workspace; offer to train them when they are not shipped."""
    root = str(ui.workspace().root)
    have = _demo_saes(root, False)
    if len(have) < len(pickers.DEMO_SAE_NAMES):
        st.info(f"The demo SAEs ({', '.join(pickers.DEMO_SAE_NAMES)}) are not all in this workspace yet.")
        if st.button("Train the demo SAEs (a few minutes on CPU)", key="fra_train_demo_saes"):
            _demo_saes.clear()
            _demo_saes(root, True)
            _demo_saes.clear()
            st.rerun()


def select_sides(prefix: str, model, layer: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Query and key SAE pickers offering only SAEs that fit the page's model and `layer` (workspace and
    cached registry SAEs; upstream hook_z SAEs of several layers as one choice); key defaults to the query
    side; each side may instead take typed refs. Stops with a message when refs are needed but empty."""
    opts = pickers.side_options(model, layer, st.session_state.get(f"{prefix}_model", ""))
    if not opts:
        st.error(f"No SAE for layer {layer} of this model in this workspace or the Hugging Face cache: train one on "
                 f"blocks.{layer}.ln1.hook_normalized (SAEs page), or give SAE refs below.", icon=":material/error:")
    labels = list(opts) + [CUSTOM]
    forced = f"{prefix}_qsae_forced"  # the side is on CUSTOM only because the last layer offered nothing else
    if opts and st.session_state.get(forced) and st.session_state.get(f"{prefix}_qsae") == CUSTOM:
        del st.session_state[f"{prefix}_qsae"]  # this layer has SAEs: offer them instead of the text field
    st.session_state[forced] = not opts
    cols = st.columns(2)
    q_label = cols[0].selectbox("Query-side SAE", labels, key=f"{prefix}_qsae",
                                help="An SAE on this layer's head input (ln1.hook_normalized / hook_resid_pre), "
                                     "or the upstream attention-output (hook_z) SAEs of earlier layers.")
    k_label = cols[1].selectbox("Key-side SAE", ["same as query"] + labels, key=f"{prefix}_ksae")
    q = opts.get(q_label) or _typed_refs(cols[0], "Query-side SAE refs", f"{prefix}_custom")
    k = q if k_label == "same as query" else opts.get(k_label) or _typed_refs(cols[1], "Key-side SAE refs",
                                                                              f"{prefix}_kcustom")
    return q, k


def _typed_refs(col, label: str, key: str) -> tuple[str, ...]:
    text = col.text_input(f"{label} (comma-separated: workspace names, folders, ckkissane:<file.pt>, "
                          "release:<release>/<id>)", key=key)
    refs = tuple(r.strip() for r in text.split(",") if r.strip())
    if not refs:
        st.info("Enter SAE refs (for an upstream side: one hook_z SAE per earlier layer).")
        st.stop()
    return refs


def load_side(refs: tuple[str, ...]):
    """One SAE, or a list for hook_z sides (raises SAELoadError & co. with a readable message)."""
    from ui.sae import get_sae

    saes = [get_sae(r) for r in refs]
    hooks = [s.cfg.metadata.hook_name or "" for s in saes]
    return saes if len(saes) > 1 or hooks[0].endswith("attn.hook_z") else saes[0]


def is_gpt2(model) -> bool:
    return "gpt2" in (model.cfg.model_name or "").lower() and model.cfg.d_model == 768


def layer_head(prefix: str, model, all_heads: bool = True) -> tuple[int, int, bool]:
    """Layer selectbox, head number input (checked against the model, not clamped), all-heads toggle."""
    cols = st.columns(3)
    default_layer = 1 if model.cfg.n_layers > 1 else 0
    layer = cols[0].selectbox("Layer", list(range(model.cfg.n_layers)), index=default_layer, key=f"{prefix}_layer")
    head = int(cols[1].number_input("Head", min_value=0, value=0, step=1, key=f"{prefix}_head",
                                    help=f"0..{model.cfg.n_heads - 1}"))
    every = cols[2].toggle("All heads (summary)", key=f"{prefix}_all") if all_heads else False
    if head >= model.cfg.n_heads:
        st.error(f"Head {head} is out of range: layer {layer} has {model.cfg.n_heads} heads "
                 f"(0..{model.cfg.n_heads - 1}).", icon=":material/error:")
        st.stop()
    return layer, head, every


def pick_text(prefix: str, ref: str, model) -> str:
    """A demo text (or a default) in an editable text area."""
    from fra_core.models.demo import demo_texts

    samples = demo_texts(8, seed=1, n_words=min(48, model.cfg.n_ctx - 2)) if ref == "demo" else [
        "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog."]
    which = st.selectbox("Example text", range(len(samples)), key=f"{prefix}_example",
                         format_func=lambda i: f"{i}: {samples[i][:60]}…")
    return st.text_area("Text", samples[which], key=f"{prefix}_text_{which}", height=90,
                        help=f"Up to the model's context ({model.cfg.n_ctx} tokens with BOS).")


def computed_on(texts) -> None:
    """Say exactly which texts the page computes on (the same tuple it passes to the computation)."""
    texts = list(texts)
    first = texts[0] if texts else ""
    st.caption(f"Computed on {len(texts)} text(s); the first: “{first[:80]}{'…' if len(first) > 80 else ''}”",
               help="\n\n".join(texts[:8]))


def fra_options(prefix: str, validation: bool = False) -> dict:
    """Toggles and advanced options → FRAOptions keyword arguments (a plain dict, hashable as items)."""
    cols = st.columns(4)
    out = {"row_centre": cols[2].toggle("Row-centre", False, key=f"{prefix}_centre"),
           "attention_weighted": cols[3].toggle("Attention-weighted", False, key=f"{prefix}_weight")}
    if not validation:  # cell exclusions only change the sparse pair table, not the budget or the loss
        out["exclude_diagonal"] = cols[0].toggle("Exclude diagonal", True, key=f"{prefix}_diag")
        out["exclude_bos_key"] = cols[1].toggle("Exclude BOS", False, key=f"{prefix}_bos")
    else:
        out["exclude_diagonal"] = False
    with st.expander("Advanced"):
        out["k_active"] = int(st.number_input("Features kept per position (K, 0 = all)", 0, 4096, 0, key=f"{prefix}_k",
                                              help="0 (default) keeps every active feature: K = the largest L0 "
                                                   "of the text, nothing truncated. A smaller K moves the rest "
                                                   "into the 'truncation' node (its share is shown).")) or None
        out["top_m"] = int(st.number_input("Pairs kept per cell (top-m)", 1, 10_000, 16, key=f"{prefix}_m"))
    return out


def k_note(result) -> str:
    """' · K = 37 / 41 (every active feature)', or the cap and the truncation node's share of |score|."""
    kq, kk = result.q_side.ids.shape[-1], result.k_side.ids.shape[-1]
    if not result.truncated:
        return f" · K = {kq} / {kk} per position (query / key; every active feature)"
    from fra_core.fra.validate import error_budget

    share = error_budget(result)["truncation_share"]
    return (f" · K capped at {result.options.k_active} (the text has up to {max(result.q_side.max_l0, result.k_side.max_l0)} "
            f"active): the truncation node carries {share:.1%} of |score|")


def version(refs: tuple) -> tuple:
    """Cache-key part that changes when the workspace or a workspace SAE's weights change."""
    from ui.sae import sae_stamp

    ws = ui.workspace()
    return (str(ws.root), *(sae_stamp(r, ws) for r in refs))


@st.cache_resource(show_spinner="Computing FRA…", max_entries=16)
def _fra(model_ref: str, device: str, q_refs: tuple, k_refs: tuple, texts: tuple, layer: int, heads: tuple | None,
         opts: tuple, stamp: tuple):
    import torch

    from fra_core.fra import FRAOptions, compute_fra
    from fra_core.models.prompting import prompt_tokens

    model = ui.get_model(model_ref)
    toks = [prompt_tokens(model, t) for t in texts]
    if len({t.shape[1] for t in toks}) != 1:
        raise ValueError("texts of different token lengths cannot share a batch")
    tokens = torch.cat(toks)
    result = compute_fra(model, tokens, layer, list(heads) if heads is not None else None, load_side(q_refs),
                         load_side(k_refs), FRAOptions(**dict(opts)))
    return tokens, result


def get_fra(model_ref, q_refs, k_refs, texts, layer, heads, opts: dict):
    """(tokens [batch, pos], FRAResult), cached per model/SAEs/texts/layer/heads/options."""
    return _fra(model_ref, ui.device_choice(), tuple(q_refs), tuple(k_refs), tuple(texts), int(layer),
                None if heads is None else tuple(heads), tuple(sorted(opts.items())), version(q_refs + k_refs))


@st.cache_resource(show_spinner="Describing features…", max_entries=16)
def _profiles(model_ref: str, device: str, refs: tuple, texts: tuple, stamp: tuple):
    import pandas as pd
    import torch

    from fra_core.models.prompting import prompt_tokens
    from fra_core.sae.profiles import feature_activations, feature_profiles

    model = ui.get_model(model_ref)
    side = load_side(refs)
    toks = [prompt_tokens(model, t) for t in texts]
    acts, strs = [], []
    for length in sorted({t.shape[1] for t in toks}):  # one forward pass per token length
        batch = torch.cat([t for t in toks if t.shape[1] == length])
        a = feature_activations(model, batch, side)
        acts.append(a.assign(batch=a["batch"] + len(strs)))
        strs += [[str(s) for s in model.to_str_tokens(row)] for row in batch]
    return feature_profiles(pd.concat(acts, ignore_index=True), strs)


def get_profiles(model_ref: str, refs, texts):
    """Feature descriptions (top token / top previous token) from activations on `texts`."""
    return _profiles(model_ref, ui.device_choice(), tuple(refs), tuple(texts), version(tuple(refs)))


def profile_texts(ref: str, model, text: str) -> tuple[str, ...]:
    """Texts that describe features: the current text plus demo texts for the demo model."""
    if ref == "demo":
        from fra_core.models.demo import demo_texts

        return (text, *demo_texts(48, seed=123, n_words=min(48, model.cfg.n_ctx - 2)))
    return (text,)


@st.cache_resource(show_spinner=False, max_entries=16)
def _acts(model_ref: str, device: str, refs: tuple, text: str, stamp: tuple):
    from fra_core.models.prompting import prompt_tokens
    from fra_core.sae.profiles import feature_activations

    model = ui.get_model(model_ref)
    return feature_activations(model, prompt_tokens(model, text), load_side(refs))


def get_activations(model_ref: str, refs, text: str):
    """Non-zero SAE activations of a side on one text (cached): batch, pos, source, feature, activation."""
    return _acts(model_ref, ui.device_choice(), tuple(refs), text, version(tuple(refs)))


SHARE_HELP = ("|feature×feature part| / (|feature×feature part| + |the rest|) of this cell's score: how much of "
              "it the dictionaries' feature pairs explain (the rest: SAE errors, b_dec, biases, opaque outputs)")


def feature_share(result) -> dict:
    """The feature×feature share of |score| of the first text: per cell, per head and for the whole text
    (`fra_core.fra.share`), computed once per result."""
    from fra_core.fra.share import feature_share as share

    if not hasattr(result, "_ui_feature_share"):
        result._ui_feature_share = share(result, 0)
    return result._ui_feature_share


def share_text(result, head: int) -> str:
    """Caption piece: the head's and the text's feature share."""
    sh = feature_share(result)
    return (f"features explain {sh['per_head'][head]:.1%} of |score| (feature×feature pairs vs. errors, biases "
            f"and opaque nodes; all heads shown: {sh['text']:.1%})")


def cell_share(result, hi: int, qpos: int, kpos: int) -> str:
    """The cell's feature share as a metric value ("–" off the mask)."""
    v = float(feature_share(result)["cells"][hi, qpos, kpos])
    return "–" if v != v else f"{v:.1%}"

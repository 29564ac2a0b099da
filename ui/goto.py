"""Hand-off from the Pair tables page to Single text FRA: open a stored example context there, with the
run's model, SAEs, layer, head and options, on the example's (query, key) cell.

The Pair tables side (`request`, no torch) leaves one dict in the session and switches page; Single
text FRA applies it in two steps, before the widgets it sets exist in that run: `take_model` before
the model picker, `apply` once the model is loaded (SAE labels and the text need it).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

TARGET, PREFIX = "pages/fra_text.py", "fra_text"  # the Single text FRA page and its widget-key prefix


def request(info: dict[str, Any], example: Any, tokens: list[str]) -> None:
    """Open `example` (a pair_examples row: head, sample, q_pos, k_pos) of run `info` (`store.get_run`) in
    Single text FRA."""
    cfg = info["config"]
    q_saes = list(cfg.get("q_saes") or [info["q_sae_id"]])
    st.session_state[f"{PREFIX}_goto"] = {
        "model": info["model_id"], "layer": int(info["layer"]), "head": int(example["head"]),
        "q_saes": q_saes, "k_saes": list(cfg.get("k_saes") or q_saes), "tokens": list(tokens),
        "cell": (int(example["q_pos"]), int(example["k_pos"])), "sample": int(example["sample"]),
        "run": f"#{info['id']} {info['name']}",
        "options": {"_diag": not cfg.get("include_diagonal", False), "_bos": bool(cfg.get("exclude_bos_key")),
                    "_centre": bool(cfg.get("row_centre")), "_weight": bool(cfg.get("attention_weighted")),
                    "_k": int(cfg.get("k_active", 64))}}  # a run from before "0 = all" had 64
    st.switch_page(TARGET)


def take_model(prefix: str, refs: list[str]) -> None:
    """Single text FRA, before its model picker: select the hand-off's model (kept for `apply`)."""
    goto = st.session_state.pop(f"{prefix}_goto", None)
    if goto is None:
        return
    if goto["model"] not in refs:
        st.error(f"Model {goto['model']!r} of that run is not available here (models: {', '.join(refs)}).",
                 icon=":material/error:")
        return
    st.session_state[f"{prefix}_model"] = goto["model"]
    st.session_state[f"{prefix}_pending"] = goto


def apply(prefix: str, model) -> None:
    """Single text FRA, once the model is loaded: layer, head, SAE sides, options, text and cell."""
    goto = st.session_state.pop(f"{prefix}_pending", None)
    if goto is None:
        return
    from fra_core.models.prompting import PromptError, text_for_str_tokens
    from ui.pickers import CUSTOM, side_options

    labels = {refs: label for label, refs in side_options(model, goto["layer"], goto["model"]).items()}
    q_refs, k_refs = tuple(goto["q_saes"]), tuple(goto["k_saes"])
    q, k = labels.get(q_refs, CUSTOM), labels.get(k_refs, CUSTOM)  # refs no picker lists: typed in
    try:
        text, offset = text_for_str_tokens(model, goto["tokens"])
    except PromptError as exc:
        st.error(f"Sample {goto['sample']} cannot be opened as text: {exc}", icon=":material/error:")
        return
    state = {"_layer": goto["layer"], "_head": goto["head"], "_all": False, "_qsae": q,
             "_ksae": "same as query" if k_refs == q_refs else k, "_custom": ", ".join(q_refs),
             "_kcustom": ", ".join(k_refs), "_example": 0, "_text_0": text, **goto["options"]}
    st.session_state.update({f"{prefix}{key}": value for key, value in state.items()})
    st.session_state[f"{prefix}_goto_cell"] = tuple(p + offset for p in goto["cell"])
    st.session_state[f"{prefix}_origin"] = (text, f"sample {goto['sample']} of run {goto.get('run', '?')}")
    st.toast(f"Sample {goto['sample']} of the run, cell (query {goto['cell'][0]}, key {goto['cell'][1]})")


def take_cell(prefix: str) -> None:
    """After the page picked its default cell: the hand-off's cell wins (once)."""
    cell = st.session_state.pop(f"{prefix}_goto_cell", None)
    if cell is not None:
        st.session_state[f"{prefix}_qpos"], st.session_state[f"{prefix}_kpos"] = cell


def origin_caption(prefix: str, text: str) -> None:
    """Under the text box: where an opened example came from, while its text is unedited."""
    origin = st.session_state.get(f"{prefix}_origin")
    if origin and origin[0] == text:
        st.caption(f"Opened from the Pair tables: {origin[1]} (edit the text to explore another).")

"""Convert a restoration checkpoint to a TransformerLens model: verify max |Δlogit| on real inputs
(full-length and shorter), then save it as a workspace model usable by every other page."""

from __future__ import annotations

import streamlit as st

from fra_core.paths import PathError, save_upload, user_path
from fra_core.restoration.runs import list_runs
from ui.auth import current_user, page_gate
from ui.common import show_error, workspace

page_gate(__file__)  # sign-in and role, on every run (see ui.auth)

ws = workspace()


def choose_checkpoint() -> str | None:
    runs = list_runs(ws)
    options = ["Trained in this workspace", "Upload", "File on this machine"]
    kind = st.radio("Checkpoint", options, horizontal=True, index=0 if runs else 1)
    if kind == options[0]:
        if not runs:
            st.info("No trained restoration model in this workspace yet.")
            return None
        names = [r.name for r in runs]
        return str(runs[names.index(st.selectbox("Run", names))].checkpoint)
    if kind == "Upload":
        up = st.file_uploader("Restoration checkpoint (.pt)", type=["pt"])
        if not up:
            return None
        try:  # stored per user under a generated name, size-capped
            return str(save_upload(ws, current_user(), up.name, up.getvalue(), (".pt",)))
        except PathError as exc:
            show_error(exc, "Upload refused")
            return None
    path = st.text_input("Path", placeholder="/checkpoints/restorer.pt").strip()
    if not path:
        return None
    try:
        return str(user_path(path, ws, what="checkpoint path"))
    except PathError as exc:
        show_error(exc)
        return None


def run_conversion(checkpoint: str, out: str | None, quirk: str, data: str) -> None:
    from fra_core.restoration.convert import TOLERANCE, convert_checkpoint

    try:
        with st.spinner("Converting and comparing logits…"):
            result = convert_checkpoint(checkpoint, out, {"auto": None, "on": True, "off": False}[quirk],
                                        str(user_path(data, ws, what="verification text")) if data else None)
    except (ValueError, FileExistsError) as exc:
        show_error(exc, "Conversion failed")
        return
    cfg = result.config
    m = st.columns(4)
    m[0].metric("max |Δlogit|", f"{result.max_abs_dlogit:.2e}", "ok" if result.ok else f"> {TOLERANCE:g}",
                "normal" if result.ok else "inverse")
    m[1].metric("layers × heads", f"{cfg.n_layers} × {cfg.n_heads}")
    m[2].metric("d_model / context", f"{cfg.d_model} / {cfg.max_len}")
    m[3].metric("RoPE quirk", "on" if cfg.rope_quirk else "off")
    if not result.ok:
        st.error(f"Converted logits differ by {result.max_abs_dlogit:.3g} > {TOLERANCE:g}: nothing saved.")
    elif result.folder:
        st.success(f"Saved workspace model **{result.folder.name}** (`{result.folder}`): pick it on any page.")
    else:
        st.success(f"Verified on {result.n_inputs} batches of real text; not saved (no name given).")


st.title("Convert to TransformerLens")
st.caption("Weights are rearranged into HookedTransformer form (attention [n_heads, d_model, d_head], "
           "bidirectional attention, the checkpoint's RoPE table), then both models run on the same real "
           "inputs; the model is saved only if max |Δlogit| ≤ 1e-4.")
checkpoint = choose_checkpoint()
c = st.columns(3)
quirk = c[0].selectbox("Seed RoPE quirk", ["auto", "on", "off"], help="auto: as stored in the checkpoint")
data = c[1].text_input("Verification text (eBL JSON / ATF path)", "", help="empty: the shipped demo sample")
name = c[2].text_input("Save as (workspace model)", "restorer-tl")
b1, b2 = st.columns(2)
verify = b1.button("Verify only", disabled=not checkpoint)
save = b2.button("Verify and save", type="primary", disabled=not checkpoint)
if checkpoint and (verify or save):
    run_conversion(checkpoint, name.strip() if save else None, quirk, data.strip())

"""Models page: pick a model, see its config, run a prompt, look at attention patterns and head scores."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from fra_core.models import list_models, model_summary
from ui import common as ui
from ui.auth import page_gate

page_gate(__file__)  # sign-in and role, on every run (see ui.auth)

st.title("Models")

entries = list_models(ui.workspace())
labels = {f"{e.ref}  ({e.source})": e for e in entries}
choice = st.selectbox("Model", list(labels), key="models_choice",
                      help="The built-in demo works offline. Converted and trained models appear here "
                           "once saved in the workspace. gpt2-small needs the Hugging Face cache.")
custom = st.text_input("…or a TransformerLens model name", key="models_custom", placeholder="e.g. gpt2-small")
ref = custom.strip() or labels[choice].ref

try:
    model = ui.get_model(ref)
except Exception as exc:  # ModelLoadError and friends: show, keep the app running
    ui.show_error(exc, f"Could not load {ref!r}")
    st.stop()

from fra_core.models.head_scores import head_scores  # noqa: E402  (torch is loaded by now anyway)
from fra_core.models.prompting import attention_patterns, next_token_table  # noqa: E402

summary = model_summary(model)
cols = st.columns(4)
cols[0].metric("Layers", summary["layers"])
cols[1].metric("Heads / layer", summary["heads"])
cols[2].metric("d_model", summary["d_model"])
cols[3].metric("Parameters", f"{summary['parameters']:,}")
with st.expander("Full config"):
    st.json(summary)
    if labels.get(choice) and labels[choice].meta and not custom.strip():
        st.caption("Provenance")
        st.json(labels[choice].meta)

from fra_core.models.masked import is_bidirectional  # noqa: E402
from ui import model_views  # noqa: E402

if is_bidirectional(model):  # the restoration model: masked characters, not next tokens
    model_views.bidirectional_views(model)
    st.stop()

st.subheader("Run a prompt")
default_prompt = ("the red fox jumps on the old wall . a bird sings today . the red fox jumps on the"
                  if ref == "demo" else "The quick brown fox jumps over the lazy dog. The quick brown fox")
prompt = st.text_area("Prompt", default_prompt, key="models_prompt")
if not prompt.strip():
    st.info("Type a prompt to see predictions and attention.")
    st.stop()
model_views.oov_warning(model, prompt)
try:
    preds, tokens = next_token_table(model, prompt, k=10)
    patterns = attention_patterns(model, prompt)
except ValueError as exc:
    ui.show_error(exc)
    st.stop()

left, right = st.columns([1, 2])
with left:
    st.caption("Next-token predictions")
    st.dataframe(preds, hide_index=True, width="stretch")
with right:
    layer = st.selectbox("Layer", range(model.cfg.n_layers), key="models_layer")
    head = st.selectbox("Head", range(model.cfg.n_heads), key="models_head")
    labels_pos = [f"{i}:{t}" for i, t in enumerate(tokens)]
    frame = pd.DataFrame(
        [(labels_pos[q], labels_pos[k], float(patterns[layer][head, q, k]))
         for q in range(len(tokens)) for k in range(len(tokens))],
        columns=["query", "key", "attention"])
    pick = alt.selection_point(fields=["query", "key"], name="cell")
    chart = (alt.Chart(frame).mark_rect()
             .encode(x=alt.X("key:N", sort=labels_pos), y=alt.Y("query:N", sort=labels_pos),
                     color=alt.Color("attention:Q", scale=alt.Scale(scheme="blues", domain=[0, 1])),
                     tooltip=["query", "key", alt.Tooltip("attention:Q", format=".3f")])
             .add_params(pick).properties(title=f"L{layer}H{head} attention pattern", height=420))
    st.altair_chart(chart, width="stretch")

st.subheader("Head scores on repeated random sequences")
scores = head_scores(model, n_seq=8, half_len=min(30, (model.cfg.n_ctx - 1) // 2))
rows = [{"layer": layer_, "head": head_, "previous_token": float(scores["previous_token"][layer_, head_]),
         "induction": float(scores["induction"][layer_, head_])}
        for layer_ in range(model.cfg.n_layers) for head_ in range(model.cfg.n_heads)]
score_frame = pd.DataFrame(rows)
bar = {name: st.column_config.ProgressColumn(name, min_value=0.0, max_value=1.0, format="%.3f")
       for name in ("previous_token", "induction")}
st.dataframe(score_frame, column_config=bar, hide_index=True, width="stretch")
best_ind = score_frame.loc[score_frame["induction"].idxmax()]
best_prev = score_frame.loc[score_frame["previous_token"].idxmax()]
st.caption(f"Strongest induction head: L{int(best_ind['layer'])}H{int(best_ind['head'])} "
           f"(score {best_ind['induction']:.3f}); strongest previous-token head: "
           f"L{int(best_prev['layer'])}H{int(best_prev['head'])} (score {best_prev['previous_token']:.3f}).")

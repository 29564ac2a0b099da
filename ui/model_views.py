"""Models page views that depend on the kind of model: a bidirectional masked-character model (the
restoration model) gets masked-character predictions and bidirectional head scores; word-level
tokenizers get a warning for out-of-vocabulary words."""

from __future__ import annotations

import streamlit as st

RESTORATION_PROMPT = "a-na be-li2-ia _-ma um-ma _-ta-a"


def oov_warning(model, prompt: str) -> None:
    from fra_core.models.masked import out_of_vocabulary

    words = out_of_vocabulary(model, prompt)
    if words:
        shown = ", ".join(f"‘{w}’" for w in words[:12]) + (" …" if len(words) > 12 else "")
        st.warning(f"{len(words)} word(s) outside the model's vocabulary read as `<unk>`: {shown}. The demo "
                   "model knows only its demo-language words.", icon=":material/warning:")


def bidirectional_views(model) -> None:
    """The Models page for a bidirectional masked-character model (instead of next-token views)."""
    from fra_core.models.masked import bidirectional_head_scores, masked_predictions, unknown_chars

    st.subheader("Masked-character predictions")
    st.caption("A bidirectional model reads both sides: mark the characters to restore with `_` "
               "(one per lost character).")
    text = st.text_input("Text with gaps", RESTORATION_PROMPT, key="models_masked_text",
                         help="each _ is one masked character; the model predicts it from both sides")
    unknown = unknown_chars(model, text)
    if unknown:
        st.warning(f"Characters outside the model's vocabulary read as <unk>: {' '.join(unknown)}",
                   icon=":material/warning:")
    try:
        preds = masked_predictions(model, text, k=5)
    except ValueError as exc:
        st.error(str(exc), icon=":material/error:")
    else:
        best = preds[preds["rank"] == 1].set_index("index")["candidate"]
        st.markdown("**Best restoration:** `" + "".join(best.get(i, ch) if ch == "_" else ch
                                                       for i, ch in enumerate(text)) + "`")
        st.dataframe(preds, hide_index=True, width="stretch", column_config={
            "probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0,
                                                           format="%.3f")})
    st.subheader("Head scores on random sequences (bidirectional)")
    scores = bidirectional_head_scores(model, n_seq=8, length=min(64, model.cfg.n_ctx))
    bar = {c: st.column_config.ProgressColumn(c, min_value=0.0, max_value=1.0, format="%.3f")
           for c in ("previous", "next", "self")}
    st.dataframe(scores, column_config=bar, hide_index=True, width="stretch")
    st.caption("Mean attention to the previous, the next and the same position: a bidirectional model's "
               "positional heads (no induction score: it has no causal order).")

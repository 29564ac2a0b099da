"""Validation: where each head's scores come from (error budget) and how much of the model's loss the
FRA-reconstructed scores recover when patched back into the head."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from ui import common as ui
from ui import fra as fu
from ui.auth import page_gate

page_gate(__file__)  # sign-in and role, on every run (see ui.auth)

P = "fra_val"
st.title("Validation")
st.caption("Error budget: every node×node term of a score is attributed to one source (priority sae_error > "
           "truncation > b_dec > bias > other > features); Σ sources = the score. Loss recovered: the head's "
           "scores replaced by a sum of terms, with zero- and mean-ablation baselines.")

ref, model = fu.select_model(P)
layer, head, every = fu.layer_head(P, model)
q_refs, k_refs = fu.select_sides(P, model, layer)
source = st.radio("Texts", ["demo sample", "my text"], horizontal=True, key=f"{P}_source",
                  index=0 if ref == "demo" else 1)
if source == "my text":
    texts = [fu.pick_text(P, ref, model)]
else:
    from fra_core.models.demo import demo_texts

    n = int(st.number_input("Number of demo texts", 1, 32, 4, key=f"{P}_n"))
    texts = demo_texts(n, seed=11, n_words=min(48, model.cfg.n_ctx - 2))
fu.computed_on(texts)
opts = fu.fra_options(P, validation=True)
heads = None if every else [head]

INCLUDES = {"features only": (), "features + bias": ("bias",), "features + bias + b_dec": ("bias", "b_dec"),
            "+ truncation": ("bias", "b_dec", "truncation"),
            "all terms (exact)": ("bias", "b_dec", "truncation", "sae_error", "other")}


@st.cache_resource(show_spinner="Validating…", max_entries=8)
def validate(model_ref, device, q_refs, k_refs, texts, layer, heads, opts_items, stamp):
    """Error budgets and loss-recovered rows; one batch when the texts share a token length (so the
    mean-ablation baseline is the batch mean), else one text at a time."""
    from fra_core.fra import error_budget, loss_recovered
    from fra_core.fra.completeness import check
    from fra_core.models.prompting import prompt_tokens

    lengths = {prompt_tokens(model, t).shape[1] for t in texts}
    batches = [list(texts)] if len(lengths) == 1 else [[t] for t in texts]
    budgets, losses, notes = [], [], set()
    for batch in batches:
        tokens, result = fu.get_fra(model_ref, q_refs, k_refs, batch, layer, heads, dict(opts_items))
        check(result, "validation")  # Σ terms must equal the scores (≤ 1e-4) before anything is reported
        notes.add(result.assumptions())
        budgets.append(error_budget(result))
        for label, inc in INCLUDES.items():
            losses.append({"include": label, **loss_recovered(model, tokens, result, inc)})
    return budgets, pd.DataFrame(losses), sorted(n for n in notes if n)


try:
    budgets, losses, notes = validate(ref, ui.device_choice(), q_refs, k_refs, tuple(texts), layer,
                               None if heads is None else tuple(heads), tuple(sorted(opts.items())),
                               fu.version(q_refs + k_refs))
except ValueError as exc:
    ui.show_error(exc)
    st.stop()

from fra_core.fra import cells  # noqa: E402

labels = [f"batch {i}" for i in range(len(budgets))]
frame = cells.budget_frame(budgets, labels)
mean = frame.groupby("source", as_index=False, sort=False)[["mean_abs", "share"]].mean()
what = "all heads" if every else f"head {head}"
st.subheader(f"Error budget — L{layer}, {what}, {len(texts)} text(s)")
m = st.columns(4)
m[0].metric("mean |score|", f"{sum(b['mean_abs_score'] for b in budgets) / len(budgets):.3f}")
m[1].metric("kept pairs' share", f"{sum(b['kept_pairs_share'] for b in budgets) / len(budgets):.2f}")
m[2].metric("numerical error (mean |Σ−score|)", f"{max(b['numerical'] for b in budgets):.1e}")
m[3].metric("truncated (K < L0)", "yes" if any(b["truncated"] for b in budgets) else "no")
for note in notes:
    st.caption(f"Exact with {note}.")
left, right = st.columns([2, 3])
with left:
    st.dataframe(mean.rename(columns={"mean_abs": "mean |contribution|", "share": "share of mean |score|"}),
                 hide_index=True, width="stretch",
                 column_config={"share of mean |score|": st.column_config.ProgressColumn(min_value=0, max_value=1,
                                                                                         format="%.3f")})
with right:
    st.altair_chart(alt.Chart(mean).mark_bar()
                    .encode(x=alt.X("share:Q", title="share of mean |score|"), y=alt.Y("source:N", sort=None),
                            color=alt.Color("source:N", legend=None),
                            tooltip=["source", alt.Tooltip("mean_abs:Q", format=".4f"),
                                     alt.Tooltip("share:Q", format=".3f")])
                    .properties(height=220), width="stretch")
if len(budgets) > 1:
    with st.expander("Per batch of texts"):
        st.dataframe(frame.pivot(index="text", columns="source", values="share"), width="stretch")

st.subheader("Loss recovered with FRA-reconstructed scores")
summary = losses.groupby("include", as_index=False, sort=False).mean(numeric_only=True)
st.dataframe(summary, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4f") for c in summary.columns if c != "include"})
fractions = summary.melt(id_vars="include", value_vars=["fraction_recovered_zero", "fraction_recovered_mean"],
                         var_name="baseline", value_name="fraction").dropna()
fractions["baseline"] = fractions["baseline"].str.replace("fraction_recovered_", "vs ") + "-ablation"
st.altair_chart(alt.Chart(fractions).mark_bar()
                .encode(x=alt.X("fraction:Q", title="fraction of loss recovered"), y=alt.Y("include:N", sort=None),
                        yOffset="baseline:N", color="baseline:N",
                        tooltip=["include", "baseline", alt.Tooltip("fraction:Q", format=".3f")])
                .properties(height=260), width="stretch")
gap = float(summary["zero_ablated"].mean() - summary["clean"].mean())
st.caption(f"Zero-ablating the head(s) costs {gap:+.4f} nats here; when that gap is small the zero-ablation "
           "fractions are large in magnitude and the mean-ablation baseline is the one to read.")
if summary["fraction_recovered_mean"].isna().all():
    st.caption("Mean-ablation needs several texts (one text's mean is itself): use the demo sample.")
st.caption("Patched = the head's scores replaced (on the attention mask) by the sum of the raw terms whose "
           "query and key nodes are both in the included set. 'all terms' must equal the clean loss; the gap of "
           "'features only' is what the SAE error, b_dec and biases carry.")

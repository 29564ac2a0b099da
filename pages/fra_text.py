"""Single text FRA: the attention pattern and q×k scores of a head, split exactly into feature pairs.

Pick a cell (click the score heatmap, or the query/key inputs) to see its top feature pairs, the
bias/error terms, and the exactness check (Σ terms vs the real score).
"""

from __future__ import annotations

import altair as alt
import streamlit as st

from ui import common as ui
from ui import fra as fu
from ui import goto as ui_goto
from ui import store as ui_store
from ui.auth import page_gate
from ui.tables import feature_url

page_gate(__file__)  # sign-in and role, on every run (see ui.auth)

P = "fra_text"
st.title("Single text FRA")
st.caption("Exact feature-resolved attention for one text: every q×k score = Σ feature pairs + named "
           "bias / error terms.")

ref, model = fu.select_model(P)
layer, head, every = fu.layer_head(P, model)
q_refs, k_refs = fu.select_sides(P, model, layer)
text = fu.pick_text(P, ref, model)
ui_goto.origin_caption(P, text)
fu.computed_on([text])
opts = fu.fra_options(P)

try:
    tokens, result = fu.get_fra(ref, q_refs, k_refs, [text], layer, None if every else [head], opts)
    q_profiles = fu.get_profiles(ref, q_refs, fu.profile_texts(ref, model, text))
    k_profiles = q_profiles if k_refs == q_refs else fu.get_profiles(ref, k_refs, fu.profile_texts(ref, model, text))
except ValueError as exc:  # PromptError, FRAInputError, SAELoadError, SAECompatibilityError…
    ui.show_error(exc)
    st.stop()

from fra_core.fra import cells, compare  # noqa: E402  (torch is loaded by now anyway)
from fra_core.neuronpedia import feature_url as np_url  # noqa: E402
from fra_core.sae import profiles  # noqa: E402  (torch is loaded by now anyway)

str_tokens = [str(s) for s in model.to_str_tokens(tokens[0])]
T = len(str_tokens)
hi = result.heads.index(head)
st.caption(f"{T} tokens · L{layer}H{head} · {result.n_entries:,} kept pairs · "
           f"max relative error of Σ terms: {result.completeness_error():.1e} · {fu.share_text(result, head)}"
           + fu.k_note(result) + (f" · {result.assumptions()}" if result.assumptions() else ""))

if every:
    st.subheader("All heads")
    st.dataframe(cells.head_summary(result), hide_index=True, width="stretch")
    st.caption("The detail below shows the head chosen in the Head input.")

# ---------------------------------------------------------------- default cell: an induction position
ind = compare.induction_positions(tokens[0].tolist())
sig = (tuple(tokens[0].tolist()), layer, head)
if st.session_state.get(f"{P}_sig") != sig:  # new text / head: start at the strongest induction cell
    st.session_state[f"{P}_sig"] = sig
    if len(ind):
        pattern = result.pattern[0, hi]
        best = ind.assign(a=[float(pattern[i, j]) for i, j in zip(ind.query_pos, ind.key_pos)])
        cell = best.sort_values("a", ascending=False).iloc[0]
        st.session_state[f"{P}_qpos"], st.session_state[f"{P}_kpos"] = int(cell.query_pos), int(cell.key_pos)
    else:
        st.session_state[f"{P}_qpos"] = T - 1
        st.session_state[f"{P}_kpos"] = int(result.pattern[0, hi, T - 1].argmax())

ui_goto.take_cell(P)  # opened from a Pair tables example: its cell

# ---------------------------------------------------------------- heatmaps (click a cell)
frame = cells.score_frame(result, 0, hi, str_tokens)
WINDOW = 128  # a browser heatmap of T² cells stays responsive up to ~128 positions a side
lo = 0
if T > WINDOW:
    lo = int(st.slider("Heatmap window start (positions shown: start … start + 127)", 0, T - WINDOW,
                       max(0, min(T - WINDOW, int(st.session_state[f"{P}_qpos"]) - WINDOW + 1)), key=f"{P}_window"))
    frame = frame[frame.query_pos.between(lo, lo + WINDOW - 1) & frame.key_pos.between(lo, lo + WINDOW - 1)]
order = [f"{i}:{t}" for i, t in enumerate(str_tokens)][lo:lo + WINDOW]
pick = alt.selection_point(fields=["query_pos", "key_pos"], name="cell", on="click")
size = min(560, 40 + 12 * min(T, WINDOW))


def heat(field: str, title: str, scheme: str) -> alt.Chart:
    return (alt.Chart(frame).mark_rect()
            .encode(x=alt.X("key:N", sort=order, title="key"), y=alt.Y("query:N", sort=order, title="query"),
                    color=alt.Color(f"{field}:Q", scale=alt.Scale(scheme=scheme)),
                    opacity=alt.condition(pick, alt.value(1.0), alt.value(0.5)),
                    tooltip=["query", "key", alt.Tooltip("attention:Q", format=".3f"),
                             alt.Tooltip("score:Q", format=".3f")])
            .add_params(pick).properties(title=title, width=size, height=size))


left, right = st.columns(2)
with left:
    ev_a = st.altair_chart(heat("attention", f"L{layer}H{head} attention pattern", "blues"),
                           on_select="rerun", key=f"{P}_chart_attn")
with right:
    ev_s = st.altair_chart(heat("score", "q×k score" + (" (transformed)" if opts["row_centre"] or
                                                        opts["attention_weighted"] else ""), "redblue"),
                           on_select="rerun", key=f"{P}_chart_score")

for ev, name in ((ev_s, "score"), (ev_a, "attn")):  # a new click sets the position inputs
    points = ((ev or {}).get("selection") or {}).get("cell") or []
    if points and points != st.session_state.get(f"{P}_last_{name}"):
        st.session_state[f"{P}_last_{name}"] = points
        st.session_state[f"{P}_qpos"] = int(points[0]["query_pos"])
        st.session_state[f"{P}_kpos"] = int(points[0]["key_pos"])

# ---------------------------------------------------------------- one cell
st.subheader("Cell")
c = st.columns([1, 1, 3])
qpos = int(c[0].number_input("Query position", min_value=0, step=1, key=f"{P}_qpos"))
kpos = int(c[1].number_input("Key position", min_value=0, step=1, key=f"{P}_kpos"))
if len(ind):
    c[2].caption("Induction cells (query at a repeated token A, key after the earlier A): "
                 + ", ".join(f"({i},{j})" for i, j in zip(ind.query_pos[:12], ind.key_pos[:12])))
try:
    acts_q = fu.get_activations(ref, q_refs, text)
    acts_k = acts_q if k_refs == q_refs else fu.get_activations(ref, k_refs, text)
    pairs = cells.cell_pairs(result, 0, hi, qpos, kpos, acts_q, acts_k, top=opts["top_m"])
    check = cells.exactness(result, 0, hi, qpos, kpos)
    terms = cells.cell_terms(result, 0, hi, qpos, kpos)
except ValueError as exc:
    ui.show_error(exc)
    st.stop()

st.markdown(f"**query {qpos} ‘{str_tokens[qpos]}’ → key {kpos} ‘{str_tokens[kpos]}’** · attention "
            f"{float(result.pattern[0, hi, qpos, kpos]):.3f}")
m = st.columns(5)
m[4].metric("Feature share", fu.cell_share(result, hi, qpos, kpos), help=fu.SHARE_HELP)
m[0].metric("Real score", f"{check['actual']:.4f}")
m[1].metric("Σ terms", f"{check['sum_of_terms']:.4f}")
m[2].metric("Abs. error", f"{check['abs_error']:.1e}")
m[3].metric("Rel. error", f"{check['rel_error']:.1e}")

pairs.insert(2, "q_meaning", [profiles.describe(q_profiles, s, f) for s, f in zip(pairs.q_source, pairs.q_feature)])
pairs.insert(6, "k_meaning", [profiles.describe(k_profiles, s, f) for s, f in zip(pairs.k_source, pairs.k_feature)])
saved = ui_store.saved_labels(tuple(q_refs) + tuple(k_refs))  # labels set on the Pair tables page
if saved:
    pairs.insert(3, "q_label", [saved.get((q_refs[s], f), "") for s, f in zip(pairs.q_source, pairs.q_feature)])
    pairs.insert(8, "k_label", [saved.get((k_refs[s], f), "") for s, f in zip(pairs.k_source, pairs.k_feature)])
# Neuronpedia only for a registry SAE's own ids (never a self-trained SAE on the same hook); every
# feature id opens its Feature page
pairs["q_link"] = [np_url(q_refs[s], f) for s, f in zip(pairs.q_source, pairs.q_feature)]
pairs["k_link"] = [np_url(k_refs[s], f) for s, f in zip(pairs.k_source, pairs.k_feature)]
pairs = pairs.drop(columns=[c for c in ("q_link", "k_link") if not pairs[c].any()])
pairs["q_page"] = [feature_url(f, q_refs[s], ref) for s, f in zip(pairs.q_source, pairs.q_feature)]
pairs["k_page"] = [feature_url(f, k_refs[s], ref) for s, f in zip(pairs.k_source, pairs.k_feature)]
st.markdown("**Top feature pairs** (value = that pair's term of the score; share = value / score)")
if pairs.empty:
    st.info("No feature pairs kept for this cell (it may be excluded: diagonal / BOS toggles).")
else:
    st.dataframe(pairs, hide_index=True, width="stretch", key=f"{P}_pairs",
                 column_config={"q_page": st.column_config.LinkColumn("q feature", display_text=r"feature=(\d+)"),
                                "k_page": st.column_config.LinkColumn("k feature", display_text=r"feature=(\d+)"),
                                "q_link": st.column_config.LinkColumn("q Neuronpedia"),
                                "k_link": st.column_config.LinkColumn("k Neuronpedia"),
                                "value": st.column_config.NumberColumn(format="%.4f"),
                                "share": st.column_config.NumberColumn(format="%.2f")})
left, right = st.columns([3, 2])
with left:
    st.markdown("**All terms of the cell** (bias / error / b_dec nodes; Σ = the score)")
    big = terms.reindex(terms["value"].abs().sort_values(ascending=False).index)
    st.dataframe(big[["term", "value"]].head(25), hide_index=True, width="stretch")
with right:
    agg = cells.terms_by_source(terms)
    st.altair_chart(alt.Chart(agg).mark_bar().encode(x=alt.X("value:Q"), y=alt.Y("kind:N", sort="-x"),
                                                     tooltip=["kind", alt.Tooltip("value:Q", format=".4f")])
                    .properties(title="terms by kind", height=220), width="stretch")

# ---------------------------------------------------------------- token strip
st.subheader("Tokens and their features")
side = st.radio("Side", ["query SAE", "key SAE"], horizontal=True, key=f"{P}_strip_side",
                disabled=k_refs == q_refs)
strip = profiles.token_strip(acts_k if side == "key SAE" else acts_q, str_tokens,
                            k_profiles if side == "key SAE" else q_profiles, top=3,
                            source_names=k_refs if side == "key SAE" else q_refs)
strip["role"] = ["query" if p == qpos else "key" if p == kpos else "" for p in strip.pos]
st.dataframe(strip, hide_index=True, width="stretch", height=min(400, 38 + 35 * T))
st.caption("Feature meaning = the token (and previous token) carrying most of its activation on "
           + ("the demo texts." if ref == "demo" else "this text."))

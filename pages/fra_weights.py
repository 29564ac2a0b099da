"""Data-independent view: weights-only pair strengths U_f·V_g/√d_head, a feature's top partners, and how
well the weights-only ranking agrees with the data-dependent FRA ranking on texts."""

from __future__ import annotations

import altair as alt
import streamlit as st

from ui import common as ui
from ui import fra as fu
from ui.auth import page_gate
from ui.tables import feature_url

page_gate(__file__)  # sign-in and role, on every run (see ui.auth)

P = "fra_weights"
st.title("Data-independent view")
st.caption("Pair strength S_fg = U_f·V_g/√d_head with U = D_q W_Q, V = D_k W_K: the score a query feature f "
           "and a key feature g contribute per unit activation (σ = 1), before any data.")

ref, model = fu.select_model(P)
layer, head, _ = fu.layer_head(P, model, all_heads=False)
q_refs, k_refs = fu.select_sides(P, model, layer)
try:
    q_dict, k_dict = fu.load_side(q_refs), fu.load_side(k_refs)
except ValueError as exc:
    ui.show_error(exc)
    st.stop()

from fra_core.fra import cells, compare  # noqa: E402  (torch is loaded by now anyway)
from fra_core.sae import profiles  # noqa: E402  (torch is loaded by now anyway)

source = st.radio("Texts for feature meanings and the data-dependent ranking", ["demo texts", "my text"],
                  horizontal=True, key=f"{P}_source", index=0 if ref == "demo" else 1)
if source == "my text":
    texts = (fu.pick_text(P, ref, model),)
else:
    from fra_core.models.demo import demo_texts

    n = int(st.number_input("Number of demo texts", 1, 32, 6, key=f"{P}_n"))
    texts = tuple(demo_texts(n, seed=7, n_words=min(48, model.cfg.n_ctx - 2)))
    if ref != "demo":
        st.caption("Demo-language texts are made for the demo model; use 'my text' for other models.")
fu.computed_on(texts)
opts = {"exclude_diagonal": st.toggle("Exclude diagonal from the data ranking", True, key=f"{P}_diag"),
        "k_active": None, "top_m": None}  # every active feature: nothing truncated


@st.cache_resource(show_spinner="Ranking pairs by weights and by data…", max_entries=8)
def weights_and_data(model_ref, device, q_refs, k_refs, texts, layer, head, opts_items, k, stamp):
    from fra_core.models.prompting import prompt_tokens

    _, result = fu.get_fra(model_ref, q_refs, k_refs, texts, layer, [head], dict(opts_items))
    tokens = [prompt_tokens(model, t) for t in texts]
    import torch

    tokens = torch.cat(tokens)
    acts_q = profiles.feature_activations(model, tokens, q_dict)
    acts_k = acts_q if k_refs == q_refs else profiles.feature_activations(model, tokens, k_dict)
    return compare.weights_vs_data(model, layer, head, q_dict, k_dict, result, acts_q, acts_k, k)


k = int(st.number_input("k (for overlap@k)", 1, 500, 20, key=f"{P}_k"))
try:
    strengths, data, agree = weights_and_data(ref, ui.device_choice(), q_refs, k_refs, texts, layer, head,
                                     tuple(sorted(opts.items())), k, fu.version(q_refs + k_refs))
    q_prof = fu.get_profiles(ref, q_refs, fu.profile_texts(ref, model, texts[0]))
    k_prof = q_prof if k_refs == q_refs else fu.get_profiles(ref, k_refs, fu.profile_texts(ref, model, texts[0]))
except ValueError as exc:
    ui.show_error(exc)
    st.stop()

q_offsets = [0]
for s in profiles.as_list(q_dict):
    q_offsets.append(q_offsets[-1] + s.cfg.d_sae)
k_offsets = [0]
for s in profiles.as_list(k_dict):
    k_offsets.append(k_offsets[-1] + s.cfg.d_sae)


def meaning(gid: int, offsets, prof) -> str:
    return profiles.describe(prof, *cells.split_gid(int(gid), offsets))


def page(gid: int, offsets, refs) -> str:
    """The Feature page link of a global feature id (its SAE ref and feature id in that SAE)."""
    s, f = cells.split_gid(int(gid), offsets)
    return feature_url(f, refs[s], ref)


LINKS = {c: st.column_config.LinkColumn(c.replace("_page", " feature"), display_text=r"feature=(\d+)")
         for c in ("q_page", "k_page", "partner_page")}


# ---------------------------------------------------------------- agreement
st.subheader(f"Weights-only vs data-dependent ranking (L{layer}H{head})")
m = st.columns(4)
m[0].metric(f"overlap@{agree['k']}", f"{agree['overlap_at_k']:.2f}")
m[1].metric("Spearman |S| vs Σ|FRA|", f"{agree['spearman']:.2f}")
m[2].metric("Spearman S vs ΣFRA (signed)", f"{agree['spearman_signed']:.2f}")
m[3].metric("pairs seen in data", f"{agree['n_data_pairs']:,}")
st.caption(f"Candidates: {agree['n_candidates']:,} pairs (features active on the query side × on the key side "
           f"of {len(texts)} text(s)). The data ranking weights each pair by how often and how strongly both "
           "features fire; the weights-only ranking does not.")
plot = data.dropna(subset=["strength"]).head(2000)
st.altair_chart(alt.Chart(plot).mark_circle(size=30, opacity=0.6)
                .encode(x=alt.X("strength:Q", title="weights-only strength S_fg"),
                        y=alt.Y("sum:Q", title="Σ FRA over the texts"), color=alt.Color("n:Q", title="count"),
                        tooltip=["q_gid", "k_gid", "n", alt.Tooltip("sum:Q", format=".3f"),
                                 alt.Tooltip("strength:Q", format=".3f"), "weight_rank"])
                .properties(height=320), width="stretch")

left, right = st.columns(2)
with left:
    st.markdown("**Top pairs by data (Σ|FRA|)** with their weights-only rank")
    top = data.head(k)[["q_gid", "k_gid", "n", "sum", "abs_sum", "strength", "weight_rank"]].copy()
    top.insert(1, "q_meaning", [meaning(g, q_offsets, q_prof) for g in top.q_gid])
    top.insert(3, "k_meaning", [meaning(g, k_offsets, k_prof) for g in top.k_gid])
    top["q_page"], top["k_page"] = [page(g, q_offsets, q_refs) for g in top.q_gid], [page(g, k_offsets, k_refs) for g in top.k_gid]
    st.dataframe(top, hide_index=True, width="stretch", column_config=LINKS)
with right:
    st.markdown("**Top pairs by weights (|S|)** among the active features")
    topw = strengths.head(k).copy()
    topw.insert(1, "q_meaning", [meaning(g, q_offsets, q_prof) for g in topw.q_gid])
    topw.insert(3, "k_meaning", [meaning(g, k_offsets, k_prof) for g in topw.k_gid])
    topw["q_page"] = [page(g, q_offsets, q_refs) for g in topw.q_gid]
    topw["k_page"] = [page(g, k_offsets, k_refs) for g in topw.k_gid]
    st.dataframe(topw, hide_index=True, width="stretch", column_config=LINKS)

# ---------------------------------------------------------------- one feature's partners
st.subheader("Top partners of a feature (all features of the other side)")
c = st.columns(3)
side = c[0].radio("Feature is on the", ["query side", "key side"], key=f"{P}_side")
default = int(data.q_gid.iloc[0] if side == "query side" and len(data) else data.k_gid.iloc[0] if len(data) else 0)
feature = int(c[1].number_input("Feature (global id)", min_value=0, value=default, step=1, key=f"{P}_feature",
                                help="For hook_z sides the id runs over the SAEs in layer order."))
n_top = int(c[2].number_input("Partners", 1, 200, 15, key=f"{P}_top"))
from fra_core.fra import top_partners  # noqa: E402

try:
    vals, ids = top_partners(model, layer, head, feature, q_dict, k_dict, side="q" if side == "query side" else "k",
                             top=n_top)
except ValueError as exc:
    ui.show_error(exc)
    st.stop()
own, other = ((q_offsets, q_prof), (k_offsets, k_prof)) if side == "query side" else ((k_offsets, k_prof),
                                                                                      (q_offsets, q_prof))
st.caption(f"Feature {feature}: {meaning(feature, *own)}")
import pandas as pd  # noqa: E402

partners = pd.DataFrame({"partner": ids.numpy(), "strength": vals.numpy()})
partners.insert(1, "meaning", [meaning(g, *other) for g in partners.partner])
partners["partner_page"] = [page(g, other[0], k_refs if side == "query side" else q_refs) for g in partners.partner]
st.dataframe(partners, hide_index=True, width="stretch", column_config=LINKS)
st.altair_chart(alt.Chart(partners).mark_bar()
                .encode(x="strength:Q", y=alt.Y("partner:N", sort="-x"), tooltip=["partner", "meaning", "strength"])
                .properties(height=22 * len(partners) + 40), width="stretch")

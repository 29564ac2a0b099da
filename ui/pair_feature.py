"""The Pair tables page's Feature view: one feature's top partners on each side and its top contexts.

It opens on a feature that has pairs under the page's filters, in the dictionary picked: the "Feature id"
filter when set; else the query feature of the best pair, with the dictionary picker on that pair's query
source; after the user picks another dictionary, the best feature of that dictionary
(`store.page_queries.top_source_feature`). A feature the user typed is kept until the run, the dictionary
or the "Feature id" filter changes. Sources show by short name (`ui.sources`).
"""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from ui import store as ui_store
from ui import tables as ui_tables
from ui.help_texts import PAIR_TABLES as H
from ui.sources import short_names

CONTEXT_KEY = "pt_feature_view_for"  # (run, dictionary, "Feature id" filter) the shown default belongs to


def default_feature(q: Callable[..., Any], run_id: int, src: int, feature: int | None, top, filters: dict) -> int:
    """The feature the view opens on for dictionary `src` (see the module docstring); 0 when `src` has no
    pair under the filters (the partner tables then say so)."""
    if feature is not None:
        return feature
    if len(top) and int(top["q_src"].iloc[0]) == src:
        return int(top["q_feat"].iloc[0])
    best = q("top_source_feature", run_id, src, **filters)
    return 0 if best is None else best


def feature_view(q: Callable[..., Any], version: tuple, run_id: int, info: dict, *, feature: int | None, metric: str,
                 order: str, diagonal: bool, where: dict) -> None:
    sources = {int(s["src"]): s["name"] for s in info["sources"]}
    sae_of_src = {int(s["src"]): s["sae_id"] for s in info["sources"]}
    names = short_names(info["sources"], info.get("model_id"))
    layer, head, self_pairs, min_count = where["layer"], where["head"], where["self_pairs"], where["min_count"]
    top = q("top_pairs", run_id, metric=metric, n=1, order=order, diagonal=diagonal, **where)
    c = st.columns([1, 2])
    src = None
    if len(sources) > 1:
        if st.session_state.get("pt_src") not in sources:
            st.session_state.pop("pt_src", None)
        first = int(top["q_src"].iloc[0]) if len(top) else next(iter(sources))
        src = c[1].selectbox("Dictionary", list(sources), index=list(sources).index(first), key="pt_src",
                             format_func=lambda s: f"{names[s]}  ({sources[s]})" if names[s] != sources[s] else names[s],
                             help=H["pt_src"])
    src_id = src if src is not None else next(iter(sources))
    context = (run_id, src_id, feature)
    if st.session_state.get(CONTEXT_KEY) != context or "pt_feature_view" not in st.session_state:
        filters = dict(metric=metric, order=order, diagonal=diagonal, layer=layer, head=head, self_pairs=self_pairs,
                       min_count=min_count)
        st.session_state["pt_feature_view"] = default_feature(q, run_id, src_id, feature, top, filters)
        st.session_state[CONTEXT_KEY] = context
    fid = int(c[0].number_input("Feature", min_value=0, step=1, key="pt_feature_view", help=H["pt_feature_view"]))
    ui_store.feature_label_editor(version, run_id, fid, src_id)
    ui_tables.feature_page_link(fid, sae_of_src[src_id], info["model_id"], run_id)
    common = dict(metric=metric, n=20, src=src, layer=layer, head=head, self_pairs=self_pairs, min_count=min_count,
                  diagonal=diagonal)
    left, right = st.columns(2)
    for col, side_, title in ((left, "query", "As query: its top key partners"),
                              (right, "key", "As key: its top query partners")):
        df = q("feature_partners", run_id, fid, side=side_, **common)
        col.subheader(title)
        if df.empty:
            col.info(f"Feature {fid} of {names[src_id]} has no pairs as {side_} with these filters.")
            continue
        other = "k" if side_ == "query" else "q"
        shown = ["partner", "layer", "head", "value", "n", "mean", "max_abs", "self_pair"]
        if len(sources) > 1:  # the partner's dictionary, by short name
            df["partner source"] = [names.get(int(s), str(s)) for s in df[f"{other}_src"]]
            shown.insert(1, "partner source")
        shown += [x for x in ("k_label", "q_label") if not df[x].isna().all()]
        df["page"] = [ui_tables.feature_url(f, sae_of_src.get(int(s)), info["model_id"], run_id)
                      for s, f in zip(df[f"{other}_src"], df["partner"])]
        col.dataframe(df[["page"] + shown], hide_index=True, width="stretch", column_config={
            "page": st.column_config.LinkColumn("partner page", display_text=r"feature=(\d+)")})
    st.subheader("Top contexts")
    ex = q("pair_examples", run_id, n=20, feature=fid, side="either", src=src, layer=layer, head=head,
           self_pairs=self_pairs)
    if ex.empty:
        st.info(f"No stored example contexts for feature {fid} with these filters.")
        return
    st.caption("Key token in [[ ]], query token in << >>; sorted by |FRA|.")
    shown = ["value", "head", "q_feat", "k_feat", "q_token", "k_token", "context", "sample", "q_pos", "k_pos"]
    st.dataframe(ex[shown], hide_index=True, width="stretch")
    ui_store.open_example_controls(version, run_id, info, ex)

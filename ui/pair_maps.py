"""The Pair tables page's maps (no torch): a q-feature × k-feature heatmap of a head's top pairs (a click
opens either feature's page), a grid of a run's heads coloured by a statistic (a click filters the page
to that head), and token search (pairs whose features fire on a token)."""

from __future__ import annotations

import streamlit as st

from ui import tables
from ui.store import METRIC_LABELS

HEAD_STATS = {"mean_abs": "mean |FRA| per occurrence", "abs_sum": "Σ|FRA|", "max_abs": "max |FRA|",
              "unique_pairs": "unique pairs", "occurrences": "occurrences", "self_pair_share": "self-pair share"}


def heatmap(q, run_id: int, info: dict, sae_of_src: dict, metric: str, where: dict, diagonal: bool) -> None:
    """q: the page's cached query function; where: the page's filters (one head must be chosen)."""
    import altair as alt

    if where.get("head") is None:
        st.info("Pick one head in the Head filter above: the heatmap shows that head's top pairs.")
        return
    n = int(st.number_input("Top pairs", 4, 400, 60, key="pt_map_n", help="how many of the head's top pairs (by "
                            "the ranking above) the heatmap shows; rows and columns are their features"))
    df = q("top_pairs", run_id, metric=metric, n=n, diagonal=diagonal, **where)
    if df.empty:
        st.info("No pair matches these filters.")
        return
    df = df.assign(q=[f"{f} {lab or ''}"[:40] for f, lab in zip(df["q_feat"], df["q_label"])],
                   k=[f"{f} {lab or ''}"[:40] for f, lab in zip(df["k_feat"], df["k_label"])])
    top = float(df["value"].abs().max()) or 1.0
    pick = alt.selection_point(fields=["q_feat", "k_feat"], name="cell", empty=False)
    chart = alt.Chart(df).mark_rect(stroke="#333").encode(
        x=alt.X("k:N", title="key feature", sort=None, axis=alt.Axis(labelOverlap=False, labelLimit=160)),
        y=alt.Y("q:N", title="query feature", sort=None, axis=alt.Axis(labelOverlap=False, labelLimit=200)),
        color=alt.Color("value:Q", title=METRIC_LABELS[metric],
                        scale=alt.Scale(scheme="redblue", reverse=True, domain=[-top, top], domainMid=0)),
        strokeWidth=alt.condition(pick, alt.value(2.5), alt.value(0)),
        tooltip=["q_feat", "q_label", "k_feat", "k_label", alt.Tooltip("value:Q", format=".4g"), "n"],
    ).add_params(pick).properties(height=max(240, 18 * df["q"].nunique()))
    event = st.altair_chart(chart, width="stretch", on_select="rerun", key="pt_map_chart")
    st.caption(f"L{where['layer']}H{where['head']}: {len(df)} top pairs by {METRIC_LABELS[metric]}; colour scale "
               "centred on zero. Click a cell to open its features.")
    chosen = (event.selection.get("cell") or [None])[0] if event and event.selection else None
    if chosen:
        c = st.columns(2)
        for col, s in zip(c, ("q", "k")):
            f = int(chosen[f"{s}_feat"])
            col.page_link("pages/feature.py", label=f"{'Query' if s == 'q' else 'Key'} feature {f}'s page",
                          icon=":material/open_in_new:",
                          query_params={"model": info["model_id"], "sae": sae_of_src.get(0), "feature": f,
                                        "run": run_id})


def _go_to_head(layer: int, head: int) -> None:
    st.session_state["pt_head"] = f"L{layer}H{head}"
    st.session_state["pt_view"] = "Heatmap"


def heads_grid(q, run_id: int) -> None:
    """Every head of the run (layer × head) coloured by a statistic; a click filters the page to it."""
    import altair as alt

    stat = st.selectbox("Statistic", list(HEAD_STATS), format_func=HEAD_STATS.get, key="pt_grid_stat",
                        help="the per-head figure the grid is coloured by (from the run's stored statistics)")
    df = q("head_summary", run_id)
    pick = alt.selection_point(fields=["layer", "head"], name="head")
    chart = alt.Chart(df).mark_rect(stroke="white").encode(
        x=alt.X("head:O"), y=alt.Y("layer:O"), color=alt.Color(f"{stat}:Q", title=HEAD_STATS[stat]),
        tooltip=["layer", "head", alt.Tooltip(f"{stat}:Q", format=".4g"), "unique_pairs", "occurrences"],
    ).add_params(pick).properties(height=max(120, 60 * df["layer"].nunique()))
    text = chart.mark_text(color="black").encode(text=alt.Text(f"{stat}:Q", format=".3g"), color=alt.value("black"))
    event = st.altair_chart(chart + text, width="stretch", on_select="rerun", key="pt_grid_chart")
    chosen = (event.selection.get("head") or [None])[0] if event and event.selection else None
    if chosen:
        layer, head = int(chosen["layer"]), int(chosen["head"])
        st.button(f"Show L{layer}H{head}'s top pairs", key="pt_grid_go", on_click=_go_to_head, args=(layer, head),
                  help="sets the Head filter to this head and opens its heatmap")


def token_search(run_id: int, info: dict, sae_of_src: dict, metric: str, where: dict, diagonal: bool,
                 version: tuple) -> None:
    from ui import store as ui_store

    c = st.columns([2, 1])
    token = c[0].text_input("Token", key="pt_token", placeholder="e.g. cat",
                            help="pairs whose query and/or key feature fires on this token (its label or most "
                                 "frequent tokens contain it; case-insensitive)")
    side = c[1].selectbox("Matching side", ["either", "query", "key"], key="pt_token_side",
                          help="which feature of the pair must fire on the token")
    if not token.strip():
        st.caption("Type a token to find the pairs its features take part in.")
        return
    df = ui_store.query("token_pairs", version, run_id, token, metric=metric, n=200, side=side, diagonal=diagonal,
                        layer=where.get("layer"), head=where.get("head"), min_count=where.get("min_count", 1))
    if df.empty:
        st.info(f"No feature of this run fires on {token.strip()!r} (by its labels and top tokens).")
        return
    table, config = tables.pair_view(df, sae_of_src, info["model_id"], run_id, METRIC_LABELS[metric])
    st.caption(f"{len(df)} pairs with a feature on {token.strip()!r}, by {METRIC_LABELS[metric]}.")
    st.dataframe(table, hide_index=True, width="stretch", column_config=config)



def marginals(q, run_id: int, layer, head) -> None:
    """The Marginals view (issue 14's `ui.marginals`), imported when shown."""
    from ui.marginals import show_marginals

    show_marginals(q, run_id, layer, head)

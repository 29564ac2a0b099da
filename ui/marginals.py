"""The Pair tables page's Marginals view: what share of a head's scores features explain, each
feature's total contribution per side, and the named non-feature nodes' totals (DuckDB only)."""

from __future__ import annotations

import streamlit as st

ORDER_LABELS = {"abs_sum": "Σ |contribution|", "sum": "Σ contribution (largest)", "neg_sum": "Σ contribution (most negative)",
                "n": "cells where active"}


def show_marginals(q, run_id: int, layer: int | None, head: int | None) -> None:
    """q: the page's cached query function (`ui_store.query` bound to the run's version)."""
    shares = q("score_shares", run_id)
    if shares.empty:
        st.info("This run has no marginals: they come with all-pair runs (statistics = all_pairs).")
        return
    st.caption("Per head, the sum of its scores over the selected cells splits exactly into feature × feature "
               "pairs, query-side nodes (each against the whole key) and key-side nodes against the query "
               "features. Nodes are the non-feature parts: SAE error, b_dec, ln1.b, the Q/K bias, truncation, ….")
    if layer is not None:
        shares = shares[(shares["layer"] == layer) & (shares["head"] == head)]
    st.dataframe(shares, hide_index=True, width="stretch", column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in shares.columns if c.endswith("_share")})
    c = st.columns([1, 1.4, 1])
    side = c[0].radio("Side", ["query", "key"], horizontal=True, key="pt_marg_side")
    order = c[1].selectbox("Rank features by", list(ORDER_LABELS), format_func=ORDER_LABELS.get, key="pt_marg_order")
    n = int(c[2].number_input("Rows", 1, 10_000, 50, key="pt_marg_rows"))
    df = q("feature_marginals", run_id, side=side, layer=layer, head=head, n=n, order=order)
    st.subheader(f"Features as {side}: total contribution against the whole {'key' if side == 'query' else 'query'}")
    st.caption("n = cells where the feature is active; sum / abs_sum over those cells; mean = sum / n; "
               "share = sum / the head's score total.")
    if df.empty:
        st.info("No feature matches these filters.")
    else:
        st.dataframe(df, hide_index=True, width="stretch")
    st.subheader("Non-feature nodes")
    st.dataframe(q("node_totals", run_id, layer=layer, head=head), hide_index=True, width="stretch")

"""Pair tables: an accumulated run's feature-pair statistics, from DuckDB only (never imports torch).

Pick a run → top pairs by a metric with filters; a feature's partners and contexts; charts; two runs or
two heads compared; downloads; a read-only SQL box. Every query aggregates in DuckDB (≤ 10 k rows come
back) and is cached until the run changes (see `ui.store`). Altair is imported only by the views
that draw charts, so the first render stays fast.
"""

from __future__ import annotations

import streamlit as st

from store import StoreBusy, StoreError, compare_summary
from ui import common as ui
from ui import export as ui_export
from ui import pair_feature as ui_feature_view
from ui import pair_maps as ui_maps
from ui import persist
from ui import store as ui_store
from ui import tables as ui_tables
from ui.auth import page_gate
from ui.help_texts import PAIR_TABLES as H
from ui.pair_filters import FIELDS, ORDERS, VIEWS, filter_widgets
from ui.store import METRIC_LABELS

page_gate(__file__)  # sign-in and role, on every run (see ui.auth)
HEAD_COLUMNS = {"unique_pairs": "unique pairs", "occurrences": "occurrences", "mean_abs": "mean |FRA| per occurrence",
                "max_abs": "max |FRA|", "self_pair_share": "self-pair share of unique pairs"}

st.title("Pair tables")
persist.restore("pair_tables", FIELDS)
_, sync_errors = ui_store.sync_jobs()
for message in sync_errors:
    st.warning(message)
try:
    runs = ui_store.runs()
except (StoreError, StoreBusy) as exc:
    ui.show_error(exc, "Cannot read the database")
    st.stop()

rows = {int(r["id"]): r for _, r in runs.iterrows()}
last = st.session_state.get("pt_last_run")
if last and last[0] not in rows:
    st.error(f"Run #{last[0]} ({last[1]}) was deleted meanwhile."
             + (" Showing another run." if rows else ""), icon=":material/delete:")
if not rows:
    st.info("No runs yet: launch one on the **Dataset accumulation** page; its shards appear here as they finish.")
    st.stop()
if st.session_state.get("pt_run") not in rows:
    st.session_state.pop("pt_run", None)
# finished runs first, failed ones last (never the default: a failed job's partial pairs mislead)
ordered = sorted(rows, key=lambda i: (rows[i]["status"] == "failed", rows[i]["status"] != "done"))
run_id = st.selectbox("Run", ordered, format_func=lambda i: ui_store.run_label(rows[i]), key="pt_run", help=H["pt_run"])
st.session_state["pt_last_run"] = (run_id, rows[run_id]["name"])
ui_store.failed_run_banner(rows[run_id])
version = ui_store.run_version(runs, run_id)


def q(name: str, *args, **kwargs):
    return ui_store.query(name, version, *args, **kwargs)


try:
    info, per_head = q("get_run", run_id), q("run_heads", run_id)
except StoreError as exc:
    ui.show_error(exc)
    st.stop()
sae_of_src = {int(s["src"]): s["sae_id"] for s in info["sources"]}
st.caption(f"model **{info['model_id']}** · SAEs {info['q_sae_id']} × {info['k_sae_id']} · layer {info['layer']} · "
           f"status {info['status']} · created {info['created']} · wall time "
           f"{ui_tables.fmt_seconds(info['wall_s'])} · completeness "
           + (f"**{info['completeness']:.1e}** (worst head: max |Σ terms − scores| / max |scores|, first batch)"
              if info.get("completeness") is not None else "not measured (run from before the check)"))
st.caption(f"Pair statistics: **{q('run_statistics', run_id)['label']}** · {ui_store.feature_share_text(info)}.")
cols = st.columns(4)
cols[0].metric("Samples", f"{int(info['n_samples']):,}")
cols[1].metric("Unique pairs", f"{int(per_head['unique_pairs'].sum()):,}")
cols[2].metric("Self-pairs", f"{int(per_head['self_pairs'].sum()):,}")
cols[3].metric("Occurrences", f"{int(per_head['occurrences'].sum()):,}")
heads = [(int(layer), int(head)) for layer, head in zip(per_head["layer"], per_head["head"])]
if not heads:
    st.info("This run has no pairs yet (its job may still be on its first shard).")
    st.stop()

# ----------------------------------------------------------------------------- filters
head_options = {"all heads": (None, None), **{f"L{layer}H{head}": (layer, head) for layer, head in heads}}
f = filter_widgets(head_options, H)
metric, order, layer, head, feature, side = f["metric"], f["order"], f["layer"], f["head"], f["feature"], f["side"]
min_count, self_pairs, diagonal, n_rows = f["min_count"], f["self_pairs"], f["diagonal"], f["n_rows"]
where = dict(layer=layer, head=head, feature=feature, side=side, self_pairs=self_pairs, min_count=min_count)
view = st.radio("View", VIEWS, horizontal=True, key="pt_view", help=H["pt_view"], label_visibility="collapsed")
persist.save("pair_tables", FIELDS)


def show_top() -> None:
    df = q("top_pairs", run_id, metric=metric, n=n_rows, order=order, diagonal=diagonal, **where)
    if df.empty:
        st.info("No pair matches these filters.")
        return
    st.caption(f"{len(df):,} pairs shown, by {METRIC_LABELS[metric]} ({ORDERS[order]}); the Charts view plots them.")
    totals = q("head_summary", run_id).set_index(["layer", "head"])["abs_sum"]
    df["share"] = [a / totals.get((la, h), float("nan")) for a, la, h in zip(df["abs_sum"], df["layer"], df["head"])]
    table, config = ui_tables.pair_view(df, sae_of_src, info["model_id"], run_id)
    values = df["value"].dropna()
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 0.0)
    config["value"] = st.column_config.ProgressColumn(METRIC_LABELS[metric], format="%.4g", min_value=min(lo, 0.0),
                                                      max_value=max(hi, lo + 1e-12, 0.0))
    config["share"] = st.column_config.NumberColumn("share", format="percent",
                                                    help="the pair's Σ|FRA| / its head's Σ|FRA|")
    st.dataframe(table, hide_index=True, width="stretch", column_config=config)


def show_feature() -> None:
    ui_feature_view.feature_view(q, version, run_id, info, feature=feature, metric=metric, order=order,
                                 diagonal=diagonal, where=where)


def show_charts() -> None:
    from ui import charts as ui_charts

    top = q("top_pairs", run_id, metric=metric, n=n_rows, order=order, diagonal=diagonal, **where)
    if not top.empty:
        st.altair_chart(ui_charts.top_pairs_bar(top, metric), width="stretch")
    log_count = st.checkbox("Log-scale counts", key="pt_hist_log", help=H["pt_hist_log"])
    hist = q("value_histogram", run_id, metric=metric, bins=50, log_count=log_count, diagonal=diagonal, **where)
    if hist.empty:
        st.info("No pair matches these filters.")
    else:
        st.altair_chart(ui_charts.histogram(hist, metric, log_count), width="stretch")
    top_n = int(st.number_input("Top N for the self-pair fraction", 1, 10_000, 100, key="pt_top_n", help=H["pt_top_n"]))
    st.altair_chart(ui_charts.self_fraction(q("self_fraction_by_head", run_id, top_n=top_n, metric=metric), top_n),
                    width="stretch")
    per_head_fra = q("head_summary", run_id)
    column = st.selectbox("Compare heads by", list(HEAD_COLUMNS), format_func=HEAD_COLUMNS.get, key="pt_head_col", help=H["pt_head_col"])
    st.altair_chart(ui_charts.heads_compared(per_head_fra, column, HEAD_COLUMNS[column]), width="stretch")
    st.dataframe(per_head_fra, hide_index=True, width="stretch")


def show_compare() -> None:
    from ui import charts as ui_charts

    mode = st.radio("Compare", ["two heads", "two runs"], horizontal=True, key="pt_cmp_mode", help=H["pt_cmp_mode"])
    n = int(st.number_input("Top N of each side", 1, 5_000, 100, key="pt_cmp_n", help=H["pt_cmp_n"]))
    c = st.columns(2)
    if mode == "two heads":
        labels = [k for k in head_options if k != "all heads"]
        if len(labels) < 2:
            st.info("This run has one head only: compare two runs instead.")
            return
        a = c[0].selectbox("Head A", labels, index=0, key="pt_cmp_a", help=H["pt_cmp_a"])
        b = c[1].selectbox("Head B", labels, index=1, key="pt_cmp_b", help=H["pt_cmp_b"])
        (la, ha), (lb, hb) = head_options[a], head_options[b]
        run_b, ver, names = run_id, version, (a, b)
        kwargs = dict(head_a=ha, head_b=hb, layer=la if la == lb else None)
    else:
        others = [i for i in rows if i != run_id]
        if not others:
            st.info("There is no other run to compare with.")
            return
        run_b = c[0].selectbox("Run B", others, format_func=lambda i: ui_store.run_label(rows[i]), key="pt_cmp_run", help=H["pt_cmp_run"])
        ver = version + ui_store.run_version(runs, run_b)
        names = (f"run #{run_id}", f"run #{run_b}")
        kwargs = dict(head_a=head, head_b=head, layer=layer)
        c[1].caption(f"Head filter of both runs: {'all heads' if head is None else f'L{layer}H{head}'} (set above).")
    df = ui_store.query("compare_pairs", ver, run_id, run_b, metric=metric, n=n, diagonal=diagonal, **kwargs)
    stats = compare_summary(df, n)
    m = st.columns(3)
    m[0].metric(f"Overlap of the top {n}", stats["overlap"])
    m[1].metric("Jaccard", f"{stats['jaccard']:.3f}")
    m[2].metric("Pearson (pairs on both sides)", "—" if stats["pearson"] is None else f"{stats['pearson']:.3f}")
    st.altair_chart(ui_charts.compare_scatter(df, *names), width="stretch")
    st.dataframe(df, hide_index=True, width="stretch")


def show_export() -> None:
    ui_export.export_view(run_id, dict(metric=metric, diagonal=diagonal, **where), METRIC_LABELS[metric], H)


try:
    maps = dict(run_id=run_id, info=info, sae_of_src=sae_of_src, metric=metric, where=where, diagonal=diagonal)
    {"Top pairs": show_top, "Feature": show_feature, "Charts": show_charts, "Compare": show_compare,
     "Heatmap": lambda: ui_maps.heatmap(q, **maps), "Heads": lambda: ui_maps.heads_grid(q, run_id),
     "Token search": lambda: ui_maps.token_search(version=version, **maps), "Export": show_export,
     "SQL": lambda: ui_store.sql_box(run_id, H), "Marginals": lambda: ui_maps.marginals(q, run_id, layer, head)}[view]()
except (StoreError, StoreBusy) as exc:
    ui.show_error(exc, "Database busy" if isinstance(exc, StoreBusy) else "")

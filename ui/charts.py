"""Altair charts of the pair tables. Inputs are small frames already aggregated in DuckDB
(≤ 10 k rows): top pairs, histogram bins, per-head figures, a two-sided comparison."""

from __future__ import annotations

import altair as alt
import pandas as pd

from ui.store import METRIC_LABELS


def pair_labels(df: pd.DataFrame) -> list[str]:
    """'L1H2 q→k' labels (with the source index when a run has several dictionaries)."""
    multi = df["q_src"].nunique() > 1 or df["k_src"].nunique() > 1 if len(df) else False
    if multi:
        return [f"L{r.layer}H{r.head} {r.q_src}:{r.q_feat}→{r.k_src}:{r.k_feat}" for r in df.itertuples()]
    return [f"L{r.layer}H{r.head} {r.q_feat}→{r.k_feat}" for r in df.itertuples()]


def top_pairs_bar(df: pd.DataFrame, metric: str, n: int = 25) -> alt.Chart:
    top = df.head(n).copy()
    top["pair"] = pair_labels(top)
    top["kind"] = top["self_pair"].map({True: "self-pair", False: "other"})
    return (alt.Chart(top).mark_bar()
            .encode(x=alt.X("value:Q", title=METRIC_LABELS.get(metric, metric)),
                    y=alt.Y("pair:N", sort=None, title=None),
                    color=alt.Color("kind:N", title=None, scale=alt.Scale(domain=["other", "self-pair"])),
                    tooltip=["pair", alt.Tooltip("value:Q", format=".4g"), "n",
                             alt.Tooltip("mean:Q", format=".4g"), alt.Tooltip("max_abs:Q", format=".4g")])
            .properties(title=f"Top {len(top)} pairs by {METRIC_LABELS.get(metric, metric)}",
                        height=max(200, 16 * len(top))))


def histogram(df: pd.DataFrame, metric: str, log_count: bool) -> alt.Chart:
    y = "log10_count" if log_count and "log10_count" in df else "count"
    return (alt.Chart(df).mark_bar()
            .encode(x=alt.X("bin_lo:Q", bin="binned", title=METRIC_LABELS.get(metric, metric)), x2="bin_hi:Q",
                    y=alt.Y(f"{y}:Q", title="log10(pairs)" if y != "count" else "pairs"),
                    tooltip=[alt.Tooltip("bin_lo:Q", format=".4g"), alt.Tooltip("bin_hi:Q", format=".4g"), "count"])
            .properties(title=f"Distribution of {METRIC_LABELS.get(metric, metric)} per pair", height=260))


def self_fraction(df: pd.DataFrame, top_n: int) -> alt.Chart:
    long = df.melt(id_vars=["layer", "head"], value_vars=["self_frac_top", "self_frac_top_no_diag"],
                   var_name="diagonal", value_name="fraction")
    long["diagonal"] = long["diagonal"].map({"self_frac_top": "with diagonal",
                                             "self_frac_top_no_diag": "without diagonal"})
    long["head"] = [f"L{layer}H{head}" for layer, head in zip(long["layer"], long["head"])]
    return (alt.Chart(long).mark_bar()
            .encode(x=alt.X("head:N", title=None), xOffset="diagonal:N",
                    y=alt.Y("fraction:Q", scale=alt.Scale(domain=[0, 1]), title=f"self-pairs in top {top_n}"),
                    color=alt.Color("diagonal:N", title=None), tooltip=["head", "diagonal",
                                                                       alt.Tooltip("fraction:Q", format=".3f")])
            .properties(title="Self-pair fraction among each head's top pairs", height=260))


def heads_compared(df: pd.DataFrame, column: str, title: str) -> alt.Chart:
    data = df.assign(label=[f"L{layer}H{head}" for layer, head in zip(df["layer"], df["head"])])
    return (alt.Chart(data).mark_bar()
            .encode(x=alt.X("label:N", title=None, sort=None), y=alt.Y(f"{column}:Q", title=title),
                    tooltip=["label", alt.Tooltip(f"{column}:Q", format=".4g"), "unique_pairs", "occurrences"])
            .properties(title=f"Heads compared: {title}", height=260))


def compare_scatter(df: pd.DataFrame, name_a: str, name_b: str) -> alt.Chart:
    data = df.assign(pair=[f"{q}→{k}" for q, k in zip(df["q_feat"], df["k_feat"])],
                     kind=df["self_pair"].map({True: "self-pair", False: "other"}))
    return (alt.Chart(data.fillna({"value_a": 0.0, "value_b": 0.0})).mark_circle(size=40, opacity=0.7)
            .encode(x=alt.X("value_a:Q", title=name_a), y=alt.Y("value_b:Q", title=name_b),
                    color=alt.Color("kind:N", title=None),
                    tooltip=["pair", "rank_a", "rank_b", alt.Tooltip("value_a:Q", format=".4g"),
                             alt.Tooltip("value_b:Q", format=".4g")])
            .properties(title=f"{name_a} vs {name_b} (missing side = 0)", height=360))

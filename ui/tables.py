"""Tables and numbers a researcher reads at a glance (no torch): columns that matter first, constant
columns hidden, feature ids that link to the Feature page, numbers with units.

* `feature_url` the Feature page's deep link (query parameters model, sae, feature, run)
* `pair_view`   a pair table (top pairs, partners) ready for `st.dataframe`: labels, value and share
                first, q_src/k_src by short name ("kk L3") and hidden where constant, each feature id beside a link to its Feature
                page, Neuronpedia links
                where the SAE is a Neuronpedia-hosted registry SAE
* `fmt_seconds`, `fmt_rate`, `fmt_eta` durations, rates and ETAs with units ("—" when unknown)
* `fmt_bytes`   sizes ("840 B", "12.3 kB", "1.25 GB")
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from fra_core.jobs import fmt_rate  # noqa: F401 - part of this module's API (one rate format)
from ui.sources import short_names

FEATURE_PAGE = "feature"  # the url path of pages/feature.py
LEAD = ["q_label", "k_label", "value", "share", "q_feat", "q_feature", "k_feat", "k_feature", "layer", "head", "n",
        "mean"]
ETA_MIN_DONE_FRACTION, ETA_MIN_ELAPSED_S = 0.02, 10.0  # before both, a rate is noise: no ETA


def feature_url(feature: int, sae_id: str | None, model: str | None = None, run: int | None = None) -> str:
    params = {k: v for k, v in (("model", model), ("sae", sae_id), ("feature", int(feature)), ("run", run))
              if v is not None}
    return f"{FEATURE_PAGE}?{urlencode(params)}"


def feature_page_link(feature: int, sae_id: str | None, model: str | None, run: int | None) -> None:
    """An in-session link (st.page_link) to a feature's page."""
    st.page_link("pages/feature.py", label=f"Feature {feature}'s page: activations, contexts, partners per head",
                 icon=":material/open_in_new:", query_params={"model": model, "sae": sae_id, "feature": int(feature),
                                                              "run": run})


def lead(df: pd.DataFrame, first: list[str] = LEAD) -> pd.DataFrame:
    """`df` with the columns of `first` (those present, in that order) leading."""
    head = [c for c in first if c in df.columns]
    return df[head + [c for c in df.columns if c not in head]]


def drop_constant(df: pd.DataFrame, columns: tuple[str, ...] = ("q_src", "k_src")) -> pd.DataFrame:
    """Drop those of `columns` whose value is the same on every shown row (and every all-empty column)."""
    drop = [c for c in columns if c in df.columns and len(df) and df[c].nunique(dropna=False) <= 1]
    drop += [c for c in df.columns if c not in drop and len(df) and df[c].isna().all()]
    return df.drop(columns=drop)


def pair_view(df: pd.DataFrame, sae_of_src: dict[int, str | None], model: str | None, run: int | None,
              value_label: str = "value", src_names: dict[int, str] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(table, column_config) of pair rows (q_src/q_feat/k_src/k_feat…): see the module docstring."""
    from fra_core.neuronpedia import feature_url as np_url

    out = df.copy()
    links = {}
    for s in ("q", "k"):
        if f"{s}_feat" not in out:
            continue
        srcs = out[f"{s}_src"] if f"{s}_src" in out else pd.Series(0, index=out.index)
        saes = [sae_of_src.get(int(x)) for x in srcs]
        np_links = [np_url(sae, f) for sae, f in zip(saes, out[f"{s}_feat"])]
        if any(np_links):
            out[f"{s}_neuronpedia"] = np_links
            links[f"{s}_neuronpedia"] = st.column_config.LinkColumn(f"{s} Neuronpedia", display_text="open ↗")
        out[f"{s}_feature"] = [feature_url(f, sae, model, run) for sae, f in zip(saes, out[f"{s}_feat"])]
        links[f"{s}_feature"] = st.column_config.LinkColumn(
            f"{s} page", display_text="open ↗", width="small",
            help=f"opens the {'query' if s == 'q' else 'key'} feature's Feature page")
    names = src_names or short_names([{"src": k, "sae_id": v} for k, v in sae_of_src.items()], model)
    for s in ("q", "k"):  # sources by short name ("kk L3"), not index; exports keep the full ref
        if f"{s}_src" in out:
            out[f"{s}_src"] = [names.get(int(x), str(x)) for x in out[f"{s}_src"]]
    out = lead(drop_constant(out))
    config = {**links,
              "q_label": st.column_config.TextColumn("q meaning", width="medium", help="the query feature's label (yours, "
                                                     "else its most frequent tokens in this run)"),
              "k_label": st.column_config.TextColumn("k meaning", width="medium", help="the key feature's label"),
              "q_src": st.column_config.TextColumn("q source", help="the query feature's dictionary (the export "
                                                   "keeps its full ref)"),
              "k_src": st.column_config.TextColumn("k source", help="the key feature's dictionary"),
              "share": st.column_config.NumberColumn("share", format="percent",
                                                     help="value / the head's total |FRA|")}
    if "value" in out:
        config["value"] = st.column_config.NumberColumn(value_label, format="%.4g")
    return out, config


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x >= 0 else None


def fmt_seconds(s: Any) -> str:
    """'0.4 s', '4 s', '223 s', '5 min 42 s', '1 h 05 min'; '—' when unknown."""
    s = _finite(s)
    if s is None:
        return "—"
    if s < 300:
        return f"{s:.1f} s" if s < 10 and s != int(s) else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"




def fmt_eta(eta_s: Any, done: Any, total: Any, elapsed_s: Any = None) -> str:
    """The ETA, or '—' while the rate is not yet stable (under 2 % done and under 10 s of work)."""
    eta, d, t = _finite(eta_s), _finite(done), _finite(total)
    if eta is None or not d or not t:
        return "—"
    el = _finite(elapsed_s)
    if d / t < ETA_MIN_DONE_FRACTION and (el is None or el < ETA_MIN_ELAPSED_S):
        return "—"
    return fmt_seconds(math.ceil(eta))


def fmt_bytes(n: float) -> str:
    """Three significant digits in B, kB, MB, GB or TB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 999.5:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"

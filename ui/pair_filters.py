"""The Pair tables page's filters: their choices, and how each persists (`ui.persist`: kept across
navigation, written to the URL under its widget key)."""

from __future__ import annotations

import streamlit as st

from store import METRICS
from ui import persist
from ui.store import METRIC_LABELS

# Defaults that show the science: the sums favour dense, always-on features (many small terms add up);
# the mean |FRA| per cell over pairs seen at least DEFAULT_MIN_COUNT times surfaces specific pairs
# (e.g. the induction pairs of the demo) while a mean over 1-4 cells, mostly noise, is left out.
DEFAULT_METRIC, DEFAULT_MIN_COUNT = "mean_abs", 5
ORDERS = {"desc": "largest first", "asc": "smallest first", "abs": "largest |value| first"}
SELF_MODES = {"include": None, "only": "only", "exclude": "exclude"}
VIEWS = ["Top pairs", "Feature", "Marginals", "Heatmap", "Heads", "Token search", "Charts", "Compare", "Export", "SQL"]

# every filter of the page: kept across navigation and written to the URL under its widget key (a view can be shared
# as a link; the keys cannot collide with another page's parameters)
FIELDS = {"pt_run": ("pt_run", persist.as_int), "pt_metric": ("pt_metric", persist.choice(METRICS)),
          "pt_order": ("pt_order", persist.choice(ORDERS)), "pt_head": ("pt_head", str), "pt_feature": ("pt_feature", str),
          "pt_side": ("pt_side", persist.choice(["either", "query", "key"])),
          "pt_min_count": ("pt_min_count", persist.int_in(1)), "pt_self": ("pt_self", persist.choice(SELF_MODES)),
          "pt_diag": ("pt_diag", persist.as_bool), "pt_rows": ("pt_rows", persist.int_in(1, 10_000)),
          "pt_view": ("pt_view", persist.choice(VIEWS))}


def filter_widgets(head_options: dict[str, tuple[int | None, int | None]], help_texts: dict[str, str]) -> dict:
    """The filter rows of the Pair tables page. Returns metric, order, layer, head, feature (None: any),
    side, min_count, self_pairs, diagonal, n_rows; stops with an error on a feature id that is not a
    whole number."""
    H = help_texts
    if st.session_state.get("pt_head") not in head_options:
        st.session_state.pop("pt_head", None)
    c = st.columns([1.3, 1.2, 1, 1, 1, 1])
    metric = c[0].selectbox("Rank by", METRICS, index=METRICS.index(DEFAULT_METRIC), format_func=METRIC_LABELS.get,
                            key="pt_metric", help=H["pt_metric"])
    order = c[1].selectbox("Order", list(ORDERS), format_func=ORDERS.get, key="pt_order", help=H["pt_order"])
    layer, head = head_options[c[2].selectbox("Head", list(head_options), key="pt_head", help=H["pt_head"])]
    feature_text = c[3].text_input("Feature id", key="pt_feature", help=H["pt_feature"], placeholder="any")
    side = c[4].selectbox("Feature side", ["either", "query", "key"], key="pt_side", help=H["pt_side"])
    min_count = int(c[5].number_input("Min count", min_value=1, value=DEFAULT_MIN_COUNT, step=1, key="pt_min_count",
                                      help=H["pt_min_count"]))
    c = st.columns([2, 2, 1])
    self_pairs = SELF_MODES[c[0].radio("Self-pairs", list(SELF_MODES), horizontal=True, key="pt_self", help=H["pt_self"])]
    diagonal = c[1].checkbox("Include the diagonal (query = key position)", value=True, key="pt_diag", help=H["pt_diag"])
    n_rows = int(c[2].number_input("Rows", min_value=1, max_value=10_000, value=100, step=50, key="pt_rows",
                                   help=H["pt_rows"]))
    feature = None
    if feature_text.strip():
        if not feature_text.strip().isdigit():
            st.error(f"Feature id must be a whole number ≥ 0, got {feature_text.strip()!r}.")
            st.stop()
        feature = int(feature_text)
    return dict(metric=metric, order=order, layer=layer, head=head, feature=feature, side=side, min_count=min_count,
                self_pairs=self_pairs, diagonal=diagonal, n_rows=n_rows)

"""The Pair tables page's filters: their choices, and how each persists (`ui.persist`: kept across
navigation, written to the URL under its widget key)."""

from __future__ import annotations

from store import METRICS
from ui import persist

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

"""SQL fragments shared by ingest, the top-K lists, queries and exports (a leaf: it imports no other
store module but the error types), so those modules import it instead of each other."""

from __future__ import annotations

from fra_core.contracts import PAIR_KEY
from store.errors import StoreError

KEY = ", ".join(PAIR_KEY)  # the pair key columns, in table order
METRICS = ("sum", "mean", "abs_sum", "mean_abs", "max_abs", "count")
SIDES = ("either", "query", "key")
MAX_UI_ROWS = 10_000
SELF = "(q_src = k_src AND q_feat = k_feat)"


def _cols(diagonal: bool) -> tuple[str, str, str]:
    if diagonal:
        return "n", "sum", "abs_sum"
    return "(n - diag_n)", "nd_sum", "(abs_sum - diag_abs_sum)"


def metric_sql(metric: str, diagonal: bool = True) -> str:
    n, s, a = _cols(diagonal)
    exprs = {"sum": s, "mean": f"({s} / nullif({n}, 0))", "abs_sum": a, "mean_abs": f"({a} / nullif({n}, 0))",
             "max_abs": "greatest(abs(max), abs(min))", "count": n}
    if metric not in exprs:
        raise StoreError(f"unknown metric {metric!r}; choose one of {METRICS}")
    return exprs[metric]


def resolve_run(con, run: int | str) -> int:
    """Run id from an id or a run name; StoreError if it does not exist."""
    if isinstance(run, str) and not run.isdigit():
        row = con.execute("SELECT id FROM runs WHERE name = ?", [run]).fetchone()
    else:
        row = con.execute("SELECT id FROM runs WHERE id = ?", [int(run)]).fetchone()
    if row is None:
        raise StoreError(f"run {run!r} does not exist (deleted meanwhile?)")
    return int(row[0])

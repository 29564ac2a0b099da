"""Pre-ranked top-K lists per run, so "top N pairs by <metric>" answers without scanning the run.

A run is written once (compaction) and read many times (every filter change of the pair-table page).
Ranking 10 M rows by an expression (mean, mean |FRA|, max |FRA|) costs a full scan each time, so
`refresh_top` keeps, for each run and each (metric, diagonal, direction), the K best rows of the whole
run (`pair_top`, a copy of their `pair_rows` rows) and the K-th value (`pair_top_lists.cut`).

Why a filtered query can be answered from such a list: every row of the run whose value is strictly
better than `cut` is in the list (at most K-1 rows beat the K-th value). So for any filter P (head,
self-pairs, min count, ...), the P-rows of the list that beat `cut` are exactly the P-rows of the whole
run that beat `cut`, in the same order; if there are at least N of them, they *are* the top N. If not,
`top_candidates` callers fall back to scanning `pair_rows`. A list shorter than K holds every ranked row
of the run, so its answers are always exact. Rows tied with `cut` are never trusted (a tie may have been
cut arbitrarily). `order='abs'` (by |value|) uses the union of the 'desc' and 'asc' lists: a row in
neither has asc_cut <= value <= desc_cut, so |value| <= max(|asc_cut|, |desc_cut|).

Lists are rebuilt by `refresh_summary` (every compaction); a run without lists (a database written by an
older version) is served by the scan until `backfill_top` (called by `ingest_all_jobs`) builds them.

A run with co-activation rows (`pair_coact`) gets the same lists, over the rows of `pair_rows`; their
candidates come from numpy (`store.topk_coact`: the few stored rows whose best head can reach a list).
"""

from __future__ import annotations

from typing import Any

import duckdb

from store.sqlparts import METRICS, metric_sql
from store.topk_coact import candidate_rows

# rows kept per list; a top-N query with N > TOP_K always scans. 22 lists x 5 000 rows per run.
TOP_K = 5_000
PAIR_COLUMNS = ("layer, head, q_src, q_feat, k_src, k_feat, n, sum, abs_sum, max, min, diag_n, diag_sum, "
                "diag_abs_sum, nd_sum")


def list_specs() -> list[tuple[str, bool]]:
    """(metric, diagonal) of every list; max |FRA| does not depend on the diagonal, so it has one."""
    return [(m, d) for m in METRICS for d in (True, False) if not (m == "max_abs" and not d)]


def list_key(metric: str, diagonal: bool) -> tuple[str, bool]:
    return metric, diagonal or metric == "max_abs"


def has_coact(con, run: int) -> bool:
    """Whether the run's pairs are co-activation rows (all-pair runs, head-independent layers)."""
    return bool(con.execute("SELECT count(*) FROM (SELECT 1 FROM pair_coact WHERE run = ? LIMIT 1)",
                            [run]).fetchone()[0])


def refresh_top(con, run: int, k: int | None = None, held: dict | None = None) -> None:
    """Rebuild the run's top-K lists from pair_stats; call inside the compaction's transaction.

    Each list is a plain `ORDER BY value LIMIT K` on rowids only (DuckDB's top-N keeps a K-row heap and
    skips row groups by zone map for plain columns), then one join fetches the K rows' columns.

    A co-activation run's rows are H per stored row (its heads), too many to rank in SQL (at GPT-2 shape
    38 M per 2 samples: 20 s per shard for 22 lists): numpy picks, per layer, the few stored rows that can
    reach each list (`store.topk_coact`), and the lists rank those rows' expansion (plus the run's
    pair_stats rows, if any) by the same SQL expressions as a scan of `pair_rows`. held: the co-activation
    layers' rows and G the caller holds (`topk_coact.candidate_rows`), so compaction does not read them back.
    """
    k = int(k or TOP_K)
    con.execute("DELETE FROM pair_top WHERE run = ?", [run])
    con.execute("DELETE FROM pair_top_lists WHERE run = ?", [run])
    cand = candidate_rows(con, run, list_specs(), k, held) if has_coact(con, run) else None
    for metric, diagonal in list_specs():
        for direction in ("desc", "asc"):
            tbl = None if cand is None else cand.get((metric, diagonal, direction))
            if tbl is None:
                _build_list(con, run, metric, diagonal, direction, k)
                continue
            # the list's co-activation candidates (Arrow: in DuckDB 2.0 a temp table created empty inside a
            # transaction and filled with more than one row group reads back empty) and the run's stored rows
            con.register("_top_cand", tbl)
            try:
                _build_list(con, run, metric, diagonal, direction, k, "_top_cand")
            finally:
                con.unregister("_top_cand")


def _build_list(con, run: int, metric: str, diagonal: bool, direction: str, k: int, coact: str | None = None) -> None:
    m = metric_sql(metric, diagonal)
    if coact:
        con.execute(f"""
            INSERT INTO pair_top
            SELECT run, ?, ?, ?, {PAIR_COLUMNS}, {m} AS value
            FROM (SELECT * FROM {coact} UNION ALL SELECT * FROM pair_stats WHERE run = ?)
            WHERE {m} IS NOT NULL ORDER BY {m} {direction.upper()} LIMIT {k}""", [metric, diagonal, direction, run])
    else:
        con.execute(f"""
            INSERT INTO pair_top
            SELECT p.run, ?, ?, ?, {PAIR_COLUMNS}, {m} AS value
            FROM pair_stats p
            WHERE p.run = ? AND p.rowid IN (SELECT rowid FROM pair_stats WHERE run = ? AND {m} IS NOT NULL
                              ORDER BY {m} {direction.upper()} LIMIT {k})""", [metric, diagonal, direction, run, run])
    con.execute(f"""
        INSERT INTO pair_top_lists
        SELECT ?, ?, ?, ?, ?, count(*), {'min' if direction == 'desc' else 'max'}(value)
        FROM pair_top WHERE run = ? AND metric = ? AND diagonal = ? AND dir = ?""",
                [run, metric, diagonal, direction, k, run, metric, diagonal, direction])


def backfill_top(con) -> list[int]:
    """Build the lists of every run that has pairs but no lists (databases from before migration 0007, and
    co-activation runs compacted before they got lists)."""
    runs = [r[0] for r in con.execute("""SELECT id FROM runs WHERE n_pairs > 0
                                         AND id NOT IN (SELECT run FROM pair_top_lists)""").fetchall()]
    for run in runs:
        con.execute("BEGIN TRANSACTION")
        try:
            refresh_top(con, run)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return runs


def top_candidates(con, run: int, metric: str, diagonal: bool, order: str, n: int,
                   filters: dict[str, Any]) -> tuple[str, list[Any], bool] | None:
    """(source SQL, its parameters, exact_if_short) to rank from instead of `pair_rows`, or None.

    The source is a sub-query with pair_rows' columns holding the list rows that can be trusted;
    a caller takes its first `n` filtered rows and, if fewer than `n` come back and `exact_if_short`
    is False, repeats the query on `pair_rows`. None where a list cannot help: N above K, a feature
    filter (too selective for a list of the run's best rows), or no list for this run.
    """
    if n > TOP_K or filters.get("feature") is not None or filters.get("min_count", 1) is None:
        return None
    metric, diagonal = list_key(metric, diagonal)
    dirs = {"desc": ["desc"], "asc": ["asc"], "abs": ["desc", "asc"]}[order]
    try:
        rows = con.execute(f"""SELECT dir, k, n_rows, cut FROM pair_top_lists WHERE run = ? AND metric = ?
                               AND diagonal = ? AND dir IN ({', '.join('?' * len(dirs))})""",
                           [run, metric, diagonal, *dirs]).fetchall()
    except duckdb.CatalogException:  # a read-only connection to a database not migrated to 0007 yet
        return None
    if len(rows) != len(dirs):
        return None
    truncated = [(d, cut) for d, k, n_rows, cut in rows if n_rows >= k]
    safe, params = "TRUE", []
    if truncated:  # at least one list stops at K rows: trust only the rows strictly beyond its cut
        if order == "abs":
            safe, params = "abs(value) > ?", [max(abs(cut) for *_, cut in rows)]
        else:
            safe, params = ("value > ?" if order == "desc" else "value < ?"), [truncated[0][1]]
    source = f"""(SELECT DISTINCT * EXCLUDE (metric, diagonal, dir, value) FROM pair_top
                  WHERE run = ? AND metric = ? AND diagonal = ? AND dir IN ({', '.join('?' * len(dirs))})
                  AND {safe})"""
    return source, [run, metric, diagonal, *dirs, *params], not truncated

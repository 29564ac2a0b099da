"""Small read queries the database pages need beyond `store.queries` (no torch, no streamlit)."""

from __future__ import annotations

import pandas as pd

from store.errors import StoreError
from store.sqlparts import resolve_run


def head_summary(con, run: int | str) -> pd.DataFrame:
    """Per (layer, head) of a run: unique pairs, self-pairs, occurrences and the |FRA| totals of its
    pairs, all from pair_summary (kept by compaction, no scan): abs_sum = Σ|FRA| over every occurrence,
    mean_abs = abs_sum / occurrences, max_abs = the largest single |FRA|. Runs compacted before
    pair_summary kept the totals (migration 0013) get them from one grouped scan of `pair_rows`."""
    run_id = resolve_run(con, run)
    stale = con.execute("SELECT count_if(abs_sum IS NULL OR max_abs IS NULL) FROM pair_summary WHERE run = ?",
                        [run_id]).fetchone()[0]
    agg = ("""(SELECT layer, head, sum(abs_sum) AS abs_sum, max(greatest(abs(max), abs(min)))::DOUBLE AS max_abs
               FROM pair_rows WHERE run = $run GROUP BY layer, head)""" if stale else
           "(SELECT layer, head, abs_sum, max_abs FROM pair_summary WHERE run = $run)")
    return con.execute(f"""
        WITH agg AS {agg}
        SELECT s.layer, s.head, s.unique_pairs, s.self_pairs, s.occurrences, s.diagonal_occurrences,
               s.self_pairs / nullif(s.unique_pairs, 0) AS self_pair_share,
               a.abs_sum, a.abs_sum / nullif(s.occurrences, 0) AS mean_abs, a.max_abs
        FROM pair_summary s LEFT JOIN agg a USING (layer, head)
        WHERE s.run = $run ORDER BY s.layer, s.head""", {"run": run_id}).df()


def run_heads(con, run: int | str) -> pd.DataFrame:
    """The run's (layer, head) rows of pair_summary — unique pairs, self-pairs, occurrences, diagonal
    occurrences per head — without touching pair_rows (what a page needs on its first render)."""
    run_id = resolve_run(con, run)
    return con.execute("""SELECT layer, head, unique_pairs, self_pairs, occurrences, diagonal_occurrences
                          FROM pair_summary WHERE run = ? ORDER BY layer, head""", [run_id]).df()


def feature_labels(con, run: int | str, feature: int, src: int = 0) -> dict:
    """A feature of a run's source: its SAE id, human label (features.label, kept across runs) and the
    run's automatic label (feature_auto_labels: its most frequent tokens); None where absent."""
    run_id = resolve_run(con, run)
    rows = con.execute("""
        SELECT s.sae_id, f.label, a.label
        FROM sources s
        LEFT JOIN features f ON f.sae_id = s.sae_id AND f.feature = $feature
        LEFT JOIN feature_auto_labels a ON a.run = s.run AND a.src = s.src AND a.feature = $feature
        WHERE s.run = $run AND s.src = $src""", {"run": run_id, "src": int(src), "feature": int(feature)}).fetchall()
    sae_id, label, auto = rows[0] if rows else (None, None, None)
    return {"sae_id": sae_id, "label": label, "auto_label": auto}


def sample_tokens(con, run: int | str, sample: int) -> list[str] | None:
    """The token strings of one processed sample of a run (as the job saw them), or None."""
    run_id = resolve_run(con, run)
    rows = con.execute("SELECT tokens FROM samples_done WHERE run = ? AND sample = ?", [run_id, int(sample)]).fetchall()
    return list(rows[0][0]) if rows else None


def human_labels(con, sae_ids: list[str]) -> dict[tuple[str, int], str]:
    """Human feature labels of these SAEs: {(sae_id, feature): label}."""
    if not sae_ids:
        return {}
    rows = con.execute("SELECT sae_id, feature, label FROM features WHERE label IS NOT NULL AND list_contains(?, sae_id)",
                       [list(sae_ids)]).fetchall()
    return {(s, int(f)): label for s, f, label in rows}


def top_source_feature(con, run: int | str, src: int, *, metric: str = "sum", order: str = "desc",
                       diagonal: bool = True, **filters) -> int | None:
    """The feature of source `src` (a dictionary of the run) in the best pair by `metric` (`order` as in
    `top_pairs`) among the pairs that pass `filters` and have `src` on either side: the query feature when
    `src` is that pair's query source, else its key feature. None when `src` has no such pair. One scan."""
    from store.queries import pair_filter
    from store.sqlparts import KEY, metric_sql

    run_id = resolve_run(con, run)
    if order not in ("desc", "asc", "abs"):
        raise StoreError(f"order must be 'desc', 'asc' or 'abs', got {order!r}")
    filters = {k: v for k, v in filters.items() if k not in ("feature", "side", "src")}
    where, params = pair_filter(run_id, diagonal=diagonal, **filters)
    m = metric_sql(metric, diagonal)
    value = f"abs({m})" if order == "abs" else m
    row = con.execute(f"""
        SELECT CASE WHEN q_src = ? THEN q_feat ELSE k_feat END FROM pair_rows
        WHERE {where} AND (q_src = ? OR k_src = ?)
        ORDER BY {value} {'ASC' if order == 'asc' else 'DESC'} NULLS LAST, {KEY} LIMIT 1""",
                      [int(src)] + params + [int(src), int(src)]).fetchone()
    return None if row is None else int(row[0])

"""Read queries for all-pair runs: what a run's statistics are, per-feature marginals, node totals and
the share of a head's scores that features explain (no torch, no streamlit).

Definitions (see `fra_core.fra.marginals`): a query feature's marginal is its contribution q_i^f·k_j to
every selected cell (i, j) where it is active, against the WHOLE key (every key feature and named node);
a key feature's likewise against the whole query. n counts those cells, sum / abs_sum add the value /
|value| over them. A named node (SAE error, b_dec, ln1.b, the Q/K bias, truncation, embeddings, …) has
the same totals over every selected cell, plus sum_vs_features: against the other side's features only.
So, per head, Σ query marginals + Σ query node totals = Σ of the head's (transformed) scores over the
selected cells, and Σ pairs + Σ query nodes + Σ key nodes' sum_vs_features = the same total.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from store.errors import StoreError
from store.sqlparts import resolve_run

MARGINAL_ORDERS = {"abs_sum": "abs_sum DESC", "sum": "sum DESC", "neg_sum": "sum ASC", "n": "n DESC"}


def run_statistics(con, run: int | str) -> dict[str, Any]:
    """{"statistics": 'all_pairs'|'top_m'|None, "top_m_kept": m or None, "label": a one-line description}."""
    run_id = resolve_run(con, run)
    stats, m = con.execute("SELECT statistics, top_m_kept FROM runs WHERE id = ?", [run_id]).fetchone()
    if stats == "all_pairs":
        label = "exact: every feature pair of every selected cell"
    elif stats == "top_m":
        label = (f"top-{m} kept: a pair counts only in the cells where it was among the {m} largest |FRA| "
                 "(sums undercount, means are biased by the selection)")
    else:
        label = "no pair statistics"
    return {"statistics": stats, "top_m_kept": m, "label": label}


def _head_filter(run_id: int, layer: int | None, head: int | None) -> tuple[str, list]:
    where, params = ["run = ?"], [run_id]
    for col, value in (("layer", layer), ("head", head)):
        if value is not None:
            where.append(f"{col} = ?")
            params.append(int(value))
    return " AND ".join(where), params


def feature_marginals(con, run: int | str, *, side: str = "query", layer: int | None = None,
                      head: int | None = None, n: int = 50, order: str = "abs_sum") -> pd.DataFrame:
    """Top features of one side by their marginal (summed over shards): layer, head, src, feature, n
    (cells where active), sum, abs_sum, mean = sum / n, share = sum / the head's score total."""
    if side not in ("query", "key"):
        raise StoreError(f"side must be 'query' or 'key', got {side!r}")
    if order not in MARGINAL_ORDERS:
        raise StoreError(f"order must be one of {list(MARGINAL_ORDERS)}, got {order!r}")
    run_id = resolve_run(con, run)
    where, params = _head_filter(run_id, layer, head)
    return con.execute(f"""
        WITH m AS (SELECT layer, head, src, feature, sum(n)::UBIGINT AS n, sum(sum) AS sum,
                          sum(abs_sum) AS abs_sum
                   FROM feature_marginals WHERE {where} AND side = ? GROUP BY ALL),
             t AS (SELECT layer, head, sum(sum) AS total FROM
                     (SELECT layer, head, sum FROM feature_marginals WHERE {where} AND side = 'query'
                      UNION ALL SELECT layer, head, sum FROM node_totals WHERE {where} AND side = 'query')
                   GROUP BY ALL)
        SELECT m.*, m.sum / nullif(m.n, 0) AS mean, m.sum / nullif(t.total, 0) AS share
        FROM m LEFT JOIN t USING (layer, head)
        ORDER BY {MARGINAL_ORDERS[order]}, layer, head, src, feature LIMIT {min(int(n), 10_000)}""",
                       params + [side] + params + params).df()


def node_totals(con, run: int | str, *, layer: int | None = None, head: int | None = None) -> pd.DataFrame:
    """Per (layer, head, side, node): n, sum, abs_sum, sum_vs_features (summed over shards)."""
    run_id = resolve_run(con, run)
    where, params = _head_filter(run_id, layer, head)
    return con.execute(f"""
        SELECT layer, head, side, node, sum(n)::UBIGINT AS n, sum(sum) AS sum, sum(abs_sum) AS abs_sum,
               sum(sum_vs_features) AS sum_vs_features
        FROM node_totals WHERE {where} GROUP BY ALL ORDER BY layer, head, side DESC, node""", params).df()


def score_shares(con, run: int | str) -> pd.DataFrame:
    """Per (layer, head): the score total over the selected cells and how it splits.

    total = Σ query marginals + Σ query node totals; feature_pairs = Σ pair sums (feature × feature);
    query_nodes = Σ query node totals (each against the whole key); key_nodes_vs_features = Σ key node
    totals against the query features. The three parts add up to total; *_share divide by it.
    """
    run_id = resolve_run(con, run)
    # the compacted pairs' sums per head: pair_summary keeps them (runs compacted before migration 0013
    # do not: a scan of pair_rows); rows staged since the last compaction are added (co-activation ones
    # with each head's G applied)
    stale = con.execute("SELECT count_if(sum IS NULL) FROM pair_summary WHERE run = ?", [run_id]).fetchone()[0]
    compacted = ("SELECT layer, head, sum FROM pair_rows WHERE run = $1" if stale else
                 "SELECT layer, head, sum FROM pair_summary WHERE run = $1")
    df = con.execute(f"""
        WITH qm AS (SELECT layer, head, sum(sum) AS s FROM feature_marginals WHERE run = $1 AND side = 'query'
                    GROUP BY ALL),
             qn AS (SELECT layer, head, sum(sum) AS s FROM node_totals WHERE run = $1 AND side = 'query' GROUP BY ALL),
             kn AS (SELECT layer, head, sum(sum_vs_features) AS s FROM node_totals WHERE run = $1 AND side = 'key'
                    GROUP BY ALL),
             p AS (SELECT layer, head, sum(sum) AS s FROM
                     ({compacted}
                      UNION ALL SELECT layer, head, sum FROM pair_stats_staged WHERE run = $1
                      UNION ALL SELECT c.layer, q.head, list_dot_product(q.vec, k.vec) * c.s  -- staged coact: G·s
                      FROM pair_coact_staged c
                      JOIN pair_proj q ON q.run = c.run AND q.layer = c.layer AND q.side = 'q' AND q.src = c.q_src
                                          AND q.feature = c.q_feat
                      JOIN pair_proj k ON k.run = c.run AND k.layer = c.layer AND k.head = q.head AND k.side = 'k'
                                          AND k.src = c.k_src AND k.feature = c.k_feat
                      WHERE c.run = $1) GROUP BY ALL)
        SELECT qn.layer, qn.head, coalesce(qm.s, 0) + qn.s AS total, coalesce(p.s, 0) AS feature_pairs,
               qn.s AS query_nodes, coalesce(kn.s, 0) AS key_nodes_vs_features
        FROM qn LEFT JOIN qm USING (layer, head) LEFT JOIN kn USING (layer, head) LEFT JOIN p USING (layer, head)
        ORDER BY layer, head""", [run_id]).df()
    for col in ("feature_pairs", "query_nodes", "key_nodes_vs_features"):
        df[f"{col}_share"] = df[col] / df["total"].where(df["total"] != 0)
    return df

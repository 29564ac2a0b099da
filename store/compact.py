"""Compaction: a run's staged shard rows merged into its pair tables, summaries, top-K lists, feature
densities and automatic labels, in one transaction (queries always see a consistent run).

Co-activation rows (all-pair runs, head-independent layers: `pair_coact`) merge like pair rows do, before
any head's G is applied: for a pair (f, g) the shards' co-activation statistics add (n, s = Σ ã_if ã_jg,
abs, diag_*) or combine (mx = the largest product, mn = the smallest, each with its cell). Because
head h's sum is G_h[f, g] · s and G does not depend on the data, G·(Σ over shards of s) is head h's sum
over all shards, so the merged table serves every head (the view `pair_rows` applies G)."""

from __future__ import annotations

from store.coact_g import fill_g
from store.labels import refresh_auto_labels
from store.sqlparts import KEY
from store.topk import has_coact, refresh_top

DEFAULT_EXAMPLES = 3  # example contexts kept per pair


def compact_run(con, run: int, examples_per_pair: int = DEFAULT_EXAMPLES) -> int:
    """Merge the run's staged shard rows into pair_stats / pair_examples (one transaction).

    Counts and sums add, max/min combine; examples keep the top `examples_per_pair` per pair by
    |value|. Rows are written ordered by (layer, head, sum DESC) so DuckDB's zone maps skip other heads
    when a page filters by head, and a top-N by sum stops after the first row groups. The per-head
    counts in pair_summary are rebuilt. Returns the number of staged rows merged.
    """
    staged = staged_rows(con, run)
    if not staged:
        return 0
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _merged AS
            SELECT run, {KEY}, sum(n)::UBIGINT AS n, sum(sum) AS sum, sum(abs_sum) AS abs_sum,
                   max(max) AS max, min(min) AS min, sum(diag_n)::UBIGINT AS diag_n,
                   sum(diag_sum) AS diag_sum, sum(diag_abs_sum) AS diag_abs_sum,
                   sum(sum) - sum(diag_sum) AS nd_sum
            FROM (SELECT * EXCLUDE (nd_sum) FROM pair_stats WHERE run = $1
                  UNION ALL SELECT * FROM pair_stats_staged WHERE run = $1)
            GROUP BY run, {KEY} ORDER BY layer, head, sum DESC""", [run])
        con.execute("DELETE FROM pair_stats WHERE run = ?", [run])
        con.execute("INSERT INTO pair_stats SELECT * FROM _merged")
        con.execute("DELETE FROM pair_stats_staged WHERE run = ?", [run])
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _merged AS
            SELECT * FROM (SELECT * FROM pair_examples WHERE run = $1
                           UNION ALL SELECT * FROM pair_examples_staged WHERE run = $1)
            QUALIFY row_number() OVER (PARTITION BY {KEY} ORDER BY abs(value) DESC, sample, q_pos, k_pos) <= $2
            ORDER BY layer, head""", [run, examples_per_pair])
        con.execute("DELETE FROM pair_examples WHERE run = ?", [run])
        con.execute("INSERT INTO pair_examples SELECT * FROM _merged")
        con.execute("DELETE FROM pair_examples_staged WHERE run = ?", [run])
        con.execute("DROP TABLE _merged")
        _merge_coact(con, run)
        refresh_summary(con, run)
        _update_feature_density(con, run)
        refresh_auto_labels(con, run)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return int(staged)


def staged_rows(con, run: int) -> int:
    """Rows of the run waiting for compaction (pair rows and co-activation rows)."""
    return int(con.execute("""SELECT (SELECT count(*) FROM pair_stats_staged WHERE run = $1)
                                     + (SELECT count(*) FROM pair_coact_staged WHERE run = $1)""", [run]).fetchone()[0])


COACT_KEY = "layer, q_src, q_feat, k_src, k_feat"


def _merge_coact(con, run: int) -> None:
    """pair_coact of the run ∪ its staged co-activation rows, merged per (layer, pair), with each head's G;
    call inside a transaction.

    mx keeps the largest product with the earliest (sample, q, k) cell among ties, mn the smallest
    likewise (deterministic whatever the order the shards came in): the minimum of the struct (−mx, cell)
    is the largest mx and, among equal ones, the smallest cell; −x is exact in floating point.
    G[h] = q.vec · k.vec of head h's proj rows (numpy, `store.coact_g`), stored per row as a list over the layer's
    heads (pair_coact_heads.idx): the views then expand a row to its heads by a list lookup instead of two
    joins and a d_head-long dot product per row and head (10x faster scans, benchmarks/bench_pages.py).
    A pair already compacted keeps its G (its vectors cannot change: ingest refuses a differing one), so
    only pairs new since the last compaction are computed — unless the layer's heads changed.
    """
    if not con.execute("SELECT count(*) FROM pair_coact_staged WHERE run = ?", [run]).fetchone()[0]:
        return
    before = con.execute("SELECT layer, head, idx FROM pair_coact_heads WHERE run = ? ORDER BY ALL", [run]).fetchall()
    con.execute("DELETE FROM pair_coact_heads WHERE run = ?", [run])
    con.execute("""INSERT INTO pair_coact_heads
                   SELECT run, layer, head, row_number() OVER (PARTITION BY layer ORDER BY head)::INTEGER
                   FROM (SELECT DISTINCT run, layer, head FROM pair_proj WHERE run = ?)""", [run])
    after = con.execute("SELECT layer, head, idx FROM pair_coact_heads WHERE run = ? ORDER BY ALL", [run]).fetchall()
    keep_g = "o.g" if before == after else "NULL::DOUBLE[]"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _merged AS
        WITH m AS (
            SELECT run, {COACT_KEY}, sum(n)::UBIGINT AS n, sum(s) AS s, sum("abs") AS "abs",
                   min({{'v': -mx, 's': mx_sample, 'q': mx_q, 'k': mx_k}}) AS top,
                   min({{'v': mn, 's': mn_sample, 'q': mn_q, 'k': mn_k}}) AS bottom,
                   sum(diag_n)::UBIGINT AS diag_n, sum(diag_s) AS diag_s, sum(diag_abs) AS diag_abs
            FROM (SELECT * EXCLUDE (g) FROM pair_coact WHERE run = $1
                  UNION ALL SELECT * FROM pair_coact_staged WHERE run = $1)
            GROUP BY run, {COACT_KEY})
        SELECT m.run, m.layer, m.q_src, m.q_feat, m.k_src, m.k_feat, m.n, m.s, m."abs", -m.top.v AS mx,
               m.bottom.v AS mn, m.diag_n, m.diag_s, m.diag_abs, m.top.s AS mx_sample, m.top.q AS mx_q,
               m.top.k AS mx_k, m.bottom.s AS mn_sample, m.bottom.q AS mn_q, m.bottom.k AS mn_k,
               {keep_g} AS g
        FROM m
        LEFT JOIN pair_coact o ON o.run = $1 AND o.layer = m.layer AND o.q_src = m.q_src AND o.q_feat = m.q_feat
                               AND o.k_src = m.k_src AND o.k_feat = m.k_feat
        ORDER BY m.layer, m.q_src, m.q_feat, m.k_src, m.k_feat""", [run])
    fill_g(con, run, "_merged")  # the new pairs' G (numpy: store.coact_g); refuses a row lacking a vector
    con.execute("DELETE FROM pair_coact WHERE run = ?", [run])
    con.execute("""INSERT INTO pair_coact SELECT m.* EXCLUDE (g), coalesce(m.g, n.g)
                   FROM _merged m LEFT JOIN _g_new n ON n.rid = m.rowid ORDER BY m.rowid""")
    con.execute("DELETE FROM pair_coact_staged WHERE run = ?", [run])
    con.execute("DROP TABLE _merged")
    con.execute("DROP TABLE _g_new")


def refresh_summary(con, run: int) -> None:
    """Rebuild the run's per-head counts and |FRA| totals (pair_summary), runs.n_pairs and its pre-ranked
    top-K lists (`store.topk`; none for a co-activation run), from pair_stats, or for a co-activation run
    in one streaming pass over the view `pair_rows` (G applied per row and head); call inside a transaction."""
    source = "pair_rows" if has_coact(con, run) else "pair_stats"  # the view: one streaming pass
    con.execute("DELETE FROM pair_summary WHERE run = ?", [run])
    con.execute(f"""INSERT INTO pair_summary (run, layer, head, unique_pairs, self_pairs, occurrences,
                                              diagonal_occurrences, sum, abs_sum, max_abs)
                    SELECT run, layer, head, count(*), count_if(q_src = k_src AND q_feat = k_feat), sum(n),
                           sum(diag_n), sum(sum), sum(abs_sum), max(greatest(abs(max), abs(min)))
                    FROM {source} WHERE run = ? GROUP BY run, layer, head""", [run])
    con.execute("UPDATE runs SET n_pairs = (SELECT coalesce(sum(unique_pairs), 0) FROM pair_summary WHERE run = $1)"
                " WHERE id = $1", [run])
    refresh_top(con, run)


def _update_feature_density(con, run: int) -> None:
    """features.density = active tokens / ALL tokens the run has seen (every SAE of a run encodes every
    token; dividing by the tokens of the shards where the feature appeared would overestimate rare
    features, the more so the smaller the shards). Labels are kept."""
    con.execute("""
        INSERT INTO features (sae_id, feature, density)
        SELECT s.sae_id, c.feature,
               (sum(c.n_active) / (SELECT sum(n_tokens) FROM samples_done WHERE run = $1))::FLOAT
        FROM feature_counts c JOIN sources s ON s.run = c.run AND s.src = c.src
        WHERE c.run = $1 AND s.sae_id IS NOT NULL
        GROUP BY s.sae_id, c.feature
        ON CONFLICT (sae_id, feature) DO UPDATE SET density = excluded.density""", [run])

"""The DuckDB schema, as ordered, named migrations recorded in `_migrations`.

A migration is applied once, in order, inside one transaction with the row that records it, so a
crash mid-migration leaves the database at the previous version. Never edit a migration that has
shipped: append a new one.

Types are narrow on purpose (a run holds tens of millions of pair rows): `USMALLINT` layer/head/source,
`UINTEGER` feature ids, `FLOAT` per-occurrence values (max, min, example values). Sums are `DOUBLE`:
they add millions of float32 terms and are merged shard by shard, and float32 running sums would make
"one job" and "two resumed halves" differ in the 4th digit.

Pair statistics also keep the diagonal (query position == key position) contributions separately
(`diag_n`, `diag_sum`, `diag_abs_sum`), so the pages can show every statistic with or without the
diagonal from one run: the diagonal trivially creates feature-f x feature-f pairs.

Compaction writes each run's pair rows ordered by (layer, head, sum DESC): DuckDB's zone maps then let
"top N by sum" (the default view) read one row group per head instead of the whole run. Rankings by
other metrics come from `pair_top` (per-run top-K lists, `store.topk`), also rebuilt by compaction.

All-pair runs store head-independent layers as ONE co-activation table per layer (`pair_coact`, 0013)
plus each head's projected decoder rows (`pair_proj`): head h's statistics are G_h[f, g] times the
table's (G = q.vec · k.vec). Readers never touch pair_stats / pair_examples directly: the views
`pair_rows` / `pair_example_rows` hold both kinds of rows in pair_stats' / pair_examples' columns.
"""

from __future__ import annotations

import datetime as _dt

MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("0001_runs", """
        CREATE SEQUENCE runs_id_seq START 1;
        CREATE TABLE runs (
            id UINTEGER PRIMARY KEY DEFAULT nextval('runs_id_seq'),
            name VARCHAR NOT NULL UNIQUE,        -- the job id (job folder name)
            kind VARCHAR NOT NULL,
            config JSON,
            config_hash VARCHAR,
            model_id VARCHAR,
            q_sae_id VARCHAR,
            k_sae_id VARCHAR,
            layer USMALLINT,
            heads USMALLINT[],
            code_version VARCHAR,
            status VARCHAR NOT NULL DEFAULT 'queued',
            message VARCHAR,
            n_samples UBIGINT NOT NULL DEFAULT 0,   -- samples ingested
            n_pairs UBIGINT NOT NULL DEFAULT 0,     -- rows in pair_stats (after the last compaction)
            n_samples_target UBIGINT,
            created TIMESTAMP,
            started TIMESTAMP,
            finished TIMESTAMP,
            updated TIMESTAMP,
            wall_s DOUBLE,
            job_dir VARCHAR
        );
    """),
    ("0002_sources_features", """
        CREATE TABLE sources (
            run UINTEGER NOT NULL,
            src USMALLINT NOT NULL,
            kind VARCHAR NOT NULL,               -- 'sae', 'sae_error', 'bias', 'embed', ...
            name VARCHAR NOT NULL,
            sae_id VARCHAR,
            hook VARCHAR,
            d_sae UINTEGER,
            PRIMARY KEY (run, src)
        );
        CREATE TABLE features (
            sae_id VARCHAR NOT NULL,
            feature UINTEGER NOT NULL,
            density FLOAT,
            label VARCHAR,
            PRIMARY KEY (sae_id, feature)
        );
    """),
    ("0003_pair_stats", """
        CREATE TABLE pair_stats (
            run UINTEGER NOT NULL, layer USMALLINT NOT NULL, head USMALLINT NOT NULL,
            q_src USMALLINT NOT NULL, q_feat UINTEGER NOT NULL,
            k_src USMALLINT NOT NULL, k_feat UINTEGER NOT NULL,
            n UBIGINT NOT NULL, sum DOUBLE NOT NULL, abs_sum DOUBLE NOT NULL,
            max FLOAT NOT NULL, min FLOAT NOT NULL,
            diag_n UBIGINT NOT NULL, diag_sum DOUBLE NOT NULL, diag_abs_sum DOUBLE NOT NULL,
            -- sum - diag_sum, stored: a plain column lets "top N without the diagonal" prune row groups
            nd_sum DOUBLE NOT NULL
        );
        -- rows of ingested shards not yet merged into pair_stats (see store.compact.compact_run)
        CREATE TABLE pair_stats_staged AS SELECT * EXCLUDE (nd_sum) FROM pair_stats LIMIT 0;
        -- per-head counts, rebuilt by each compaction: summary figures without scanning the run
        CREATE TABLE pair_summary (
            run UINTEGER NOT NULL, layer USMALLINT NOT NULL, head USMALLINT NOT NULL,
            unique_pairs UBIGINT NOT NULL, self_pairs UBIGINT NOT NULL,
            occurrences UBIGINT NOT NULL, diagonal_occurrences UBIGINT NOT NULL
        );
        CREATE TABLE pair_examples (
            run UINTEGER NOT NULL, layer USMALLINT NOT NULL, head USMALLINT NOT NULL,
            q_src USMALLINT NOT NULL, q_feat UINTEGER NOT NULL,
            k_src USMALLINT NOT NULL, k_feat UINTEGER NOT NULL,
            sample UBIGINT NOT NULL, q_pos USMALLINT NOT NULL, k_pos USMALLINT NOT NULL,
            value FLOAT NOT NULL
        );
        CREATE TABLE pair_examples_staged AS SELECT * FROM pair_examples LIMIT 0;
    """),
    ("0004_ledgers", """
        CREATE TABLE samples_done (
            run UINTEGER NOT NULL, sample UBIGINT NOT NULL, shard UINTEGER NOT NULL,
            n_tokens USMALLINT, tokens VARCHAR[],
            PRIMARY KEY (run, sample)
        );
        CREATE TABLE ingested_shards (
            run UINTEGER NOT NULL, shard UINTEGER NOT NULL, n_samples UINTEGER NOT NULL,
            n_pairs UBIGINT NOT NULL, ingested TIMESTAMP NOT NULL,
            PRIMARY KEY (run, shard)
        );
    """),
    ("0005_feature_counts", """
        -- active-token counts per (run, source, feature), for densities
        CREATE TABLE feature_counts (
            run UINTEGER NOT NULL, src USMALLINT NOT NULL, feature UINTEGER NOT NULL,
            n_active UBIGINT NOT NULL, n_tokens UBIGINT NOT NULL
        );
    """),
    ("0006_deleted_runs", """
        -- tombstones: a deleted run's job folder is not ingested again by ingest_all_jobs
        CREATE TABLE deleted_runs (name VARCHAR PRIMARY KEY, deleted TIMESTAMP NOT NULL);
    """),
    ("0007_pair_top", """
        -- per run and (metric, diagonal, dir): the K best pair_stats rows of the whole run, rebuilt by
        -- each compaction, so a page's top-N by an expression (mean, max |FRA|) needs no scan (store.topk)
        CREATE TABLE pair_top AS
            SELECT run, ''::VARCHAR AS metric, true AS diagonal, ''::VARCHAR AS dir, * EXCLUDE (run),
                   0::DOUBLE AS value
            FROM pair_stats LIMIT 0;
        CREATE TABLE pair_top_lists (
            run UINTEGER NOT NULL, metric VARCHAR NOT NULL, diagonal BOOLEAN NOT NULL, dir VARCHAR NOT NULL,
            k UINTEGER NOT NULL,        -- the list's capacity when it was built
            n_rows UBIGINT NOT NULL,    -- rows kept (< k: the list holds every ranked row of the run)
            cut DOUBLE,                 -- the last kept value: rows beyond it are all in the list
            PRIMARY KEY (run, metric, diagonal, dir)
        );
    """),
    ("0008_feature_tokens", """
        -- per shard: each feature's most frequent tokens ('tok') and tokens before it ('prev'), with counts
        CREATE TABLE feature_tokens (
            run UINTEGER NOT NULL, src USMALLINT NOT NULL, feature UINTEGER NOT NULL, kind VARCHAR NOT NULL,
            token VARCHAR NOT NULL, n UBIGINT NOT NULL
        );
        -- rebuilt by each compaction from feature_tokens: the pair tables' automatic feature labels
        CREATE TABLE feature_auto_labels (
            run UINTEGER NOT NULL, src USMALLINT NOT NULL, feature UINTEGER NOT NULL,
            top_token VARCHAR, top_token_share FLOAT, top_prev VARCHAR, top_prev_share FLOAT,
            label VARCHAR NOT NULL,
            PRIMARY KEY (run, src, feature)
        );
    """),
    ("0009_run_completeness", """
        -- per run, layer and head: the measured max |Σ FRA terms − hook_attn_scores| / max |scores| of the
        -- job's first batch (read from run.json "completeness"; jobs fail above 1e-4)
        CREATE TABLE run_completeness (
            run UINTEGER NOT NULL, layer USMALLINT NOT NULL, head USMALLINT NOT NULL,
            max_relative_error DOUBLE NOT NULL,
            PRIMARY KEY (run, layer, head)
        );
    """),
    ("0010_allpair_stats", """
        -- what a run's pair statistics are: 'all_pairs' = exact, every pair of every selected cell;
        -- 'top_m' = only the top_m_kept pairs per cell were counted (every run before this migration)
        ALTER TABLE runs ADD COLUMN statistics VARCHAR;
        ALTER TABLE runs ADD COLUMN top_m_kept UINTEGER;
        ALTER TABLE runs ADD COLUMN layers USMALLINT[];
        UPDATE runs SET statistics = 'top_m', top_m_kept = coalesce(TRY_CAST(config->>'$.top_m' AS UINTEGER), 8),
                        layers = CASE WHEN layer IS NULL THEN NULL ELSE [layer] END
            WHERE kind = 'accumulate';
        -- all-pair runs: each feature's total contribution against the whole other side, per shard
        CREATE TABLE feature_marginals (
            run UINTEGER NOT NULL, layer USMALLINT NOT NULL, head USMALLINT NOT NULL, side VARCHAR NOT NULL,
            src USMALLINT NOT NULL, feature UINTEGER NOT NULL,
            n UBIGINT NOT NULL, sum DOUBLE NOT NULL, abs_sum DOUBLE NOT NULL
        );
        -- all-pair runs: the named non-feature nodes' totals (SAE error, b_dec, biases, ...), per shard
        CREATE TABLE node_totals (
            run UINTEGER NOT NULL, layer USMALLINT NOT NULL, head USMALLINT NOT NULL, side VARCHAR NOT NULL,
            node VARCHAR NOT NULL, n UBIGINT NOT NULL, sum DOUBLE NOT NULL, abs_sum DOUBLE NOT NULL,
            sum_vs_features DOUBLE NOT NULL
        );
    """),
    ("0011_owners", """
        -- who launched a run's job (job.json "owner"; NULL in local mode and for older jobs), and who last
        -- set a feature's label
        ALTER TABLE runs ADD COLUMN owner VARCHAR;
        ALTER TABLE features ADD COLUMN labelled_by VARCHAR;
    """),
    ("0012_feature_acts", """
        -- per shard: each feature's largest ('top') and randomly drawn ('sample') activations with the
        -- feature's activation on the tokens around them (fra_core.accumulate.feature_acts)
        CREATE TABLE feature_acts (
            run UINTEGER NOT NULL, src USMALLINT NOT NULL, feature UINTEGER NOT NULL, kind VARCHAR NOT NULL,
            sample UBIGINT NOT NULL, pos USMALLINT NOT NULL, value FLOAT NOT NULL, ctx_acts FLOAT[]
        );
        -- log2-binned activation counts per feature, summed over shards at ingest
        CREATE TABLE feature_hist (
            run UINTEGER NOT NULL, src USMALLINT NOT NULL, feature UINTEGER NOT NULL, bin SMALLINT NOT NULL,
            n UBIGINT NOT NULL,
            PRIMARY KEY (run, src, feature, bin)
        );
    """),
    ("0013_pair_coact", """
        -- all-pair runs, head-independent layers: the layer's co-activation table ONCE for all heads
        -- (fra_core.contracts.COACT_SCHEMA, merged over shards by compaction) and each head's projected
        -- decoder rows; head h's statistics of pair (f, g) are G·(co-activation statistics) with
        -- G = q.vec · k.vec (side 'q': U_f[h], side 'k': V_g[h] / attn_scale), applied by the views below
        CREATE TABLE pair_coact (
            run UINTEGER NOT NULL, layer USMALLINT NOT NULL,
            q_src USMALLINT NOT NULL, q_feat UINTEGER NOT NULL,
            k_src USMALLINT NOT NULL, k_feat UINTEGER NOT NULL,
            n UBIGINT NOT NULL, s DOUBLE NOT NULL, abs DOUBLE NOT NULL,   -- Σ ã_if ã_jg, Σ |ã_if ã_jg|
            mx DOUBLE NOT NULL, mn DOUBLE NOT NULL,                       -- largest / smallest product
            diag_n UBIGINT NOT NULL, diag_s DOUBLE NOT NULL, diag_abs DOUBLE NOT NULL,
            mx_sample UBIGINT NOT NULL, mx_q USMALLINT NOT NULL, mx_k USMALLINT NOT NULL,  -- cell of mx
            mn_sample UBIGINT NOT NULL, mn_q USMALLINT NOT NULL, mn_k USMALLINT NOT NULL,  -- cell of mn
            -- G of each head of the layer, in pair_coact_heads.idx order: list_dot_product(q.vec, k.vec)
            -- of the pair's pair_proj rows, computed once by compaction (the views read it, so a page
            -- never recomputes 64-d dot products per row and head)
            g DOUBLE[] NOT NULL
        );
        CREATE TABLE pair_coact_staged AS SELECT * EXCLUDE (g) FROM pair_coact LIMIT 0;
        CREATE TABLE pair_proj (
            run UINTEGER NOT NULL, layer USMALLINT NOT NULL, head USMALLINT NOT NULL,
            side VARCHAR NOT NULL, src USMALLINT NOT NULL, feature UINTEGER NOT NULL,
            vec DOUBLE[] NOT NULL,
            PRIMARY KEY (run, layer, head, side, src, feature)
        );
        -- the heads of each co-activation layer of a run and their position in pair_coact.g (1-based)
        CREATE TABLE pair_coact_heads (
            run UINTEGER NOT NULL, layer USMALLINT NOT NULL, head USMALLINT NOT NULL, idx INTEGER NOT NULL,
            PRIMARY KEY (run, layer, head)
        );
        -- per head, kept by compaction: Σ FRA, Σ|FRA| and the largest |FRA| (head_summary and
        -- score_shares without a scan; NULL for runs compacted before this migration)
        ALTER TABLE pair_summary ADD COLUMN sum DOUBLE;
        ALTER TABLE pair_summary ADD COLUMN abs_sum DOUBLE;
        ALTER TABLE pair_summary ADD COLUMN max_abs DOUBLE;
        -- every pair row of every run, in pair_stats' columns: stored rows (top-m runs, per-head all-pair
        -- layers) and the co-activation rows expanded per head: sum = G·s, abs_sum = |G|·abs,
        -- max/min = the larger/smaller of G·mx and G·mn (G < 0 swaps them), nd_sum = G·(s − diag_s)
        CREATE VIEW pair_rows AS
            SELECT * FROM pair_stats
            UNION ALL
            SELECT run, layer, head, q_src, q_feat, k_src, k_feat, n, g * s AS sum, abs(g) * "abs" AS abs_sum,
                   greatest(g * mx, g * mn)::FLOAT AS max, least(g * mx, g * mn)::FLOAT AS min,
                   diag_n, g * diag_s AS diag_sum, abs(g) * diag_abs AS diag_abs_sum, g * (s - diag_s) AS nd_sum
            FROM (SELECT c.* EXCLUDE (g), h.head, c.g[h.idx] AS g
                  FROM pair_coact c JOIN pair_coact_heads h ON h.run = c.run AND h.layer = c.layer);
        -- every example row, in pair_examples' columns: stored ones and, per co-activation row and head,
        -- the max cell (value G·mx) and the min cell (G·mn) where it is another cell; with the run's
        -- examples_per_pair = 1 only the one with the larger |value| (ties: the cell of the head's max
        -- value, i.e. the max cell if G >= 0, else the min cell), with 0 none
        CREATE VIEW pair_example_rows AS
            SELECT * FROM pair_examples
            UNION ALL
            SELECT run, layer, head, q_src, q_feat, k_src, k_feat, sample, q_pos, k_pos, value
            FROM (SELECT c.run, c.layer, h.head, c.q_src, c.q_feat, c.k_src, c.k_feat,
                         (c.g[h.idx] * c.mx)::FLOAT AS v_mx, (c.g[h.idx] * c.mn)::FLOAT AS v_mn, c.g[h.idx] >= 0 AS pos,
                         (c.mn_sample, c.mn_q, c.mn_k) <> (c.mx_sample, c.mx_q, c.mx_k) AS two,
                         coalesce(TRY_CAST(r.config->>'$.examples_per_pair' AS INTEGER), 3) AS epp,
                         c.mx_sample, c.mx_q, c.mx_k, c.mn_sample, c.mn_q, c.mn_k
                  FROM pair_coact c
                  JOIN pair_coact_heads h ON h.run = c.run AND h.layer = c.layer
                  JOIN runs r ON r.id = c.run) e,
                 LATERAL (SELECT mx_sample AS sample, mx_q AS q_pos, mx_k AS k_pos, v_mx AS value
                          WHERE epp >= 2 OR (epp = 1 AND (NOT two OR abs(v_mx) > abs(v_mn)
                                                          OR (abs(v_mx) = abs(v_mn) AND pos)))
                          UNION ALL
                          SELECT mn_sample, mn_q, mn_k, v_mn
                          WHERE two AND (epp >= 2 OR (epp = 1 AND (abs(v_mn) > abs(v_mx)
                                                                   OR (abs(v_mn) = abs(v_mx) AND NOT pos)))));
    """),
)

# tables that hold per-run rows (delete_run and the results package walk these)
RUN_TABLES: tuple[str, ...] = ("pair_stats", "pair_stats_staged", "pair_summary", "pair_examples",
                               "pair_examples_staged", "pair_top", "pair_top_lists",
                               "samples_done", "ingested_shards", "sources", "feature_counts", "feature_tokens",
                               "feature_auto_labels", "run_completeness", "feature_marginals", "node_totals",
                               "feature_acts", "feature_hist", "pair_coact", "pair_coact_staged", "pair_proj",
                               "pair_coact_heads")


def applied_migrations(con) -> list[str]:
    """Names of the migrations recorded in this database, in order (empty for a new database)."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = '_migrations'").fetchone()[0]
    if not exists:
        return []
    return [row[0] for row in con.execute("SELECT name FROM _migrations ORDER BY seq").fetchall()]


def migrate(con) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (seq INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
                " applied TIMESTAMP NOT NULL)")
    done = applied_migrations(con)
    known = [name for name, _ in MIGRATIONS]
    if done != known[: len(done)]:
        raise RuntimeError(f"database migrations {done} do not match this code's {known}: "
                           "the database was written by a different version of FRA Studio")
    applied = []
    for seq, (name, sql) in enumerate(MIGRATIONS):
        if seq < len(done):
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO _migrations VALUES (?, ?, ?)", [seq, name, _dt.datetime.now()])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied

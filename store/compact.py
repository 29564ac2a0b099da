"""Compaction: a run's staged shard rows merged into its pair tables, summaries, top-K lists, feature
densities and automatic labels, in one transaction (queries always see a consistent run).

Co-activation rows (all-pair runs, head-independent layers: `pair_coact`) merge like pair rows do, before
any head's G is applied: for a pair (f, g) the shards' co-activation statistics add (n, s = Σ ã_if ã_jg,
abs, diag_*) or combine (mx = the largest product, mn = the smallest, each with its cell). Because
head h's sum is G_h[f, g] · s and G does not depend on the data, G·(Σ over shards of s) is head h's sum
over all shards, so the merged table serves every head (the view `pair_rows` applies G)."""

from __future__ import annotations

import contextlib

import duckdb
import numpy as np
import pyarrow as pa

from fra_core import contracts
from store.coact_g import g_array, g_list, head_totals, layer_index
from store.coact_merge import merge_rows
from store.errors import StoreError
from store.labels import refresh_auto_labels
from store.sqlparts import KEY
from store.topk import has_coact, refresh_top
from store.topk_coact import COLUMNS as LIST_COLUMNS

DEFAULT_EXAMPLES = 3  # example contexts kept per pair


def compact_run(con, run: int, examples_per_pair: int = DEFAULT_EXAMPLES) -> int:
    """Merge the run's staged shard rows into pair_stats / pair_examples (one transaction).

    Counts and sums add, max/min combine; examples keep the top `examples_per_pair` per pair by
    |value|. Rows are written ordered by (layer, head, sum DESC) so DuckDB's zone maps skip other heads
    when a page filters by head, and a top-N by sum stops after the first row groups. The per-head
    counts in pair_summary are rebuilt. Returns the number of staged rows merged.
    """
    if not staged_rows(con, run):
        return 0
    con.execute("BEGIN TRANSACTION")
    try:
        staged = compact_in_transaction(con, run, examples_per_pair)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return staged


def compact_in_transaction(con, run: int, examples_per_pair: int = DEFAULT_EXAMPLES,
                           held: pa.Table | None = None) -> int:
    """`compact_run`'s work inside the caller's transaction. held: co-activation rows (COACT_SCHEMA) of a
    shard the caller ingests in this transaction without staging them (`store.ingest`), merged as if they
    were staged last, so the result equals staging them and compacting (their 3.2 M rows of a GPT-2-shaped
    shard are then never written to pair_coact_staged, read back and deleted)."""
    held = held if held is not None and held.num_rows else None
    staged = staged_rows(con, run) + (held.num_rows if held is not None else 0)
    if not staged:
        return 0
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
    refresh_summary(con, run, *(_merge_coact(con, run, held) or (None, None)))
    _update_feature_density(con, run)
    refresh_auto_labels(con, run)
    return int(staged)


def staged_rows(con, run: int) -> int:
    """Rows of the run waiting for compaction (pair rows and co-activation rows)."""
    return int(con.execute("""SELECT (SELECT count(*) FROM pair_stats_staged WHERE run = $1)
                                     + (SELECT count(*) FROM pair_coact_staged WHERE run = $1)""", [run]).fetchone()[0])


COACT_COLUMNS = ", ".join(contracts.COACT_SCHEMA.names)
SUMMARY_COLUMNS = ("unique_pairs", "self_pairs", "occurrences", "diagonal_occurrences", "sum", "abs_sum", "max_abs")


def _merge_coact(con, run: int, held: pa.Table | None = None
                 ) -> tuple[dict[tuple[int, int], dict], dict[int, tuple]] | None:
    """pair_coact of the run ∪ its staged co-activation rows ∪ `held` (rows not staged, see
    `compact_in_transaction`), merged per (layer, pair) with each head's G;
    call inside a transaction. Returns the per-(layer, head) totals of the merged rows (`coact_g.head_totals`,
    what `refresh_summary` needs of them) and per layer the merged columns the top-K lists read with their G
    (`store.topk_coact.layer_arrays`' form), None if nothing was staged.

    One layer at a time in numpy (`store.coact_merge`; rows in pair order, G by `contracts.row_strengths`),
    inserted once: no GROUP BY, join or sort in SQL. G[h] = q.vec · k.vec of head h's proj rows, stored per
    row as a list over the layer's heads (pair_coact_heads.idx): the views then expand a row to its heads by a
    list lookup instead of two joins and a d_head-long dot product per row and head (10x faster scans,
    benchmarks/bench_pages.py). A pair already compacted keeps its G (its vectors cannot change: ingest refuses
    a differing one), so only pairs new since the last compaction are computed — unless the layer's heads
    changed. A pair's G does not depend on which pairs are computed with it, so this equals one compaction.
    """
    n_staged = con.execute("SELECT count(*) FROM pair_coact_staged WHERE run = ?", [run]).fetchall()[0][0]
    if not n_staged and held is None:
        return None
    before = _layer_heads(con, run)
    con.execute("DELETE FROM pair_coact_heads WHERE run = ?", [run])
    con.execute("""INSERT INTO pair_coact_heads
                   SELECT run, layer, head, row_number() OVER (PARTITION BY layer ORDER BY head)::INTEGER
                   FROM (SELECT DISTINCT run, layer, head FROM pair_proj WHERE run = ?)""", [run])
    after = _layer_heads(con, run)
    layers = [r[0] for r in con.execute("""SELECT DISTINCT layer FROM pair_coact_staged WHERE run = $1 UNION
                                           SELECT DISTINCT layer FROM pair_coact WHERE run = $1 ORDER BY 1""",
                                        [run]).fetchall()]
    held_layers = _by_layer(held)
    layers = sorted(set(layers) | set(held_layers))
    totals, lists = {}, {}
    for layer in layers:
        if layer not in after:
            raise StoreError(f"run {run} layer {layer}: co-activation rows but no proj vectors of any head")
        per_head, lists[layer] = _merge_layer(con, run, layer, after[layer], keep_g=before.get(layer) == after[layer],
                                              held=held_layers.get(layer), staged=bool(n_staged))
        totals.update({(layer, head): {c: v[i] if c in ("sum", "abs_sum", "max_abs") else v
                                       for c, v in per_head.items()} for i, head in enumerate(after[layer])})
    if n_staged:
        con.execute("DELETE FROM pair_coact_staged WHERE run = ?", [run])
    return totals, lists


def _by_layer(held: pa.Table | None) -> dict[int, pa.Table]:
    """held's rows per layer (in their order)."""
    if held is None or not held.num_rows:
        return {}
    layer = held.column("layer").to_numpy()
    if layer.min() == layer.max():
        return {int(layer[0]): held}
    return {int(v): held.take(np.flatnonzero(layer == v)) for v in np.unique(layer)}


def _layer_heads(con, run: int) -> dict[int, list[int]]:
    return {layer: list(hs) for layer, hs in con.execute(
        "SELECT layer, list(head ORDER BY idx) FROM pair_coact_heads WHERE run = ? GROUP BY layer", [run]).fetchall()}


TOTALS_COLUMNS = ("q_src", "q_feat", "k_src", "k_feat", "n", "s", "abs", "mx", "mn", "diag_n")  # what head_totals reads


def _merge_layer(con, run: int, layer: int, heads: list[int], keep_g: bool, held: pa.Table | None = None,
                 staged: bool = True) -> tuple[dict, tuple]:
    """Merge one layer's compacted, staged (if `staged`) and held rows, replace its pair_coact rows; (its
    `head_totals`, (its merged columns of `topk_coact.COLUMNS`, G [rows, head_index]))."""
    g = f", g::DOUBLE[{len(heads)}] AS g" if keep_g else ""  # fixed-size: half a list's conversion time
    try:
        old = con.sql(f"SELECT {COACT_COLUMNS}{g} FROM pair_coact WHERE run = ? AND layer = ?",
                      params=[run, layer]).to_arrow_table()
    except duckdb.Error as exc:
        raise StoreError(f"run {run} layer {layer}: pair_coact g is not its {len(heads)} heads' G ({exc})") from exc
    news = [con.sql(f"SELECT {COACT_COLUMNS} FROM pair_coact_staged WHERE run = ? AND layer = ?",
                    params=[run, layer]).to_arrow_table()] if staged else []
    news = [t for t in [*news, held] if t is not None and t.num_rows]  # staged rows first, then held ones
    parts = [old, *news] if old.num_rows else news  # compacted rows first (the layer has some rows)
    cols = {c: _numpy(parts, c) for c in TOTALS_COLUMNS}
    Q, qi, K, ki = layer_index(con, run, layer, heads, cols)
    key = qi * len(K) + ki
    if old.num_rows == 0 and len(news) == 1 and bool(np.all(key[1:] > key[:-1])):  # one shard's rows, in pair order
        merged, first, out = cols, np.arange(len(key)), {c: news[0].column(c) for c in contracts.COACT_SCHEMA.names}
    else:
        merged, first = merge_rows({c: cols.get(c, _numpy(parts, c)) for c in contracts.COACT_SCHEMA.names}, key)
        out = {c: pa.array(merged[c], contracts.COACT_SCHEMA.field(c).type) for c in contracts.COACT_SCHEMA.names}
    kept = (first < old.num_rows) if keep_g else np.zeros(len(first), dtype=bool)
    if kept.any():
        G = np.empty((len(first), len(heads)))
        G[kept] = g_array(old.column("g"), len(heads))[first[kept]]
        G[~kept] = contracts.row_strengths(Q, qi[first[~kept]], K, ki[first[~kept]])
    else:
        G = contracts.row_strengths(Q, qi[first], K, ki[first])
    table = pa.table({"run": pa.array(np.full(len(first), run, dtype=np.uint32)), **out, "g": g_list(G)})
    con.execute("DELETE FROM pair_coact WHERE run = ? AND layer = ?", [run, layer])
    con.register("_coact_merged", table)
    try:
        con.execute(f"INSERT INTO pair_coact (run, {COACT_COLUMNS}, g) SELECT run, {COACT_COLUMNS}, g "
                    "FROM _coact_merged")
    finally:
        with contextlib.suppress(Exception):  # an aborted transaction refuses; the original error matters
            con.unregister("_coact_merged")
    lists = {c: merged[c] if c in merged else out[c].to_numpy() for c in LIST_COLUMNS}
    return head_totals(merged, G), (lists, G)


def _numpy(parts: list[pa.Table], column: str) -> np.ndarray:
    arrays = [t.column(column).to_numpy() for t in parts]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def refresh_summary(con, run: int, coact: dict[tuple[int, int], dict] | None = None,
                    held: dict[int, tuple] | None = None) -> None:
    """Rebuild the run's per-head counts and |FRA| totals (pair_summary), runs.n_pairs and its pre-ranked
    top-K lists (`store.topk`; a co-activation run's from the candidates `store.topk_coact` picks); call
    inside a transaction.

    From pair_stats in SQL, plus the co-activation rows' totals per (layer, head) `coact` when the caller
    holds them (compaction: `_merge_coact`); without them a co-activation run's are one streaming pass over
    the view `pair_rows` (G applied per row and head). held: compaction's merged rows and G per layer,
    handed to the top-K lists (`store.topk.refresh_top`)."""
    scan = "pair_rows" if coact is None and has_coact(con, run) else "pair_stats"
    rows = con.execute(f"""SELECT layer, head, count(*), count_if(q_src = k_src AND q_feat = k_feat), sum(n),
                                  sum(diag_n), sum(sum), sum(abs_sum), max(greatest(abs(max), abs(min)))
                           FROM {scan} WHERE run = ? GROUP BY layer, head""", [run]).fetchall()
    per_head = {(layer, head): dict(zip(SUMMARY_COLUMNS, vals)) for layer, head, *vals in rows}
    for key, t in (coact or {}).items():
        per_head[key] = _add_totals(per_head[key], t) if key in per_head else t
    con.execute("DELETE FROM pair_summary WHERE run = ?", [run])
    con.executemany("""INSERT INTO pair_summary (run, layer, head, unique_pairs, self_pairs, occurrences,
                                                 diagonal_occurrences, sum, abs_sum, max_abs)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    [[run, layer, head, *(_plain(t[c]) for c in SUMMARY_COLUMNS)]
                     for (layer, head), t in sorted(per_head.items())])
    con.execute("UPDATE runs SET n_pairs = (SELECT coalesce(sum(unique_pairs), 0) FROM pair_summary WHERE run = $1)"
                " WHERE id = $1", [run])
    refresh_top(con, run, held=held)


def _add_totals(a: dict, b: dict) -> dict:
    """Totals of two disjoint row sets of one (layer, head); a NULL (no rows with a value) is left out."""
    out = {}
    for c in SUMMARY_COLUMNS:
        x, y = a[c], b[c]
        out[c] = y if x is None else x if y is None else max(x, y) if c == "max_abs" else x + y
    return out


def _plain(v):
    """A numpy scalar as the Python number DuckDB binds (None stays NULL)."""
    return v.item() if isinstance(v, np.generic) else v


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

"""Ingest of accumulation-job shards, run bookkeeping, and run deletion (the app's write path).

`ingest_job_shards(con, job_dir)` is idempotent: each complete shard is ingested in one transaction
that also records it in `ingested_shards`, so calling it again (after a crash, from a second app
instance, every few seconds while a job runs) never counts a shard twice. The `samples_done` primary
key is the second guard: a sample that appears in two shards aborts that shard's transaction.

Shard rows land in `*_staged` tables (a cheap append); `store.compact.compact_run` then merges them into
`pair_stats` / `pair_examples` / `pair_coact` in one transaction, so queries always see a consistent run.
Where a pass compacts anyway, its last shard is compacted inside that shard's own transaction and its
co-activation rows go to compaction in memory, never through pair_coact_staged (`_compact_with`).
A shard's projected rows (`proj`: each head's q/k vectors of the features its co-activation rows touch)
go straight into `pair_proj`; every shard repeats the vectors of the features it touches, so rows
already there are skipped, after checking they are the same vectors (a run whose shards disagree on a
feature's vector — dictionaries or weights changed mid-run — is refused, never mixed).
Bulk data goes in through Arrow (`INSERT ... SELECT ... FROM <registered arrow table>`), never
row-by-row.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Callable

import yaml

from fra_core import contracts
from fra_core.contracts import job_status, read_json
from store.compact import DEFAULT_EXAMPLES, compact_in_transaction, compact_run, staged_rows
from store.errors import StoreError
from store.schema import RUN_TABLES
from store.sqlparts import resolve_run
from store.topk import backfill_top


def _ts(value: Any) -> _dt.datetime | None:
    if not value:
        return None
    try:
        return _dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def register_run(con, name: str, kind: str, config: dict[str, Any], *, config_hash: str | None = None,
                 code_version: str | None = None, status: str = "queued", job_dir: str | None = None,
                 created: _dt.datetime | None = None) -> int:
    """Insert a run (or return the id of the existing run with that name)."""
    row = con.execute("SELECT id FROM runs WHERE name = ?", [name]).fetchone()
    if row is not None:
        return int(row[0])
    def refs(key: str) -> str | None:  # AccumulateFRAConfig has lists (q_saes, k_saes); accept one string too
        value = config.get(key) or config.get(key[:-1])
        return ",".join(value) if isinstance(value, (list, tuple)) else value

    sae_q = refs("q_saes") or config.get("sae")
    sae_k = refs("k_saes") or sae_q
    heads = config.get("heads")
    con.execute(
        "INSERT INTO runs (name, kind, config, config_hash, model_id, q_sae_id, k_sae_id, layer, heads,"
        " code_version, status, n_samples_target, created, updated, job_dir)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [name, kind, json.dumps(config, sort_keys=True), config_hash, config.get("model"), sae_q, sae_k,
         config.get("layer"), list(heads) if heads else None, code_version, status,
         config.get("n_samples"), created or _dt.datetime.now(), _dt.datetime.now(), job_dir])
    run = resolve_run(con, name)
    if kind == "accumulate":  # configs from before statistics='all_pairs' counted the top_m pairs per cell
        stats = config.get("statistics") or "top_m"
        layers = config.get("layers") or ([config["layer"]] if config.get("layer") is not None else None)
        con.execute("UPDATE runs SET statistics = ?, top_m_kept = ?, layers = ? WHERE id = ?",
                    [stats, int(config.get("top_m") or 8) if stats == "top_m" else None, layers, run])
    return run


def _register_job(con, job_dir: Path) -> int:
    meta = read_json(job_dir / "job.json") or {}
    config_path = job_dir / "config.yaml"
    if not meta or not config_path.is_file():
        raise StoreError(f"{job_dir} is not a job folder (job.json / config.yaml missing)")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    config.pop("job", None)
    info = contracts.read_run_info(job_dir)
    con.execute("BEGIN TRANSACTION")
    try:
        run = register_run(con, job_dir.name, meta.get("kind", "accumulate"), config,
                           config_hash=meta.get("config_hash"), code_version=info.get("code_version"),
                           job_dir=str(job_dir), created=_ts(meta.get("created")))
        con.execute("UPDATE runs SET owner = ? WHERE id = ? AND owner IS NULL", [meta.get("owner"), run])
        known = {r[0] for r in con.execute("SELECT src FROM sources WHERE run = ?", [run]).fetchall()}
        for src in info.get("sources", []):
            if src["src"] not in known:
                con.execute("INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [run, src["src"], src["kind"], src["name"], src.get("sae_id"), src.get("hook"),
                             src.get("d_sae")])
        _store_completeness(con, run, info.get("completeness") or {})
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return run


def _store_completeness(con, run: int, completeness: dict) -> None:
    """run.json "completeness": {"<layer>": {"<head>": max_relative_error}} → run_completeness rows."""
    for layer, heads in completeness.items():
        for head, err in heads.items():
            con.execute("INSERT OR REPLACE INTO run_completeness VALUES (?, ?, ?, ?)",
                        [run, int(layer), int(head), float(err)])


def _insert_arrow(con, table: str, run: int, view: str, columns: tuple[str, ...] | list[str]) -> None:
    cols = ", ".join(columns)
    con.execute(f"INSERT INTO {table} (run, {cols}) SELECT ?, {cols} FROM {view}", [run])


def ingest_shard(con, run: int, job_dir: Path, manifest: dict[str, Any],
                 compact: Callable[[Any], Any] | None = None) -> bool:
    """Ingest one complete shard in one transaction; False if it was ingested before.

    compact: called in that transaction once the shard's rows are in, with its co-activation rows (an Arrow
    table, COACT_SCHEMA), which are then not staged: `ingest_job_shards` compacts the run there
    (`compact.compact_in_transaction`), so a shard and its compaction commit together (or neither does)."""
    shard = int(manifest["shard"])
    if con.execute("SELECT 1 FROM ingested_shards WHERE run = ? AND shard = ?", [run, shard]).fetchone():
        return False
    tables = {kind: contracts.read_shard_table(job_dir, shard, kind) for kind in contracts.KINDS}
    tables["samples"] = tables["samples"].append_column(
        "shard", _const_column(shard, tables["samples"].num_rows))
    # Arrow tables are registered as views outside the transaction (an aborted transaction refuses
    # to unregister them)
    for kind, table in tables.items():
        con.register(f"_shard_{kind}", table)
    compacting = False
    con.execute("BEGIN TRANSACTION")
    try:
        _insert_arrow(con, "pair_stats_staged", run, "_shard_pairs", contracts.PAIRS_SCHEMA.names)
        _insert_arrow(con, "pair_examples_staged", run, "_shard_examples", contracts.EXAMPLES_SCHEMA.names)
        if compact is None:
            _insert_arrow(con, "pair_coact_staged", run, "_shard_coact", contracts.COACT_SCHEMA.names)
        _insert_proj(con, run, shard, job_dir.name)
        _insert_arrow(con, "feature_counts", run, "_shard_features", contracts.FEATURES_SCHEMA.names)
        _insert_arrow(con, "feature_tokens", run, "_shard_feature_tokens", contracts.FEATURE_TOKENS_SCHEMA.names)
        _insert_arrow(con, "feature_acts", run, "_shard_feature_acts", contracts.FEATURE_ACTS_SCHEMA.names)
        con.execute("""INSERT INTO feature_hist SELECT ?, src, feature, bin, n FROM _shard_feature_hist
                       ON CONFLICT DO UPDATE SET n = feature_hist.n + excluded.n""", [run])
        _insert_arrow(con, "samples_done", run, "_shard_samples", ("sample", "shard", "n_tokens", "tokens"))
        _insert_arrow(con, "feature_marginals", run, "_shard_marginals", contracts.MARGINALS_SCHEMA.names)
        _insert_arrow(con, "node_totals", run, "_shard_node_totals", contracts.NODE_TOTALS_SCHEMA.names)
        con.execute("INSERT INTO ingested_shards VALUES (?, ?, ?, ?, ?)",
                    [run, shard, len(manifest["samples"]), tables["pairs"].num_rows + tables["coact"].num_rows,
                     _dt.datetime.now()])
        con.execute("UPDATE runs SET n_samples = n_samples + ?, updated = ? WHERE id = ?",
                    [len(manifest["samples"]), _dt.datetime.now(), run])
        if compact is not None:
            compacting = True
            compact(tables["coact"])
        con.execute("COMMIT")
    except Exception as exc:
        con.execute("ROLLBACK")
        if isinstance(exc, StoreError) or compacting:  # compaction's errors are its own
            raise
        if "Duplicate key" in str(exc) or "PRIMARY KEY" in str(exc):
            raise StoreError(f"shard {shard} of {job_dir.name} repeats samples that an earlier shard "
                             f"already counted; refusing to count them twice ({exc})") from exc
        raise
    finally:
        for kind in tables:
            con.unregister(f"_shard_{kind}")
    return True


# the relative difference above which two shards' vectors of one (layer, head, side, feature) are not the
# same vector (float64 recomputations of one row agree to a few ulp; a changed dictionary does not)
PROJ_RTOL = 1e-9


def _insert_proj(con, run: int, shard: int, job: str) -> None:
    """The shard's projected rows into pair_proj, skipping those already there once they are checked
    to be the same vectors (call inside the shard's transaction)."""
    bad = con.execute("""
        SELECT * FROM (
            SELECT s.layer, s.head, s.side, s.src, s.feature, len(s.vec) AS n_new, len(p.vec) AS n_old,
                   CASE WHEN len(s.vec) = len(p.vec) THEN list_distance(s.vec, p.vec)
                        / greatest(sqrt(list_dot_product(p.vec, p.vec)), 1e-300) END AS rel
            FROM _shard_proj s JOIN pair_proj p ON p.run = ? AND p.layer = s.layer AND p.head = s.head
                 AND p.side = s.side AND p.src = s.src AND p.feature = s.feature)
        WHERE n_new <> n_old OR rel > ? LIMIT 1""", [run, PROJ_RTOL]).fetchone()
    if bad is not None:
        layer, head, side, src, feature, n_new, n_old, rel = bad
        raise StoreError(f"shard {shard} of {job}: its proj vector of (layer {layer}, head {head}, side {side!r}, "
                         f"src {src}, feature {feature}) differs from the one an earlier shard stored "
                         f"(length {n_new} vs {n_old}, relative difference {rel}); the run's dictionaries or "
                         "weights changed between shards, so its statistics would mix two models: refusing")
    _insert_new_proj(con, run)
    # every co-activation row needs both features' vectors for every head of its layer (its G per head): checked
    # per distinct (layer, side, src, feature) the shard's rows touch, then one offending row is named
    missing = con.execute("""
        WITH heads AS (SELECT layer, count(DISTINCT head) AS n_heads FROM pair_proj WHERE run = $1 GROUP BY layer),
             have AS (SELECT layer, side, src, feature, count(*) AS n FROM pair_proj WHERE run = $1 GROUP BY ALL),
             need AS (SELECT DISTINCT layer, 'q' AS side, q_src AS src, q_feat AS feature FROM _shard_coact
                      UNION SELECT DISTINCT layer, 'k', k_src, k_feat FROM _shard_coact)
        SELECT f.layer, f.side, f.src, f.feature FROM need f LEFT JOIN heads h ON h.layer = f.layer
        LEFT JOIN have v ON v.layer = f.layer AND v.side = f.side AND v.src = f.src AND v.feature = f.feature
        WHERE h.n_heads IS NULL OR coalesce(v.n, 0) <> h.n_heads
        ORDER BY f.layer, f.side DESC, f.src, f.feature LIMIT 1""", [run]).fetchone()
    if missing is not None:
        layer, side, src, feature = missing
        key, n_heads, n_q, n_k = _missing_row(con, run, layer, side, src, feature)
        raise StoreError(f"shard {shard} of {job}: co-activation row (layer, q_src, q_feat, k_src, k_feat) = "
                         f"{tuple(key)} has {n_q} 'q' and {n_k} 'k' proj vectors stored, but its layer has "
                         f"{n_heads} heads: its per-head statistics cannot be computed; refusing the shard")


def _insert_new_proj(con, run: int) -> None:
    """The shard's proj rows not in pair_proj yet, inserted (call after checking the others are equal). By an
    anti-join, not ON CONFLICT DO NOTHING (0.78 → 0.10 s for a GPT-2-shaped shard's 65 K rows), where the
    shard's own keys are distinct (they are, as jobs write them); ON CONFLICT otherwise, as before."""
    key = "layer, head, side, src, feature"
    if con.execute(f"SELECT count(*) = count(DISTINCT ({key})) FROM _shard_proj").fetchone()[0]:
        con.execute(f"""INSERT INTO pair_proj SELECT ?, {key}, vec FROM _shard_proj s
                        WHERE NOT EXISTS (SELECT 1 FROM pair_proj p WHERE p.run = ? AND p.layer = s.layer
                                          AND p.head = s.head AND p.side = s.side AND p.src = s.src
                                          AND p.feature = s.feature)""", [run, run])
    else:
        con.execute(f"INSERT INTO pair_proj SELECT ?, {key}, vec FROM _shard_proj ON CONFLICT DO NOTHING", [run])


def _missing_row(con, run: int, layer: int, side: str, src: int, feature: int) -> tuple[tuple, int, int, int]:
    """(key, n_heads, n_q, n_k) of a co-activation row of the shard whose `side`
    feature (src, feature) of `layer` lacks some head's proj vector: what the refusal names."""
    col_src, col_feat = ("q_src", "q_feat") if side == "q" else ("k_src", "k_feat")
    key = con.execute(f"""SELECT layer, q_src, q_feat, k_src, k_feat FROM _shard_coact
                          WHERE layer = ? AND {col_src} = ? AND {col_feat} = ? LIMIT 1""",
                      [layer, src, feature]).fetchone()
    n_heads = con.execute("SELECT count(DISTINCT head) FROM pair_proj WHERE run = ? AND layer = ?",
                          [run, layer]).fetchone()[0]

    def n(side: str, src: int, feature: int) -> int:
        return con.execute("SELECT count(*) FROM pair_proj WHERE run = ? AND layer = ? AND side = ? AND src = ?"
                           " AND feature = ?", [run, layer, side, src, feature]).fetchone()[0]

    return key, n_heads, n("q", key[1], key[2]), n("k", key[3], key[4])


def _const_column(value: int, n: int):
    import pyarrow as pa

    return pa.array([value] * n, type=pa.uint32())


def _sync_status(con, run: int, job_dir: Path) -> dict[str, Any]:
    status = job_status(job_dir)
    con.execute("UPDATE runs SET status = ?, message = ?, started = coalesce(?, started),"
                " finished = ?, wall_s = ?, updated = ? WHERE id = ?",
                [status.get("state", "unknown"), status.get("message"), _ts(status.get("started")),
                 _ts(status.get("updated")) if status.get("state") in ("done", "failed", "cancelled") else None,
                 status.get("wall_s"), _dt.datetime.now(), run])
    return status


# Compaction rewrites the whole run, so while a big run's job is still going it waits until the staged
# rows are a quarter of the run; small runs (and finished jobs) are compacted on every ingest.
LIVE_COMPACT_ROWS = 2_000_000
LIVE_COMPACT_FRACTION = 0.25


def _should_compact(con, run: int, state: str | None, extra: int = 0) -> bool:
    """Whether to compact the run now (extra: rows about to be staged, counted as staged)."""
    n_pairs = con.execute("SELECT n_pairs FROM runs WHERE id = ?", [run]).fetchone()[0]
    if state not in ("running", "queued") or n_pairs < LIVE_COMPACT_ROWS:
        return True
    # n_pairs counts co-activation rows once per head (what pair_rows expands them to), staged rows once
    stored = con.execute("""SELECT (SELECT count(*) FROM pair_stats WHERE run = $1)
                                   + (SELECT count(*) FROM pair_coact WHERE run = $1)""", [run]).fetchone()[0]
    return staged_rows(con, run) + extra >= stored * LIVE_COMPACT_FRACTION


def ingest_job_shards(con, job_dir: str | Path, restore: bool = False) -> dict[str, Any]:
    """Register the job's run (if new), ingest its new complete shards, compact, sync its status.

    `con` must be a read-write connection (e.g. from `Store.write()`). A run deleted before is refused
    unless `restore=True`. Returns {"run": id, "shards": n_new, "samples": n_new_samples, "state": job state}.
    """
    job_dir = Path(job_dir)
    if con.execute("SELECT 1 FROM deleted_runs WHERE name = ?", [job_dir.name]).fetchone():
        if not restore:
            raise StoreError(f"run {job_dir.name!r} was deleted; ingest it again with restore=True")
        con.execute("DELETE FROM deleted_runs WHERE name = ?", [job_dir.name])
    run = _register_job(con, job_dir)
    new_shards = new_samples = 0
    manifests = contracts.complete_shards(job_dir)
    for i, manifest in enumerate(manifests):
        compact = _compact_with(con, run, job_dir, manifest) if i == len(manifests) - 1 else None
        if ingest_shard(con, run, job_dir, manifest, compact):
            new_shards += 1
            new_samples += len(manifest["samples"])
    # compaction first, status after: a kill between them leaves the old status, so the next pass sees a
    # change and comes back; and `ingest_all_jobs` also returns to any run with staged rows left over
    status = job_status(job_dir)
    if _should_compact(con, run, status.get("state")):
        compact_run(con, run, _examples_per_pair(con, run))
    status = _sync_status(con, run, job_dir)
    return {"run": run, "shards": new_shards, "samples": new_samples, "state": status.get("state")}


def _examples_per_pair(con, run: int) -> int:
    config = json.loads(con.execute("SELECT config FROM runs WHERE id = ?", [run]).fetchone()[0] or "{}")
    return int(config.get("examples_per_pair", DEFAULT_EXAMPLES))


def _compact_with(con, run: int, job_dir: Path, manifest: dict[str, Any]) -> Callable[[Any], Any] | None:
    """For the last shard of a pass: the compaction to run inside its ingest transaction (its co-activation rows
    handed over, never staged), where the pass would compact after it anyway and the shard has such rows; else
    None. Saves staging them (a GPT-2-shaped shard's 3.2 M rows written, committed, read back and deleted).
    Decided by `_should_compact` on the state before the ingest, with the shard's rows counted as staged; where
    that says no, the shard is staged and the pass decides again afterwards, as before."""
    rows = manifest.get("rows") or {}
    n_new = int(rows.get("coact") or 0)
    if not n_new or not _should_compact(con, run, job_status(job_dir).get("state"), n_new + int(rows.get("pairs") or 0)):
        return None
    return lambda coact: compact_in_transaction(con, run, _examples_per_pair(con, run), held=coact)


def ingest_all_jobs(con, jobs_root: str | Path) -> list[dict[str, Any]]:
    """Ingest every accumulation job folder under `jobs_root` that has something new (shards not yet
    ingested, or a status change); deleted runs are skipped. What the runs page calls on each visit."""
    out = []
    backfill_top(con)  # runs from a database written before the lists existed
    root = Path(jobs_root)
    if not root.is_dir():
        return out
    # (status, shards) of each run; a run with staged rows not yet compacted (a pass killed mid-compaction)
    # never matches, so it is compacted again even though its job folder did not change
    known = {name: (status, n) for name, status, n, staged in con.execute(
        "SELECT r.name, r.status, (SELECT count(*) FROM ingested_shards s WHERE s.run = r.id),"
        " EXISTS (SELECT 1 FROM pair_stats_staged p WHERE p.run = r.id)"
        " OR EXISTS (SELECT 1 FROM pair_coact_staged p WHERE p.run = r.id) FROM runs r").fetchall()
        if not staged or status in ("running", "queued")}
    deleted = {r[0] for r in con.execute("SELECT name FROM deleted_runs").fetchall()}
    for job_dir in sorted(root.iterdir()):
        meta = read_json(job_dir / "job.json") or {}
        if meta.get("kind") != "accumulate" or job_dir.name in deleted:
            continue
        state = job_status(job_dir).get("state")
        n_shards = len(contracts.complete_shards(job_dir))
        if known.get(job_dir.name) == (state, n_shards):
            continue
        out.append({"name": job_dir.name, **ingest_job_shards(con, job_dir)})
    return out


def delete_run(con, run: int | str) -> int:
    """Delete one run and all its rows (one transaction); other runs are never touched. The run's
    name is remembered so `ingest_all_jobs` does not bring it back from its job folder."""
    run_id = resolve_run(con, run)
    name = con.execute("SELECT name FROM runs WHERE id = ?", [run_id]).fetchone()[0]
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("INSERT OR REPLACE INTO deleted_runs VALUES (?, ?)", [name, _dt.datetime.now()])
        for table in RUN_TABLES:
            con.execute(f"DELETE FROM {table} WHERE run = ?", [run_id])
        con.execute("DELETE FROM runs WHERE id = ?", [run_id])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return run_id

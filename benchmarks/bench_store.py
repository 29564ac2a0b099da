"""Store speed on a large run: filtered top-100 and self-pair statistics over an N-row pair table.

    python benchmarks/bench_store.py [--rows 50000000] [--repeat 5] [--ingest-rows 250000] [--only-ingest]

Builds the table inside DuckDB (range() + random(), no Python rows) in a temp database file laid out
like a compacted run (rows ordered by layer, head), then times, on one read session:
  top100      store.top_pairs: one head, self-pairs excluded, min count 2, by sum
  self_stats  store.summary_stats over the whole run: unique pairs, self-pairs, and the self-pair
              fraction of the top 100 with and without the diagonal (from the run's pre-ranked
              top-K lists, built with the table as compaction builds them)
  ingest      (issue 14) ingest + compaction of an all-pair job stored as co-activation rows + proj rows
              (`--ingest-shards` shards of `--ingest-rows` rows, 12 heads, d_head 64) and of the same data
              materialised per head as jobs wrote it before, each into a fresh database, in this run
Goals (DESIGN §7, issue 5): top100 <= 100 ms, self_stats <= 300 ms at 50 M rows on 2 cores.
Prints medians; the last line is `rows=<n> top100_ms=<value> self_stats_ms=<value>
coact_ingest_compact_s=<s> materialised_ingest_compact_s=<s> ratio=<materialised / coact>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402

from store import Store, refresh_summary, register_run, summary_stats, top_pairs  # noqa: E402

N_HEADS, D_SAE = 12, 24_576


def build(store: Store, rows: int) -> int:
    with store.write() as con:
        run = register_run(con, "bench", "accumulate", {"model": "bench", "layer": 5, "heads": list(range(N_HEADS))})
        con.execute("INSERT INTO sources VALUES (?, 0, 'sae', 'bench-sae', 'bench-sae', 'blocks.5.ln1.hook_normalized', ?)",
                    [run, D_SAE])
        # (head, sum DESC) order, as compaction writes it; 3 % self pairs; counts ~ geometric; values ~ N(0, 1)
        con.execute(f"""
            INSERT INTO pair_stats
            WITH base AS (
                SELECT i, (random() * {N_HEADS})::USMALLINT % {N_HEADS} AS head,
                       (random() * {D_SAE})::UINTEGER AS q_feat, random() AS u1, random() AS u2, random() AS u3
                FROM range({rows}) t(i))
            SELECT {run}, 5, head, 0, q_feat, 0,
                   CASE WHEN u1 < 0.03 THEN q_feat ELSE (u1 * 1e6)::UINTEGER % {D_SAE} END AS k_feat,
                   n, s, abs(s) + n * 0.1, (s / n + u3)::FLOAT, (s / n - u3)::FLOAT,
                   CASE WHEN u1 < 0.03 THEN n // 2 ELSE 0 END AS diag_n,
                   CASE WHEN u1 < 0.03 THEN s / 2 ELSE 0 END, CASE WHEN u1 < 0.03 THEN abs(s) / 2 ELSE 0 END,
                   CASE WHEN u1 < 0.03 THEN s / 2 ELSE s END
            FROM (SELECT *, (1 + floor(-ln(u2 + 1e-12) * 4))::UBIGINT AS n,
                         (sqrt(-2 * ln(u2 + 1e-12)) * cos(6.2831853 * u3)) * sqrt(1 + floor(-ln(u2 + 1e-12) * 4)) AS s
                  FROM base)
            ORDER BY head, s DESC""")
        refresh_summary(con, run)
        con.execute("CHECKPOINT")
    return run


def coact_jobs(jobs: Path, shards: int, rows: int, feats: int = 4_000, d_head: int = 64,
               n_samples: int = 2) -> dict[str, Path]:
    """Two all-pair job folders in the real shard format holding the same numbers: per shard, `rows`
    co-activation rows among `feats` features drawn from the SAE (a shard of a few samples touches a few
    thousand), with those features' 12-head q/k proj rows (d_head floats) — and the same data expanded
    per head as jobs wrote it before issue 14 (12 x `rows` pair rows with G applied, and each pair-head's
    max and min cells as examples). {"co-activation": folder, "materialised": folder}."""
    import duckdb
    import yaml

    from fra_core import contracts
    from fra_core.jobs import write_json_atomic

    folders = {}
    for name in ("co-activation", "materialised"):
        job = folders[name] = jobs / name
        job.mkdir(parents=True)
        (job / "config.yaml").write_text(yaml.safe_dump({"job": "AccumulateFRAConfig", "model": "bench", "layer": 5,
                                                         "heads": list(range(N_HEADS)), "statistics": "all_pairs"}))
        write_json_atomic(job / "job.json", {"kind": "accumulate", "created": "2026-01-01T00:00:00"})
        contracts.write_run_info(job, {"sources": [{"src": 0, "kind": "sae", "name": "bench-sae",
                                                    "sae_id": "bench-sae", "hook": "blocks.5.ln1.hook_normalized",
                                                    "d_sae": D_SAE}]})
    con = duckdb.connect()
    for shard in range(shards):
        con.execute(f"SELECT setseed({0.1 + shard / (2 * shards)})")
        con.execute(f"""CREATE OR REPLACE TABLE f AS SELECT row_number() OVER (ORDER BY f) - 1 AS i, f FROM
                        (SELECT DISTINCT (random() * {D_SAE})::UINTEGER % {D_SAE} AS f FROM range({feats * 2}))
                        ORDER BY f LIMIT {feats}""")
        n_f = con.execute("SELECT count(*) FROM f").fetchone()[0]
        con.execute(f"""
            CREATE OR REPLACE TABLE c AS
            WITH p AS (SELECT DISTINCT (random() * {n_f})::INTEGER % {n_f} AS qi, (random() * {n_f})::INTEGER % {n_f} AS ki
                       FROM range({int(rows * 1.2)}) LIMIT {rows}),
            v AS (SELECT qf.f AS q_feat, kf.f AS k_feat, random() AS u1, random() AS u2, random() AS u3, random() AS u4
                  FROM p JOIN f qf ON qf.i = p.qi JOIN f kf ON kf.i = p.ki),
            w AS (SELECT *, (1 + floor(-ln(u2 + 1e-12) * 4))::UBIGINT AS n, u1 * 0.05 AS mn, u1 * 0.05 + u3 * 2 AS mx FROM v)
            SELECT 5::USMALLINT AS layer, 0::USMALLINT AS q_src, q_feat::UINTEGER AS q_feat, 0::USMALLINT AS k_src,
                   k_feat::UINTEGER AS k_feat, n, n * (mn + (mx - mn) * u4) AS s, n * (mn + (mx - mn) * u4) AS abs, mx, mn,
                   (CASE WHEN q_feat = k_feat THEN n // 2 ELSE 0 END)::UBIGINT AS diag_n,
                   CASE WHEN q_feat = k_feat THEN n * mn ELSE 0 END AS diag_s,
                   CASE WHEN q_feat = k_feat THEN n * mn ELSE 0 END AS diag_abs,
                   {shard * n_samples}::UBIGINT AS mx_sample, 20::USMALLINT AS mx_q, 3::USMALLINT AS mx_k,
                   {shard * n_samples + 1}::UBIGINT AS mn_sample, 25::USMALLINT AS mn_q, 7::USMALLINT AS mn_k
            FROM w""")
        con.execute(f"""CREATE OR REPLACE TABLE pr AS SELECT 5::USMALLINT AS layer, h::USMALLINT AS head, side,
                               0::USMALLINT AS src, f::UINTEGER AS feature,
                               list_transform(range({d_head}), lambda x: hash(f::BIGINT * 1000003 + h * 131 + x + (side = 'k')::INT * 7)
                                              / 18446744073709551615.0 - 0.5) AS vec
                        FROM f, range({N_HEADS}) a(h), (VALUES ('q'), ('k')) b(side)""")
        samples = list(range(shard * n_samples, (shard + 1) * n_samples))
        tables = {"samples": pa.table({"sample": pa.array(samples, pa.uint64()),
                                       "n_tokens": pa.array([128] * n_samples, pa.uint16()),
                                       "tokens": pa.array([["t"] * 128] * n_samples, pa.list_(pa.string()))}),
                  "features": contracts.FEATURES_SCHEMA.empty_table()}
        both = {"co-activation": dict(tables), "materialised": dict(tables)}
        tables = both["materialised"]
        x = """(SELECT c.*, q.head, list_dot_product(q.vec, k.vec) AS g FROM c
                 JOIN pr q ON q.side = 'q' AND q.feature = c.q_feat JOIN pr k ON k.side = 'k' AND k.head = q.head
                 AND k.feature = c.k_feat)"""
        tables["pairs"] = con.sql(f"""SELECT layer, head, q_src, q_feat, k_src, k_feat, n, g * s AS sum,
                abs(g) * abs AS abs_sum, greatest(g * mx, g * mn)::FLOAT AS max, least(g * mx, g * mn)::FLOAT AS min,
                diag_n, g * diag_s AS diag_sum, abs(g) * diag_abs AS diag_abs_sum FROM {x}""").to_arrow_table()
        tables["examples"] = con.sql(f"""SELECT layer, head, q_src, q_feat, k_src, k_feat, mx_sample AS sample,
                mx_q AS q_pos, mx_k AS k_pos, (g * mx)::FLOAT AS value FROM {x} UNION ALL SELECT layer, head, q_src,
                q_feat, k_src, k_feat, mn_sample, mn_q, mn_k, (g * mn)::FLOAT FROM {x}""").to_arrow_table()
        tables = both["co-activation"]
        tables["pairs"], tables["examples"] = contracts.PAIRS_SCHEMA.empty_table(), contracts.EXAMPLES_SCHEMA.empty_table()
        tables["coact"], tables["proj"] = con.sql("SELECT * FROM c").to_arrow_table(), con.sql("SELECT * FROM pr").to_arrow_table()
        for name, tables in both.items():
            contracts.write_shard(folders[name], shard, {k: t.cast(contracts.KINDS[k]) for k, t in tables.items()},
                                  samples)
    for job in folders.values():
        write_json_atomic(job / "status.json", {"state": "done"})
    con.close()
    return folders


def ingest_compare(folder: Path, shards: int, rows: int) -> tuple[float, float]:
    """Ingest + compaction of one co-activation job and of the same data materialised per head, each into
    a fresh database, in this process: prints times, rows and database sizes; returns both totals (s)."""
    from fra_core import contracts
    from store import compact_run
    from store.ingest import _register_job, ingest_shard

    out, checks = {}, {}
    jobs = coact_jobs(folder / "jobs", shards, rows)
    for kind, job in jobs.items():
        shard_mb = sum(p.stat().st_size for p in (job / "shards").iterdir()) / 2**20
        store = Store(folder / f"{kind}.duckdb", hold=True)
        load = os.getloadavg()
        with store.write() as con:
            t0 = time.perf_counter()
            run = _register_job(con, job)
            for manifest in contracts.complete_shards(job):
                ingest_shard(con, run, job, manifest)
            t1 = time.perf_counter()
            compact_run(con, run)
            t2 = time.perf_counter()
            con.execute("CHECKPOINT")
            n_rows, n_occ, total = con.execute("SELECT count(*), sum(n), sum(sum) FROM pair_rows WHERE run = ?",
                                               [run]).fetchone()
            checks[kind] = (n_rows, n_occ, total)
            stored = con.execute("SELECT (SELECT count(*) FROM pair_stats) + (SELECT count(*) FROM pair_coact)")\
                .fetchone()[0]
        store.close()
        db_mb = (folder / f"{kind}.duckdb").stat().st_size / 2**20
        out[kind] = t2 - t0
        print(f"ingest {kind:14s}: {shards} shards ({shard_mb:,.0f} MiB of Parquet), ingest {t1 - t0:6.1f} s + "
              f"compaction {t2 - t1:6.1f} s = {t2 - t0:6.1f} s; {stored:,} stored rows serve {n_rows:,} pair rows; "
              f"database {db_mb:,.0f} MiB (uptime load {load[0]:.2f} {load[1]:.2f} before, "
              f"{os.getloadavg()[0]:.2f} after)", flush=True)
    (n_a, occ_a, sum_a), (n_b, occ_b, sum_b) = checks.values()
    if (n_a, occ_a) != (n_b, occ_b) or abs(sum_a - sum_b) > 1e-9 * abs(sum_b):
        raise SystemExit(f"the two databases disagree: {checks}")
    ratio = out["materialised"] / out["co-activation"]
    print(f"ingest + compaction: co-activation {out['co-activation']:.1f} s, materialised {out['materialised']:.1f} s, "
          f"materialised / co-activation = {ratio:.2f}")
    return out["co-activation"], out["materialised"]


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """Median wall ms, median process CPU ms (all DuckDB threads; the machine is shared), last result."""
    fn()  # warm-up (first touch of the blocks)
    times, cpus, out = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.process_time() - c0) * 1000)
    return statistics.median(times), statistics.median(cpus), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", help="database file to (re)use instead of a temp file")
    parser.add_argument("--ingest-shards", type=int, default=4, help="shards of the ingest comparison (issue 14)")
    parser.add_argument("--ingest-rows", type=int, default=250_000,
                        help="co-activation rows per shard of the ingest comparison (x 12 heads materialised); 0 skips it")
    parser.add_argument("--only-ingest", action="store_true", help="skip the query timings")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tail = ""
        if args.ingest_rows:
            coact_s, mat_s = ingest_compare(Path(tmp), args.ingest_shards, args.ingest_rows)
            tail = f" coact_ingest_compact_s={coact_s:.1f} materialised_ingest_compact_s={mat_s:.1f} ratio={mat_s / coact_s:.2f}"
        if args.only_ingest:
            print(tail.strip())
            return 0
        path = Path(args.db) if args.db else Path(tmp) / "bench.duckdb"
        store = Store(path, hold=True)
        t0 = time.perf_counter()
        with store.read() as cur:
            existing = cur.execute("SELECT id, n_pairs FROM runs WHERE name = 'bench'").fetchone()
        run = existing[0] if existing and existing[1] == args.rows else None
        if run is None:
            if existing:
                raise SystemExit(f"{path} holds a bench run of {existing[1]} rows; use another --db")
            run = build(store, args.rows)
            print(f"built {args.rows:,} rows (with the run's top-K lists) in {time.perf_counter() - t0:.1f} s "
                  f"({path.stat().st_size / 2**20:.0f} MiB)", flush=True)
        with store.read() as cur:
            top_ms, top_cpu, top = timed(lambda: top_pairs(cur, run, metric="sum", n=100, head=5, self_pairs="exclude",
                                                  min_count=2), args.repeat)
            self_ms, self_cpu, stats = timed(lambda: summary_stats(cur, run, top_n=100, metric="sum"), args.repeat)
        store.close()
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"top100 (head 5, self-pairs excluded, n >= 2, by sum): {len(top)} rows, median {top_ms:.1f} ms"
              f" (process CPU {top_cpu:.1f} ms; goal <= 100 ms)")
        print(f"self_stats (whole run): {stats}, median {self_ms:.1f} ms (process CPU {self_cpu:.1f} ms; "
              "goal <= 300 ms)")
        print(f"rows={args.rows} top100_ms={top_ms:.1f} self_stats_ms={self_ms:.1f}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Store speed on a large run: filtered top-100 and self-pair statistics over an N-row pair table.

    python benchmarks/bench_store.py [--rows 50000000] [--repeat 5]

Builds the table inside DuckDB (range() + random(), no Python rows) in a temp database file laid out
like a compacted run (rows ordered by layer, head), then times, on one read session:
  top100      store.top_pairs: one head, self-pairs excluded, min count 2, by sum
  self_stats  store.summary_stats over the whole run: unique pairs, self-pairs, and the self-pair
              fraction of the top 100 with and without the diagonal (from the run's pre-ranked
              top-K lists, built with the table as compaction builds them)
Goals (DESIGN §7, issue 5): top100 <= 100 ms, self_stats <= 300 ms at 50 M rows on 2 cores.
Prints medians; the last line is `rows=<n> top100_ms=<value> self_stats_ms=<value>`.
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
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
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
        print(f"rows={args.rows} top100_ms={top_ms:.1f} self_stats_ms={self_ms:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

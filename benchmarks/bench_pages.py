"""Speed of the Pair tables page on a large run: cold load and filter changes.

    python benchmarks/bench_pages.py [--rows 10000000] [--repeat 3] [--db PATH]

Builds a run of N pair rows inside DuckDB (range() + random(), no Python rows) in a temp workspace,
laid out as compaction writes it (rows ordered by layer, head, sum DESC, with the run's top-K lists;
12 heads; d_sae 24 576; ~3 % self-pairs), with 2 M example rows and 100 k samples, then, in fresh Python
processes:

  cold_load   time of the first `AppTest.from_file("pages/pair_tables.py").run()` to a complete render,
              in a fresh process where only Streamlit itself has started (its test harness imported and
              run once on a one-line script, as a running server has done at launch): it includes
              importing pandas / duckdb / store, opening the database, the ingest check and the first
              view's queries. Median over `--repeat` processes.
  filter      on that warm page, the end-to-end rerun time of each filter change (widget set + rerun:
              the page's uncached queries + rendering), over a sequence of changes that never repeats a
              value (no st.cache_data hits); and the same filter changes as bare store queries on one
              held connection ("query only").

Goals (issue 6): cold load <= 1.5 s, any filter change <= 300 ms. The last line is
`cold_load_s=<median cold load> filter_ms=<slowest end-to-end filter change>`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

N_HEADS, D_SAE, LAYER = 12, 24_576, 5

# (label, widget kind, key, value): each value new, so every change misses the query cache
FILTER_CHANGES = [
    ("metric = mean", "selectbox", "pt_metric", "mean"),
    ("metric = max |FRA|", "selectbox", "pt_metric", "max_abs"),
    ("metric = count", "selectbox", "pt_metric", "count"),
    ("head = L5H3", "selectbox", "pt_head", f"L{LAYER}H3"),
    ("self-pairs excluded", "radio", "pt_self", "exclude"),
    ("min count = 3", "number_input", "pt_min_count", 3),
    ("diagonal off", "checkbox", "pt_diag", False),
    ("feature = 123", "text_input", "pt_feature", "123"),
    ("feature side = query", "selectbox", "pt_side", "query"),
    ("order = |value|", "selectbox", "pt_order", "abs"),
    ("head = all heads", "selectbox", "pt_head", "all heads"),
    ("feature = any", "text_input", "pt_feature", ""),
    ("metric = mean |FRA|", "selectbox", "pt_metric", "mean_abs"),
    ("self-pairs only", "radio", "pt_self", "only"),
]

PAGE_RUN = textwrap.dedent("""
    import json, pathlib, sys, tempfile, time
    t0 = time.perf_counter()
    from streamlit.testing.v1 import AppTest
    # the harness's own start-up (runtime, component discovery over every installed package), which a
    # running server has done once at launch: paid here on a one-line script, outside the timing
    warm = pathlib.Path(tempfile.mkdtemp()) / "warm.py"
    warm.write_text("import streamlit as st\\nst.write('warm')\\n")
    AppTest.from_file(str(warm), default_timeout=600).run()
    t_import = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    at = AppTest.from_file(sys.argv[1], default_timeout=600)
    at.run()
    cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert not at.exception and not at.error, ([e.value for e in at.exception], [e.value for e in at.error])
    out = {"import_s": t_import, "cold_s": cold, "cold_cpu_s": cold_cpu, "rows": len(at.dataframe[0].value),
           "filters": []}
    if sys.argv[2] == "filters":
        for label, kind, key, value in json.loads(sys.argv[3]):
            widget = getattr(at, kind)(key=key)
            widget.set_value(value)
            t0, c0 = time.perf_counter(), time.process_time()
            at.run()
            ms, cpu_ms = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
            assert not at.exception and not at.error, (label, [e.value for e in at.error])
            out["filters"].append([label, ms, len(at.dataframe[0].value) if at.dataframe else 0, cpu_ms])
    print(json.dumps(out))
""")


def build(db_path: Path, rows: int, n_examples: int = 2_000_000, n_samples: int = 100_000) -> int:
    from store import Store, refresh_summary, register_run

    store = Store(db_path, hold=True)
    per_head = -(-rows // N_HEADS)
    with store.write() as con:
        run = register_run(con, "bench-10m", "accumulate", {
            "model": "bench", "q_saes": ["bench-sae"], "layer": LAYER, "heads": list(range(N_HEADS)),
            "n_samples": n_samples}, status="done")
        con.execute("INSERT INTO sources VALUES (?, 0, 'sae', 'bench-sae', 'bench-sae', ?, ?)",
                    [run, f"blocks.{LAYER}.ln1.hook_normalized", D_SAE])
        con.execute("SELECT setseed(0.42)")
        # pair j of a head: q = j mod d_sae, k = (⌊j / d_sae⌋·997 + q) mod d_sae — unique per head, and a
        # self-pair exactly when ⌊j / d_sae⌋ = 0 (~3 %); counts ~ geometric, values ~ N(0, 1) (+1.5 for self)
        con.execute(f"""
            INSERT INTO pair_stats
            WITH base AS (SELECT i // {per_head} AS head, i % {per_head} AS j, random() AS u1, random() AS u2,
                                 random() AS u3 FROM range({rows}) t(i)),
            keyed AS (SELECT *, j % {D_SAE} AS q_feat, ((j // {D_SAE}) * 997 + j % {D_SAE}) % {D_SAE} AS k_feat,
                             (1 + floor(-ln(u2 + 1e-12) * 4))::UBIGINT AS n FROM base),
            valued AS (SELECT *, (sqrt(-2 * ln(u1 + 1e-12)) * cos(6.2831853 * u3)
                                  + CASE WHEN q_feat = k_feat THEN 1.5 ELSE 0 END) * n AS s,
                              CASE WHEN q_feat = k_feat THEN n // 2 ELSE 0 END AS dn FROM keyed)
            SELECT {run}, {LAYER}, head, 0, q_feat, 0, k_feat, n, s, abs(s) + n * 0.1,
                   (s / n + u3)::FLOAT, (s / n - u3)::FLOAT, dn,
                   CASE WHEN dn > 0 THEN s / 2 ELSE 0 END, CASE WHEN dn > 0 THEN abs(s) / 2 ELSE 0 END,
                   CASE WHEN dn > 0 THEN s / 2 ELSE s END
            FROM valued ORDER BY head, s DESC""")
        con.execute(f"""
            INSERT INTO pair_examples
            SELECT {run}, layer, head, q_src, q_feat, k_src, k_feat,
                   (hash(q_feat * 7 + k_feat + e) % {n_samples})::UBIGINT, (10 + e)::USMALLINT, (e + 2)::USMALLINT,
                   (sum / n)::FLOAT
            FROM (SELECT * FROM pair_stats WHERE run = {run} USING SAMPLE {n_examples // 2} ROWS), range(2) r(e)
            ORDER BY layer, head""")
        con.execute(f"""INSERT INTO samples_done SELECT {run}, i, i // 64, 32,
                        list_transform(range(32), lambda x: 'tok' || ((i * 31 + x) % 500)::VARCHAR)
                        FROM range({n_samples}) t(i)""")
        refresh_summary(con, run)
        con.execute("UPDATE runs SET n_samples = ?, status = 'done', finished = now() WHERE id = ?", [n_samples, run])
        con.execute("CHECKPOINT")
    store.close()
    return run


def page_process(workspace: Path, mode: str) -> dict:
    env = {**os.environ, "FRA_WORKSPACE": str(workspace), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PAGE_RUN, str(REPO / "pages" / "pair_tables.py"), mode,
                           json.dumps(FILTER_CHANGES)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"page process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def query_only(db_path: Path, run: int) -> list[tuple[str, tuple[float, float]]]:
    """The same filter changes as bare store calls (what the page runs uncached for the Top pairs view)."""
    from store import Store, top_pairs

    state = dict(metric="sum", order="desc", head=None, feature=None, side="either", self_pairs=None,
                 min_count=1, diagonal=True)
    remap = {"pt_metric": "metric", "pt_order": "order", "pt_self": "self_pairs", "pt_min_count": "min_count",
             "pt_diag": "diagonal", "pt_side": "side"}
    store = Store(db_path, hold=True)
    out = []
    with store.read() as cur:
        top_pairs(cur, run, n=100)  # the page's first view (warm, as after the cold load)
        for label, _, key, value in FILTER_CHANGES:
            if key == "pt_head":
                state["head"] = None if value == "all heads" else int(value.split("H")[1])
            elif key == "pt_feature":
                state["feature"] = int(value) if value else None
            elif key == "pt_self":
                state["self_pairs"] = value
            else:
                state[remap[key]] = value
            t0, c0 = time.perf_counter(), time.process_time()
            args = {k: v for k, v in state.items() if k not in ("metric", "order", "diagonal")}
            top_pairs(cur, run, metric=state["metric"], n=100, order=state["order"], diagonal=state["diagonal"],
                      layer=LAYER if state["head"] is not None else None, **args)
            out.append((label, ((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000)))
    store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="cold-load processes (median)")
    parser.add_argument("--db", help="reuse this workspace folder (its fra.duckdb) instead of a temp one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(args.db) if args.db else Path(tmp) / "workspace"
        workspace.mkdir(parents=True, exist_ok=True)
        db_path = workspace / "fra.duckdb"
        if not db_path.exists():
            t0 = time.perf_counter()
            run = build(db_path, args.rows)
            print(f"built {args.rows:,} pair rows (+2 M examples, 100 k samples, top-K lists) in "
                  f"{time.perf_counter() - t0:.1f} s ({db_path.stat().st_size / 2**20:.0f} MiB)", flush=True)
        else:
            run = 1
        print(f"load average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        colds, imports = [], []
        for i in range(args.repeat):
            res = page_process(workspace, "filters" if i == args.repeat - 1 else "cold")
            colds.append(res["cold_s"])
            imports.append(res["import_s"])
            print(f"cold load #{i + 1}: {res['cold_s']:.2f} s, process CPU {res['cold_cpu_s']:.2f} s (first render, "
                  f"{res['rows']} rows; streamlit harness "
                  f"start-up before it, not counted: {res['import_s']:.2f} s)", flush=True)
        cold = statistics.median(colds)
        print("filter changes, wall (process CPU) in ms: end-to-end page rerun | bare top_pairs query on a held "
              "connection:")
        bare = dict(query_only(db_path, run))
        page = res["filters"]
        for label, ms, n_rows, cpu_ms in page:
            print(f"  {label:22s} {ms:8.1f} ({cpu_ms:7.1f}) | {bare[label][0]:7.1f} ({bare[label][1]:7.1f})  "
                  f"({n_rows} rows)")
        page_ms = [row[1] for row in page]
        bare_ms = [wall for wall, _ in bare.values()]
        print(f"filter change: median {statistics.median(page_ms):.1f} ms, slowest {max(page_ms):.1f} ms end to end "
              f"(process CPU median {statistics.median(row[3] for row in page):.1f} ms, slowest "
              f"{max(row[3] for row in page):.1f} ms); bare queries median {statistics.median(bare_ms):.1f} ms, "
              f"slowest {max(bare_ms):.1f} ms")
        print(f"load average after timing: {os.getloadavg()[0]:.1f}")
        print(f"cold_load_s={cold:.2f} filter_ms={max(page_ms):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

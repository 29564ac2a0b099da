"""Speed of the Pair tables page on a large run: cold load and filter changes.

    python benchmarks/bench_pages.py [--rows 10000000] [--coact-rows 1000000] [--repeat 3] [--db PATH]

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

  feature     the Feature page (issue 16) on feature 123 of that run: median cold load of its stored parts
              (density, histogram, contexts, partners per head, labels), in fresh processes that must not
              import torch (the weight-based parts load on demand, behind a button).

  coact       the same cold load and filter changes on an all-pair run stored as co-activation rows
              (issue 14: `--coact-rows` rows of one layer once, each head's 64-d projected rows, pair_rows
              expanding them to 12 x as many per-head rows; compacted by the store itself), in a workspace
              of its own, next to the materialised run.

Goals (issue 6): cold load <= 1.5 s, any filter change <= 300 ms; (issue 16) Feature page cold <= 1.5 s;
the same page goals on the co-activation run (issue 14). The last line is `cold_load_s=<median cold load>
filter_ms=<slowest end-to-end filter change> feature_page_cold_s=<median Feature page cold load>
coact_cold_load_s=<…> coact_filter_ms=<…> coact_feature_page_cold_s=<…>` (the Feature page also runs on
feature 123 of the co-activation run).
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
    for key, value in (json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}).items():
        at.query_params[key] = value
    at.run()
    cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert not at.exception and not at.error, ([e.value for e in at.exception], [e.value for e in at.error])
    out = {"import_s": t_import, "cold_s": cold, "cold_cpu_s": cold_cpu, "rows": len(at.dataframe[0].value),
           "filters": [], "torch": "torch" in sys.modules}
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
        feature_tables(con, run, n_samples)
        refresh_summary(con, run)
        con.execute("UPDATE runs SET n_samples = ?, status = 'done', finished = now() WHERE id = ?", [n_samples, run])
        con.execute("CHECKPOINT")
    store.close()
    return run


def build_coact(db_path: Path, rows: int, d_head: int = 64, n_examples_per_pair: int = 3,
                n_samples: int = 100_000) -> tuple[int, float, float]:
    """An all-pair run stored as compaction leaves a co-activation run (issue 14): `rows` co-activation
    rows of one layer (the same pair layout as `build`, ~3 % self-pairs), every SAE feature's projected
    q/k rows for each of the 12 heads (d_head floats each), staged as a shard leaves them and then
    compacted by `store.compact_run` (the merge, G, pair_summary and the top-K lists over the 12 × `rows`
    rows of pair_rows, whose candidates numpy picks: `store.topk_coact`). Returns (run id, compaction
    seconds, seconds of a rebuild of the lists alone)."""
    from store import Store, compact_run, register_run
    from store.topk import refresh_top

    store = Store(db_path, hold=True)
    with store.write() as con:
        run = register_run(con, "bench-coact", "accumulate", {
            "model": "bench", "q_saes": ["bench-sae"], "layer": LAYER, "heads": list(range(N_HEADS)),
            "n_samples": n_samples, "statistics": "all_pairs", "examples_per_pair": n_examples_per_pair},
                           status="done")
        con.execute("INSERT INTO sources VALUES (?, 0, 'sae', 'bench-sae', 'bench-sae', ?, ?)",
                    [run, f"blocks.{LAYER}.ln1.hook_normalized", D_SAE])
        con.execute("SELECT setseed(0.42)")
        # products ã_if ã_jg >= 0: mn <= s / n <= mx; self-pairs (⌊j / d_sae⌋ = 0) half on the diagonal
        con.execute(f"""
            INSERT INTO pair_coact_staged
            WITH base AS (SELECT i AS j, random() AS u1, random() AS u2, random() AS u3, random() AS u4
                          FROM range({rows}) t(i)),
            v AS (SELECT *, (1 + floor(-ln(u2 + 1e-12) * 4))::UBIGINT AS n, u1 * 0.05 AS mn, u1 * 0.05 + u3 * 2 AS mx
                  FROM base)
            SELECT {run}, {LAYER}, 0, j % {D_SAE}, 0, ((j // {D_SAE}) * 997 + j % {D_SAE}) % {D_SAE}, n,
                   n * (mn + (mx - mn) * u4) AS s, n * (mn + (mx - mn) * u4), mx, mn,
                   CASE WHEN j < {D_SAE} THEN n // 2 ELSE 0 END, CASE WHEN j < {D_SAE} THEN n * mn ELSE 0 END,
                   CASE WHEN j < {D_SAE} THEN n * mn ELSE 0 END,
                   (hash(j) % {n_samples})::UBIGINT, 20, 3, (hash(j + 1) % {n_samples})::UBIGINT, 25, 7
            FROM v""")
        con.execute(f"""INSERT INTO pair_proj SELECT {run}, {LAYER}, h, side, 0, f,
                               list_transform(range({d_head}), lambda x: (random() - 0.5) * 0.5)
                        FROM range({N_HEADS}) a(h), (VALUES ('q'), ('k')) b(side), range({D_SAE}) c(f)""")
        con.execute(f"""INSERT INTO samples_done SELECT {run}, i, i // 64, 32,
                        list_transform(range(32), lambda x: 'tok' || ((i * 31 + x) % 500)::VARCHAR)
                        FROM range({n_samples}) t(i)""")
        feature_tables(con, run, n_samples)
        con.execute("UPDATE runs SET n_samples = ?, status = 'done', finished = now() WHERE id = ?", [n_samples, run])
        t0 = time.perf_counter()
        compact_run(con, run, n_examples_per_pair)
        compact_s = time.perf_counter() - t0
        con.execute("BEGIN TRANSACTION")  # the lists again, alone (compaction calls them in its transaction)
        t0 = time.perf_counter()
        refresh_top(con, run)
        lists_s = time.perf_counter() - t0
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    store.close()
    return run, compact_s, lists_s


def feature_tables(con, run: int, n_samples: int, shards: int = 20) -> None:
    """What a job's shards give the Feature page, for every feature of the SAE: active-token counts,
    5 top + 5 sampled activations with 13-token context windows per shard, a ~20-bin histogram, labels."""
    con.execute(f"""INSERT INTO feature_counts SELECT {run}, 0, f, (1 + f % 97) * {shards}, {n_samples * 32}
                    FROM range({D_SAE}) t(f)""")
    con.execute(f"""INSERT INTO feature_acts
                    SELECT {run}, 0, f, CASE WHEN e < 5 THEN 'top' ELSE 'sample' END,
                           (hash(f * 31 + e + s * 7) % {n_samples})::UBIGINT, (hash(f + e) % 32)::USMALLINT,
                           (1 + random() * 5)::FLOAT, list_transform(range(13), lambda x: (random() * 2)::FLOAT)
                    FROM range({D_SAE}) a(f), range(10) b(e), range({shards}) c(s)""")
    con.execute(f"""INSERT INTO feature_hist SELECT {run}, 0, f, (b - 10)::SMALLINT, (1 + (f * b) % 50)::UBIGINT
                    FROM range({D_SAE}) a(f), range(20) c(b)""")
    con.execute(f"""INSERT INTO feature_auto_labels SELECT {run}, 0, f, 'tok' || f % 500, 0.5, 'tok' || f % 7, 0.3,
                           '‘tok' || f % 500 || '’ 50% · after ‘tok' || f % 7 || '’ 30%' FROM range({D_SAE}) t(f)""")
    con.execute(f"""INSERT INTO feature_tokens SELECT {run}, 0, f, k, 'tok' || (f + i) % 500, 10 - i
                    FROM range({D_SAE}) a(f), range(3) b(i), (VALUES ('tok'), ('prev')) c(k)""")


def page_process(workspace: Path, mode: str, page: str = "pair_tables.py", params: dict | None = None) -> dict:
    env = {**os.environ, "FRA_WORKSPACE": str(workspace), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PAGE_RUN, str(REPO / "pages" / page), mode,
                           json.dumps(FILTER_CHANGES), json.dumps(params or {})], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
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


def feature_page(workspace: Path, repeat: int, label: str = "materialised") -> float:
    """Cold loads of the Feature page's stored parts (density, histogram, contexts, partners per head,
    labels) for feature 123 of the 10 M-pair run; each in a fresh process that must not import torch."""
    params = {"model": "bench", "sae": "bench-sae", "feature": "123", "run": "1"}
    times = []
    for i in range(repeat):
        load = os.getloadavg()
        res = page_process(workspace, "cold", "feature.py", params)
        if res["torch"]:
            raise SystemExit("the Feature page imported torch while rendering its stored parts")
        times.append(res["cold_s"])
        print(f"[{label}] feature page cold load #{i + 1}: {res['cold_s']:.2f} s, process CPU {res['cold_cpu_s']:.2f} s "
              f"(no torch imported; uptime load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs)",
              flush=True)
    return statistics.median(times)


def time_pages(workspace: Path, run: int, repeat: int, label: str) -> tuple[float, float]:
    """Cold loads (median of `repeat` fresh processes) and the filter changes of the last one, end to
    end and as bare queries; prints them with the load; returns (median cold s, slowest filter ms)."""
    db_path = workspace / "fra.duckdb"
    load = os.getloadavg()
    print(f"[{label}] uptime load before timing: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs",
          flush=True)
    colds = []
    for i in range(repeat):
        res = page_process(workspace, "filters" if i == repeat - 1 else "cold")
        colds.append(res["cold_s"])
        print(f"[{label}] cold load #{i + 1}: {res['cold_s']:.2f} s, process CPU {res['cold_cpu_s']:.2f} s (first "
              f"render, {res['rows']} rows; streamlit harness start-up before it, not counted: "
              f"{res['import_s']:.2f} s)", flush=True)
    print(f"[{label}] filter changes, wall (process CPU) in ms: end-to-end page rerun | bare top_pairs query on a "
          "held connection:")
    bare = dict(query_only(db_path, run))
    page = res["filters"]
    for name, ms, n_rows, cpu_ms in page:
        print(f"  {name:22s} {ms:8.1f} ({cpu_ms:7.1f}) | {bare[name][0]:7.1f} ({bare[name][1]:7.1f})  ({n_rows} rows)")
    page_ms = [row[1] for row in page]
    bare_ms = [wall for wall, _ in bare.values()]
    print(f"[{label}] filter change: median {statistics.median(page_ms):.1f} ms, slowest {max(page_ms):.1f} ms end to "
          f"end (process CPU median {statistics.median(row[3] for row in page):.1f} ms, slowest "
          f"{max(row[3] for row in page):.1f} ms); bare queries median {statistics.median(bare_ms):.1f} ms, "
          f"slowest {max(bare_ms):.1f} ms")
    load = os.getloadavg()
    print(f"[{label}] uptime load after timing: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    return statistics.median(colds), max(page_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--coact-rows", type=int, default=1_000_000,
                        help="co-activation rows of the all-pair run (x 12 heads in pair_rows); 0 skips it")
    parser.add_argument("--repeat", type=int, default=3, help="cold-load processes (median)")
    parser.add_argument("--db", help="reuse this folder (its workspace/ and coact/ workspaces) instead of a temp one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.db) if args.db else Path(tmp)
        workspace, coact_ws = root / "workspace", root / "coact"
        for ws in (workspace, coact_ws):
            ws.mkdir(parents=True, exist_ok=True)
        if not (workspace / "fra.duckdb").exists():
            t0 = time.perf_counter()
            build(workspace / "fra.duckdb", args.rows)
            print(f"built {args.rows:,} pair rows (+2 M examples, 100 k samples, top-K lists) in "
                  f"{time.perf_counter() - t0:.1f} s ({(workspace / 'fra.duckdb').stat().st_size / 2**20:.0f} MiB)",
                  flush=True)
        if args.coact_rows and not (coact_ws / "fra.duckdb").exists():
            t0 = time.perf_counter()
            _, compact_s, lists_s = build_coact(coact_ws / "fra.duckdb", args.coact_rows)
            load = os.getloadavg()
            print(f"built a co-activation run: {args.coact_rows:,} rows x {N_HEADS} heads, d_head 64, in "
                  f"{time.perf_counter() - t0:.1f} s, of which compaction (merge, summary, top-K lists over "
                  f"{args.coact_rows * N_HEADS:,} pair_rows) {compact_s:.1f} s, the lists alone {lists_s:.1f} s "
                  f"({(coact_ws / 'fra.duckdb').stat().st_size / 2**20:.0f} MiB; uptime load {load[0]:.2f})",
                  flush=True)
        cold, filter_ms = time_pages(workspace, 1, args.repeat, f"materialised {args.rows:,} rows")
        coact = time_pages(coact_ws, 1, args.repeat, f"co-activation {args.coact_rows:,} x {N_HEADS}") \
            if args.coact_rows else None
        feature_cold = feature_page(workspace, args.repeat)
        coact_feature = feature_page(coact_ws, args.repeat, "co-activation") if args.coact_rows else None
        tail = (f" coact_cold_load_s={coact[0]:.2f} coact_filter_ms={coact[1]:.0f} "
                f"coact_feature_page_cold_s={coact_feature:.2f}") if coact else ""
        print(f"cold_load_s={cold:.2f} filter_ms={filter_ms:.0f} feature_page_cold_s={feature_cold:.2f}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

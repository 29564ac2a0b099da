"""Exports of a run: a filtered pair table (Parquet / CSV), the HTML report, and the `.tar.gz`
results package (a DuckDB extract of just this run + Parquet + report + config).

Every export takes an optional `progress(fraction, text)` callback (fraction in 0…1, non-decreasing, 1.0
at the end): the package reports each table it extracts and the bytes it has compressed, so a caller
(the UI passes one that draws a progress bar) can show a 50 s export moving. No UI code here.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import duckdb
import yaml

from store.errors import StoreError
from store.queries import (
    LABEL_COLUMNS,
    get_run,
    label_joins,
    metric_sql,
    pair_filter,
    self_fraction_by_head,
    summary_stats,
    top_pairs,
    value_histogram,
)
from store.report import html_table, render_report, svg_bar_chart, svg_histogram
from store.schema import RUN_TABLES, migrate
from store.sqlparts import KEY, resolve_run

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, text: str) -> None:
    pass


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def export_pairs(con, run: int | str, path: str | Path, fmt: str = "parquet", *, metric: str = "sum",
                 limit: int | None = None, diagonal: bool = True, progress: Progress | None = None,
                 **filters: Any) -> Path:
    """Write the filtered pairs of a run (all of them unless `limit`), best first, with DuckDB's COPY
    (streams, so a 50 M-row run never passes through Python). `progress`: before and after the COPY
    (one statement: DuckDB reports no rows in between)."""
    progress = progress or _no_progress
    if fmt not in ("parquet", "csv"):
        raise StoreError(f"unknown export format {fmt!r}; choose 'parquet' or 'csv'")
    run_id = resolve_run(con, run)
    where, params = pair_filter(run_id, diagonal=diagonal, **filters)
    m = metric_sql(metric, diagonal)
    lim = f"LIMIT {int(limit)}" if limit else ""
    path = Path(path)
    opts = "FORMAT parquet, COMPRESSION zstd" if fmt == "parquet" else "FORMAT csv, HEADER true"
    pairs = (f"SELECT {KEY}, n, sum, abs_sum, max, min, diag_n, diag_sum, diag_abs_sum, {m} AS value "
             f"FROM pair_rows WHERE {where} ORDER BY {m} DESC NULLS LAST, {KEY} {lim}")
    sql = (f"SELECT p.*, {LABEL_COLUMNS} FROM ({pairs}) p {label_joins('p', run_id)} "
           f"ORDER BY value DESC NULLS LAST, {KEY}")
    if fmt == "csv":  # labels are user text: a spreadsheet must not read "=cmd()" as a formula
        safe = ", ".join(f"{csv_safe_sql(c)} AS {c}" for c in ("q_label", "k_label"))
        sql = f"SELECT * REPLACE ({safe}) FROM ({sql}) ORDER BY value DESC NULLS LAST, {KEY}"
    progress(0.05, f"selecting and writing the pairs ({fmt})")
    con.execute(f"COPY ({sql}) TO '{_sql_path(path)}' ({opts})", params)
    progress(1.0, f"wrote {_mb(path.stat().st_size)} of {fmt}")
    return path


def csv_safe_sql(column: str) -> str:
    """SQL for `column` with a leading ' added where a spreadsheet would start a formula (= + - @ tab CR)."""
    return (f"CASE WHEN left({column}, 1) IN ('=', '+', '-', '@', chr(9), chr(13)) THEN chr(39) || {column} "
            f"ELSE {column} END")


def export_pairs_bytes(con, run: int | str, fmt: str = "parquet", **kwargs: Any) -> bytes:
    """`export_pairs` to a temporary file, returned as bytes (kwargs: its filters and `progress`)."""
    with tempfile.TemporaryDirectory() as tmp:
        return export_pairs(con, run, Path(tmp) / f"pairs.{fmt}", fmt, **kwargs).read_bytes()


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def html_report(con, run: int | str, *, top_n: int = 50, metric: str = "sum") -> str:
    """A self-contained HTML report: run facts, summary, top pairs (bar chart + table), the value
    distribution, the self-pair fraction per head, and the config."""
    info = get_run(con, run)
    summary = summary_stats(con, info["id"], top_n=top_n, metric=metric)
    top = top_pairs(con, info["id"], metric=metric, n=top_n)
    labels = [f"L{r.layer}H{r.head} {r.q_feat}\u2192{r.k_feat}" for r in top.head(25).itertuples()]
    hist = value_histogram(con, info["id"], metric="mean", bins=40)
    by_head = self_fraction_by_head(con, info["id"], top_n=top_n, metric=metric)
    width = float(hist["bin_hi"].iloc[0] - hist["bin_lo"].iloc[0]) if len(hist) else 1.0
    sections = [
        (f"Top pairs by {metric}", svg_bar_chart(labels, [float(v) for v in top["value"].head(25)],
                                                  f"top {len(labels)} pairs by {metric}")),
        (f"Top {top_n} pairs (table)", html_table(top.drop(columns=["q_src", "k_src"]))),
        ("Distribution of mean FRA per pair", svg_histogram(list(hist["bin_lo"]), list(hist["count"]), width,
                                                           "pairs per mean-FRA bin")),
        ("Self-pair fraction among each head's top pairs", svg_bar_chart(
            [f"L{r.layer}H{r.head}" for r in by_head.itertuples()],
            [float(v or 0) for v in by_head["self_frac_top"]], f"self-pair fraction of top {top_n}") +
         html_table(by_head)),
    ]
    return render_report(f"FRA run {info['id']}: {info['name']}", info, summary, sections)


def _extract_run_db(con, run_id: int, path: Path, progress: Progress = _no_progress) -> None:
    """A standalone DuckDB file with the schema and only this run's rows (streamed via Arrow);
    `progress(fraction of the tables, text)` after each table."""
    out = duckdb.connect(str(path))
    tables = ("runs",) + RUN_TABLES
    try:
        migrate(out)
        for i, table in enumerate(tables):
            progress(i / (len(tables) + 1), f"extracting table {table} ({i + 1} of {len(tables) + 1})")
            column = "id" if table == "runs" else "run"
            reader = con.sql(f"SELECT * FROM {table} WHERE {column} = {int(run_id)}").to_arrow_reader(100_000)
            out.register("_src", reader)
            out.execute(f"INSERT INTO {table} SELECT * FROM _src")
            out.unregister("_src")
        progress(len(tables) / (len(tables) + 1), f"extracting table features ({len(tables) + 1} of {len(tables) + 1})")
        reader = con.sql(f"""SELECT f.* FROM features f WHERE f.sae_id IN
                             (SELECT sae_id FROM sources WHERE run = {int(run_id)})""").to_arrow_reader(100_000)
        out.register("_src", reader)
        out.execute("INSERT INTO features SELECT * FROM _src")
        out.unregister("_src")
        out.execute("CHECKPOINT")
    finally:
        out.close()


# share of the package's progress bar per step (the tables and the compression dominate on large runs)
PACKAGE_STEPS = {"tables": (0.0, 0.45), "pairs": (0.45, 0.6), "examples": (0.6, 0.68), "report": (0.68, 0.75),
                 "compress": (0.75, 1.0)}


def _span(progress: Progress, step: str) -> Progress:
    """`progress` for one step: its 0…1 mapped into the step's share of the bar."""
    lo, hi = PACKAGE_STEPS[step]
    return lambda fraction, text: progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), text)


class _CountingReader:
    """A file object that reports the bytes read through it (tarfile reads each member in chunks)."""

    def __init__(self, fh: BinaryIO, on_read: Callable[[int], None]):
        self._fh, self._on_read = fh, on_read

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._on_read(len(data))
        return data


def _tar_with_progress(folder: Path, out: Path, progress: Progress) -> None:
    """`folder` as a .tar.gz at `out`, reporting the bytes compressed so far / in all."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    total = max(sum(p.stat().st_size for p in files), 1)
    done = 0

    def on_read(n: int) -> None:
        nonlocal done
        done += n
        progress(done / total, f"compressing: {_mb(done)} of {_mb(total)}")

    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname=folder.name, recursive=False)
        for path in files:
            info = tar.gettarinfo(str(path), arcname=f"{folder.name}/{path.relative_to(folder).as_posix()}")
            with open(path, "rb") as fh:
                tar.addfile(info, _CountingReader(fh, on_read))


def results_package(con, run: int | str, out_path: str | Path, progress: Progress | None = None) -> Path:
    """Write `<out_path>` (.tar.gz): run.duckdb, pair_stats.parquet, pair_examples.parquet, report.html,
    config.yaml, config.json, README.txt. `progress(fraction, text)`: each table extracted, each file
    written, then the bytes compressed."""
    progress = progress or _no_progress
    info = get_run(con, run)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"fra-run-{info['id']}"
        folder.mkdir()
        _extract_run_db(con, info["id"], folder / "run.duckdb", _span(progress, "tables"))
        export_pairs(con, info["id"], folder / "pair_stats.parquet", progress=_span(progress, "pairs"))
        _span(progress, "examples")(0.0, "writing the example contexts")
        con.execute(f"COPY (SELECT * FROM pair_example_rows WHERE run = {int(info['id'])} ORDER BY {KEY}) "
                    f"TO '{_sql_path(folder / 'pair_examples.parquet')}' (FORMAT parquet)")
        _span(progress, "report")(0.0, "writing the HTML report and the config")
        (folder / "report.html").write_text(html_report(con, info["id"]), encoding="utf-8")
        config = info["config"]
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        job = "AccumulateFRAConfig" if info["kind"] == "accumulate" else info["kind"]
        (folder / "config.yaml").write_text(yaml.safe_dump({"job": job, **config}, sort_keys=False), encoding="utf-8")
        (folder / "README.txt").write_text(
            f"FRA Studio results for run {info['id']} ({info['name']}).\n"
            "run.duckdb: this run's rows in the FRA Studio schema (open with duckdb).\n"
            "pair_stats.parquet: per-pair aggregates of every head (view pair_rows: co-activation rows with\n"
            "each head's G applied); pair_examples.parquet: top contexts per pair (view pair_example_rows).\n"
            "config.yaml runs unchanged with `python -m fra_core accumulate --config config.yaml`.\n",
            encoding="utf-8")
        tmp_out = out_path.with_name(f".{out_path.name}.tmp")
        _tar_with_progress(folder, tmp_out, _span(progress, "compress"))
        tmp_out.replace(out_path)
    progress(1.0, f"results package ready: {_mb(out_path.stat().st_size)}")
    return out_path


def results_package_bytes(con, run: int | str, progress: Progress | None = None) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return results_package(con, run, Path(tmp) / "results.tar.gz", progress).read_bytes()


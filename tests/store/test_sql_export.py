"""Read-only SQL box and exports (Parquet/CSV, HTML report, results package)."""

import tarfile

import duckdb
import pandas as pd
import pytest

from store import (
    Store,
    StoreError,
    check_select,
    export_pairs,
    export_pairs_bytes,
    html_report,
    ingest_job_shards,
    results_package,
    run_sql_readonly,
    top_pairs,
)
from tests.store.fake_jobs import make_job


@pytest.fixture
def filled(tmp_path):
    store = Store(tmp_path / "fra.duckdb")
    job, _ = make_job(tmp_path / "jobs", "job-x")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
    yield store, run, tmp_path
    store.close()


@pytest.mark.parametrize("sql", ["DROP TABLE runs", "SELECT 1; DELETE FROM runs", "INSERT INTO runs (name) VALUES ('x')",
                                 "COPY runs TO 'x.csv'", "ATTACH 'x.db'", "", "SELEC 1"])
def test_non_select_is_refused(sql):
    with pytest.raises(StoreError):
        check_select(sql)


def test_select_runs_read_only(filled):
    store, run, _ = filled
    df = run_sql_readonly(store, "WITH t AS (SELECT head, count(*) c FROM pair_stats GROUP BY head) "
                                 "SELECT * FROM t ORDER BY head;")
    assert list(df["head"]) == [0, 1]
    assert len(run_sql_readonly(store, "SELECT * FROM range(50000)", limit=100)) == 100
    with pytest.raises(StoreError, match="query failed"):
        run_sql_readonly(store, "SELECT * FROM no_such_table")
    # a SELECT that tries to write through a function still runs on a read-only connection
    with pytest.raises(StoreError):
        run_sql_readonly(store, "SELECT nextval('runs_id_seq')")


def test_export_parquet_csv(filled):
    store, run, tmp = filled
    with store.read() as cur:
        path = export_pairs(cur, run, tmp / "p.parquet", head=1, self_pairs="exclude")
        csv = export_pairs_bytes(cur, run, "csv", head=1, self_pairs="exclude", limit=5)
        expected = top_pairs(cur, run, head=1, self_pairs="exclude", n=10_000)
    got = pd.read_parquet(path)
    assert len(got) == len(expected) and set(got["head"]) == {1}
    assert (got["q_feat"] != got["k_feat"]).all()
    assert csv.decode().splitlines()[0].startswith("layer,head,q_src,q_feat")
    assert csv.decode().splitlines()[0].endswith(",value,q_label,k_label")
    labelled = got[got["q_feat"].isin([1, 2])]
    assert len(labelled) and labelled["q_label"].notna().all() and got.loc[~got["q_feat"].isin([1, 2]), "q_label"].isna().all()
    assert list(got["value"]) == sorted(got["value"], reverse=True)
    assert len(csv.decode().strip().splitlines()) == 6
    with pytest.raises(StoreError, match="format"):
        export_pairs(duckdb.connect(), run, tmp / "x", "xlsx")


def test_html_report_is_self_contained(filled):
    store, run, _ = filled
    with store.read() as cur:
        page = html_report(cur, run, top_n=10)
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<table>" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_results_package(filled):
    store, run, tmp = filled
    with store.read() as cur:
        out = results_package(cur, run, tmp / "res.tar.gz")
        n_pairs = cur.execute("SELECT count(*) FROM pair_stats WHERE run = ?", [run]).fetchone()[0]
    with tarfile.open(out) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp / "unpacked", filter="data")
    assert {"run.duckdb", "pair_stats.parquet", "pair_examples.parquet", "report.html", "config.yaml",
            "config.json", "README.txt"} <= names
    folder = next((tmp / "unpacked").iterdir())
    extract = duckdb.connect(str(folder / "run.duckdb"), read_only=True)
    assert extract.execute("SELECT count(*) FROM pair_stats").fetchone()[0] == n_pairs
    assert extract.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert "job: AccumulateFRAConfig" in (folder / "config.yaml").read_text()


def test_exports_report_progress(filled):
    """Each export calls progress(fraction, text): fractions in 0…1, never decreasing, ending at 1.0; the
    package names every table it extracts and counts the bytes it compresses (up to all of them)."""
    store, run, tmp = filled
    for kind in ("package", "parquet", "csv"):
        seen: list[tuple[float, str]] = []
        record = seen.append
        with store.read() as cur:
            if kind == "package":
                out = results_package(cur, run, tmp / "p.tar.gz", progress=lambda f, t, r=record: r((f, t)))
                plain = results_package(cur, run, tmp / "plain.tar.gz")
            else:
                out = export_pairs(cur, run, tmp / f"p.{kind}", kind, progress=lambda f, t, r=record: r((f, t)))
        fractions = [f for f, _ in seen]
        assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] == 1.0, (kind, seen)
        assert f"{out.stat().st_size / 1e6:,.1f} MB" in seen[-1][1]
    with store.read() as cur:
        seen = []
        results_package(cur, run, tmp / "q.tar.gz", progress=lambda f, t: seen.append((f, t)))
    texts = [t for _, t in seen]
    assert any("extracting table pair_stats" in t for t in texts) and any("extracting table features" in t for t in texts)
    compress = [t for t in texts if t.startswith("compressing:")]
    assert len(compress) >= 7 and compress[-1].split(": ")[1].split(" of ")[0] == compress[-1].split(" of ")[1]
    with tarfile.open(tmp / "q.tar.gz") as a, tarfile.open(plain) as b:  # same members as without progress
        assert sorted(a.getnames()) == sorted(b.getnames())

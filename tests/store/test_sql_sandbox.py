"""The SQL box's connection cannot reach the server's files, extensions or settings."""

import pytest

from store import Store, StoreError, ingest_job_shards, run_sql_readonly, top_pairs
from tests.store.fake_jobs import make_job


@pytest.fixture
def filled(tmp_path):
    store = Store(tmp_path / "fra.duckdb", hold=True)  # held, as the app holds it
    job, _ = make_job(tmp_path / "jobs", "job-x")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    yield store, run, tmp_path, secret
    store.close()


def refused_queries(tmp, secret):
    parquet = tmp / "p.parquet"
    return [f"SELECT * FROM read_text('{secret}')",
            "SELECT * FROM read_text('/etc/hostname')",
            f"SELECT * FROM read_csv('{secret}')",
            f"SELECT * FROM read_parquet('{parquet}')",
            f"SELECT * FROM read_blob('{secret}')",
            f"SELECT * FROM glob('{tmp}/*')",
            f"SELECT * FROM '{secret}'"]


def test_file_reading_functions_are_refused(filled):
    store, _, tmp, secret = filled
    for sql in refused_queries(tmp, secret):
        with pytest.raises(StoreError) as info:
            run_sql_readonly(store, sql)
        assert "a,b" not in str(info.value), sql
        if "FROM '" not in sql:  # a bare path is not even looked up as a file: "table does not exist"
            assert "refused" in str(info.value) and "no files" in str(info.value), (sql, str(info.value))


@pytest.mark.parametrize("sql", [
    "COPY runs TO 'x.csv'", "ATTACH '/tmp/other.duckdb' AS o", "INSTALL httpfs", "LOAD httpfs",
    "SET enable_external_access = true", "SELECT 1; SET lock_configuration = false"])
def test_statements_other_than_select_are_refused(filled, sql):
    store, *_ = filled
    with pytest.raises(StoreError, match="SELECT"):
        run_sql_readonly(store, sql)


def test_the_sandbox_itself_refuses_files_extensions_and_settings(filled):
    """Below the SELECT check: the connection refuses even if a statement got through."""
    import duckdb

    store, _, tmp, secret = filled
    with store.sandboxed() as con:
        for sql in [f"COPY runs TO '{tmp}/x.csv'", f"ATTACH '{tmp}/other.duckdb' AS o", "LOAD httpfs",
                    f"SELECT * FROM read_text('{secret}')"]:
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql)
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access = true")
        with pytest.raises(duckdb.Error):  # the app's Python variables are not scannable either
            con.execute("SELECT * FROM secret")
    assert not (tmp / "x.csv").exists() and not (tmp / "other.duckdb").exists()


def test_selects_over_the_run_still_work_and_the_store_recovers(filled):
    store, run, _, _ = filled
    df = run_sql_readonly(store, f"SELECT head, count(*) AS pairs FROM pair_stats WHERE run = {run} "
                                 "GROUP BY head ORDER BY head")
    assert list(df["head"]) == [0, 1] and (df["pairs"] > 0).all()
    assert len(run_sql_readonly(store, "SELECT * FROM runs r JOIN pair_summary s ON s.run = r.id")) == 2
    # the normal sessions reopen the ordinary connection afterwards: file access works there (exports)
    with store.read() as cur:
        assert len(top_pairs(cur, run, n=5)) == 5
    with store.write() as con:
        assert con.execute("SELECT count(*) FROM glob('*')").fetchone()[0] >= 0

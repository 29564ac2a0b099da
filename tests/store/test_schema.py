"""Migrations: ordered, named, recorded, idempotent; tested on an in-memory database."""

import duckdb
import pytest

from store.schema import MIGRATIONS, applied_migrations, migrate


def test_migrations_apply_in_order_on_memory():
    con = duckdb.connect(":memory:")
    assert applied_migrations(con) == []
    applied = migrate(con)
    assert applied == [name for name, _ in MIGRATIONS]
    assert applied_migrations(con) == applied
    assert migrate(con) == []  # second run: nothing to do
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"runs", "sources", "pair_stats", "pair_examples", "samples_done", "ingested_shards",
            "features", "_migrations"} <= tables


def test_narrow_types():
    con = duckdb.connect(":memory:")
    migrate(con)
    types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'pair_stats'").fetchall())
    assert types["layer"] == types["head"] == "USMALLINT"
    assert types["q_feat"] == types["k_feat"] == "UINTEGER"
    assert types["max"] == types["min"] == "FLOAT"


def test_partial_migration_resumes(monkeypatch):
    con = duckdb.connect(":memory:")
    import store.schema as schema

    monkeypatch.setattr(schema, "MIGRATIONS", MIGRATIONS[:2])
    assert schema.migrate(con) == [MIGRATIONS[0][0], MIGRATIONS[1][0]]
    monkeypatch.setattr(schema, "MIGRATIONS", MIGRATIONS)
    assert schema.migrate(con) == [name for name, _ in MIGRATIONS[2:]]


def test_failed_migration_rolls_back(monkeypatch):
    con = duckdb.connect(":memory:")
    import store.schema as schema

    monkeypatch.setattr(schema, "MIGRATIONS", MIGRATIONS[:1] + (("0002_broken", "CREATE TABLE x (a INT); SELEC"),))
    with pytest.raises(duckdb.Error):
        schema.migrate(con)
    assert applied_migrations(con) == [MIGRATIONS[0][0]]
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'x'").fetchone()[0] == 0


def test_foreign_migrations_are_refused(monkeypatch):
    con = duckdb.connect(":memory:")
    migrate(con)
    import store.schema as schema

    monkeypatch.setattr(schema, "MIGRATIONS", (("0001_other", "SELECT 1"),))
    with pytest.raises(RuntimeError, match="different version"):
        schema.migrate(con)


def test_0010_labels_older_runs_top_m_kept(tmp_path):
    """A database at 0008 with an accumulation run migrates forward: the run stays readable and is
    labelled top-m kept with its m."""
    import json

    import duckdb

    from store.marginals import run_statistics
    from store.schema import MIGRATIONS, migrate

    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute("CREATE TABLE _migrations (seq INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied TIMESTAMP NOT NULL)")
    upto = [name for name, _ in MIGRATIONS].index("0008_feature_tokens")
    for seq, (name, sql) in enumerate(MIGRATIONS[: upto + 1]):
        con.execute(sql)
        con.execute("INSERT INTO _migrations VALUES (?, ?, now())", [seq, name])
    con.execute("INSERT INTO runs (name, kind, config, layer) VALUES ('old', 'accumulate', ?, 1)",
                [json.dumps({"top_m": 5, "layer": 1})])
    assert "0010_allpair_stats" in migrate(con)
    assert con.execute("SELECT statistics, top_m_kept, layers FROM runs").fetchone() == ("top_m", 5, [1])
    info = run_statistics(con, "old")
    assert info["label"].startswith("top-5 kept")
    assert con.execute("SELECT count(*) FROM feature_marginals").fetchone()[0] == 0


def test_0013_migrates_a_0012_database_with_its_data(tmp_path):
    """A database at 0012 holding an ingested (top-m) run migrates to 0013: every row stays, the run
    reads through pair_rows / pair_example_rows as it did from pair_stats / pair_examples, and its
    per-head totals (NULL in pair_summary until its next compaction) come from a scan."""
    import duckdb

    from store import Store, ingest_job_shards, top_pairs
    from store.marginals import score_shares
    from store.page_queries import head_summary
    from store.schema import MIGRATIONS, RUN_TABLES, migrate
    from tests.store.fake_jobs import make_job

    job, _ = make_job(tmp_path / "jobs", "old-run")
    new = Store(tmp_path / "new.duckdb")
    with new.write() as con:
        run = ingest_job_shards(con, job)["run"]
        want_heads = head_summary(con, run)
        want_top = top_pairs(con, run, metric="mean", n=20)
    new.close()
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute("CREATE TABLE _migrations (seq INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied TIMESTAMP NOT NULL)")
    upto = [name for name, _ in MIGRATIONS].index("0012_feature_acts")
    assert upto == len(MIGRATIONS) - 2
    for seq, (name, sql) in enumerate(MIGRATIONS[: upto + 1]):
        con.execute(sql)
        con.execute("INSERT INTO _migrations VALUES (?, ?, now())", [seq, name])
    con.execute(f"ATTACH '{tmp_path / 'new.duckdb'}' AS src (READ_ONLY)")
    old_tables = [t for t in ("runs", "features") + RUN_TABLES if not t.startswith(("pair_coact", "pair_proj"))]
    before = {}
    for table in old_tables:
        cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
        con.execute(f"INSERT INTO {table} SELECT {', '.join(cols)} FROM src.{table}")
        before[table] = repr(con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall())  # repr: NaN == NaN
    con.execute("DETACH src")
    assert before["pair_stats"] != "[]" and before["pair_examples"] != "[]"
    assert migrate(con) == ["0013_pair_coact"]
    for table in old_tables:
        added = " EXCLUDE (sum, abs_sum, max_abs)" if table == "pair_summary" else ""
        assert repr(con.execute(f"SELECT *{added} FROM {table} ORDER BY ALL").fetchall()) == before[table], table
    assert con.execute("SELECT count_if(abs_sum IS NULL) FROM pair_summary").fetchone()[0] > 0
    assert (con.execute("SELECT * FROM pair_rows ORDER BY ALL").fetchall()
            == con.execute("SELECT * FROM pair_stats ORDER BY ALL").fetchall())
    assert (con.execute("SELECT * FROM pair_example_rows ORDER BY ALL").fetchall()
            == con.execute("SELECT * FROM pair_examples ORDER BY ALL").fetchall())
    import pandas as pd

    pd.testing.assert_frame_equal(head_summary(con, run), want_heads)
    pd.testing.assert_frame_equal(top_pairs(con, run, metric="mean", n=20), want_top)
    assert len(score_shares(con, run)) == 0  # a top-m run has no node totals: empty, not an error
    con.close()

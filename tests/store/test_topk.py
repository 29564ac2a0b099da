"""Pre-ranked top-K lists (store.topk): answers from a list equal answers from a scan of pair_stats."""

import itertools

import duckdb
import pandas as pd
import pytest

from store import register_run, summary_stats, top_pairs
from store.compact import refresh_summary
from store.schema import migrate
from store.topk import backfill_top, refresh_top

N_ROWS = 1500


@pytest.fixture
def con():
    """A run of 3 heads with many ties (integer values), self-pairs, diagonal-only pairs and negatives."""
    con = duckdb.connect(":memory:")
    migrate(con)
    run = register_run(con, "r", "accumulate", {"model": "demo", "q_sae": "s", "layer": 1})
    con.execute("INSERT INTO sources VALUES (?, 0, 'sae', 's', 's', 'hook', 64)", [run])
    con.execute(f"""
        INSERT INTO pair_stats
        SELECT {run}, 1, i % 3, 0, (i // 3) % 64, 0, CASE WHEN i % 11 = 0 THEN (i // 3) % 64 ELSE (i * 7) % 61 END,
               n, s, abs(s) + 1, (s / n + 0.5)::FLOAT, (s / n - 0.5)::FLOAT, dn, ds, abs(ds), s - ds
        FROM (SELECT i, 1 + (i * 13) % 5 AS n, ((i * 37) % 41 - 20)::DOUBLE AS s,
                     CASE WHEN i % 11 = 0 THEN 1 + (i * 13) % 5 - (i % 2) ELSE 0 END AS dn,
                     CASE WHEN i % 11 = 0 THEN ((i * 37) % 41 - 20) / 2 ELSE 0 END AS ds
              FROM range({N_ROWS}) t(i))
        QUALIFY row_number() OVER (PARTITION BY i % 3, (i // 3) % 64,
                                   CASE WHEN i % 11 = 0 THEN (i // 3) % 64 ELSE (i * 7) % 61 END) = 1""")
    refresh_summary(con, run)
    return con


def scanned(con, **kwargs):
    """The same query with the run's lists removed (pure pair_stats scan)."""
    saved = con.execute("SELECT * FROM pair_top_lists").df()  # noqa: F841 - DuckDB reads it by name
    con.execute("DELETE FROM pair_top_lists")
    try:
        return top_pairs(con, "r", **kwargs)
    finally:
        con.execute("INSERT INTO pair_top_lists SELECT * FROM saved")


CASES = list(itertools.product(
    ["sum", "mean", "abs_sum", "mean_abs", "max_abs", "count"], ["desc", "asc", "abs"], [True, False],
    [dict(), dict(head=1, layer=1), dict(self_pairs="only"), dict(self_pairs="exclude", min_count=3)],
    [30]))


@pytest.mark.parametrize("k", [40, 5000])
def test_lists_answer_exactly_as_a_scan(con, k):
    refresh_top(con, 1, k=k)
    for metric, order, diagonal, filters, n in CASES:
        got = top_pairs(con, "r", metric=metric, order=order, diagonal=diagonal, n=n, **filters)
        want = scanned(con, metric=metric, order=order, diagonal=diagonal, n=n, **filters)
        pd.testing.assert_frame_equal(got, want, obj=str((metric, order, diagonal, filters, n)))
    for metric in ("sum", "mean", "max_abs"):  # summary_stats covers both diagonal settings itself
        for head in (None, 2):
            s = summary_stats(con, "r", top_n=20, metric=metric, head=head, layer=None if head is None else 1)
            saved = con.execute("SELECT * FROM pair_top_lists").df()  # noqa: F841 - DuckDB reads it by name
            con.execute("DELETE FROM pair_top_lists")
            t = summary_stats(con, "r", top_n=20, metric=metric, head=head, layer=None if head is None else 1)
            con.execute("INSERT INTO pair_top_lists SELECT * FROM saved")
            assert s == t


def test_lists_are_used_and_rebuilt(con):
    """A top-N inside the lists does not read pair_stats (proved by emptying it); compaction-time
    refresh and the backfill of older databases rebuild them."""
    n_lists = con.execute("SELECT count(*) FROM pair_top_lists").fetchone()[0]
    assert n_lists == 22  # 6 metrics x (with, without diagonal) x (desc, asc), max |FRA| once
    want = top_pairs(con, "r", metric="mean", n=10)
    con.execute("CREATE TABLE keep AS SELECT * FROM pair_stats")
    con.execute("DELETE FROM pair_stats")
    pd.testing.assert_frame_equal(top_pairs(con, "r", metric="mean", n=10), want)
    con.execute("INSERT INTO pair_stats SELECT * FROM keep")
    con.execute("DELETE FROM pair_top_lists")
    con.execute("DELETE FROM pair_top")
    assert backfill_top(con) == [1] and backfill_top(con) == []
    pd.testing.assert_frame_equal(top_pairs(con, "r", metric="mean", n=10), want)


def test_compaction_builds_lists_that_match_a_scan(tmp_path):
    """Lists built inside compaction's transaction (rowids of rows written in that transaction)."""
    from store import Store, ingest_job_shards
    from tests.store.fake_jobs import make_job

    store = Store(tmp_path / "fra.duckdb")
    job, _ = make_job(tmp_path / "jobs", "job-x")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        assert con.execute("SELECT count(*) FROM pair_top_lists WHERE run = ?", [run]).fetchone()[0] == 22
        # a small run fits in its lists: each holds exactly the run's rows (fetched by rowid in-transaction)
        listed = con.execute("""SELECT * EXCLUDE (metric, diagonal, dir, value) FROM pair_top
                                WHERE run = ? AND metric = 'mean' AND NOT diagonal AND dir = 'asc'
                                ORDER BY ALL""", [run]).df()
        stats = con.execute("SELECT * FROM pair_stats WHERE run = ? AND n > diag_n ORDER BY ALL", [run]).df()
        pd.testing.assert_frame_equal(listed, stats)
        refresh_top(con, run, k=3)  # short lists, so most answers need the cut logic or the fallback
        for metric, order in itertools.product(["sum", "mean", "max_abs"], ["desc", "abs"]):
            for filters in (dict(), dict(self_pairs="exclude"), dict(head=1)):
                got = top_pairs(con, run, metric=metric, order=order, n=2, **filters)
                saved = con.execute("SELECT * FROM pair_top_lists").df()  # noqa: F841 - DuckDB reads it by name
                con.execute("DELETE FROM pair_top_lists")
                want = top_pairs(con, run, metric=metric, order=order, n=2, **filters)
                con.execute("INSERT INTO pair_top_lists SELECT * FROM saved")
                pd.testing.assert_frame_equal(got, want)
    store.close()

"""Top-K lists of co-activation runs (store.topk_coact): the rows numpy picks hold every `pair_rows` row
that can beat a list's cut, and answers from the lists equal answers from a scan of the view."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from store import summary_stats, top_pairs
from store.sqlparts import metric_sql
from store.topk import list_specs, refresh_top
from store.topk_coact import coefficient_ranges, layer_arrays, list_rows
from tests.store.coact_jobs import LAYERS, ingested_coact_job


@pytest.fixture(scope="module")
def coact_db(tmp_path_factory):
    """A 3-shard coact job (two coact layers, one per-head layer in pair_stats: a mixed run), ingested."""
    store, run, *_ = ingested_coact_job(tmp_path_factory.mktemp("coact_topk"), "coact-topk", n_shards=3, seed=11)
    yield store, run
    store.close()


@pytest.mark.parametrize("k", [1, 3, 17, 60])
def test_candidate_rows_hold_every_row_beyond_the_cut(coact_db, k):
    """Per layer and list: the K-th best value among the candidates' head rows (the cut) is beaten by no
    head row of a row left out, and the candidates give at least min(K, ranked rows) values."""
    store, run = coact_db
    with store.read() as cur:
        for layer, heads in LAYERS.items():
            a, G = layer_arrays(cur, run, layer, len(heads))
            ranges = coefficient_ranges(G, block=7)  # blocks smaller than the layer: the block loop runs
            keys = cur.execute(f"""SELECT q_src, q_feat, k_src, k_feat FROM pair_coact
                                   WHERE run = {run} AND layer = {layer}""").df()
            for metric, diagonal in list_specs():
                m = metric_sql(metric, diagonal)
                vals = cur.execute(f"""SELECT q_src, q_feat, k_src, k_feat, head, {m} AS v FROM pair_rows
                                       WHERE run = {run} AND layer = {layer} AND {m} IS NOT NULL""").df()
                row_of = keys.reset_index().merge(vals, on=["q_src", "q_feat", "k_src", "k_feat"])
                for direction, rows in list_rows(a, ranges, metric, diagonal, k).items():
                    v = row_of["v"].to_numpy(np.float64) * (1 if direction == "desc" else -1)
                    inside = np.isin(row_of["index"].to_numpy(), rows)
                    ranked = np.sort(v[inside])[::-1]
                    assert len(ranked) >= min(k, len(v)), (metric, diagonal, direction)
                    if len(ranked) >= k:
                        assert (v[~inside] <= ranked[k - 1]).all(), (layer, metric, diagonal, direction, k)
                    else:
                        assert inside.all()


def _scanned(con, run, **kwargs):
    saved = con.execute("SELECT * FROM pair_top_lists").df()  # noqa: F841 - DuckDB reads it by name
    con.execute("DELETE FROM pair_top_lists")
    try:
        return top_pairs(con, run, **kwargs)
    finally:
        con.execute("INSERT INTO pair_top_lists SELECT * FROM saved")


CASES = list(itertools.product(
    ["sum", "mean", "abs_sum", "mean_abs", "max_abs", "count"], ["desc", "asc", "abs"], [True, False],
    [dict(), dict(layer=1, head=2), dict(layer=0, head=1), dict(self_pairs="only"),
     dict(self_pairs="exclude", min_count=3)]))


@pytest.mark.parametrize("k", [5, 40, 5000])
def test_lists_of_a_coact_run_answer_exactly_as_a_scan(coact_db, k):
    store, run = coact_db
    with store.write() as con:
        con.execute("BEGIN TRANSACTION")  # as compaction calls it
        refresh_top(con, run, k=k)
        con.execute("COMMIT")
        lists = con.execute(f"SELECT count(*), max(n_rows) FROM pair_top_lists WHERE run = {run}").fetchone()
        assert lists == (22, min(k, lists[1])) and lists[1] > 0
        for metric, order, diagonal, filters in CASES:
            got = top_pairs(con, run, metric=metric, order=order, diagonal=diagonal, n=4, **filters)
            want = _scanned(con, run, metric=metric, order=order, diagonal=diagonal, n=4, **filters)
            pd.testing.assert_frame_equal(got, want, obj=str((metric, order, diagonal, filters)))
        s = summary_stats(con, run, top_n=3, metric="mean")
        con.execute(f"DELETE FROM pair_top_lists WHERE run = {run}")
        assert summary_stats(con, run, top_n=3, metric="mean") == s


def test_listed_rows_are_the_views_rows(coact_db):
    """Every listed row equals, column for column and bit for bit, its row of `pair_rows`."""
    store, run = coact_db
    with store.write() as con:
        con.execute("BEGIN TRANSACTION")
        refresh_top(con, run, k=9)
        con.execute("COMMIT")
        cols = "layer, head, q_src, q_feat, k_src, k_feat, n, sum, abs_sum, max, min, diag_n, diag_sum, diag_abs_sum, nd_sum"
        listed = con.execute(f"SELECT DISTINCT {cols} FROM pair_top WHERE run = {run}").fetchall()
        missing = con.execute(f"""SELECT count(*) FROM (SELECT DISTINCT {cols} FROM pair_top WHERE run = {run}
                                  EXCEPT SELECT {cols} FROM pair_rows WHERE run = {run})""").fetchone()[0]
    assert len(listed) > 20 and missing == 0


@pytest.mark.parametrize("src", [None, 0, 1])
def test_feature_on_either_side_reads_each_matching_row_once(coact_db, src):
    """The union source of a feature filter (`rows_source`) gives what the plain OR filter on the view
    gives, self-pairs (both sides match) once, with and without the lists."""
    from store.queries import pair_filter

    store, run = coact_db
    with store.read() as cur:
        for feature, metric in itertools.product(range(5), ["sum", "count"]):
            got = top_pairs(cur, run, metric=metric, n=10_000, feature=feature, src=src, min_count=1)
            where, params = pair_filter(run, feature=feature, src=src)
            want = cur.execute(f"SELECT count(*) FROM pair_rows WHERE {where}", params).fetchone()[0]
            assert len(got) == want > 0
            assert not got.duplicated(["layer", "head", "q_src", "q_feat", "k_src", "k_feat"]).any()
            assert ((got["q_feat"] == feature) | (got["k_feat"] == feature)).all()


def test_backfill_builds_the_lists_of_a_coact_run_compacted_without_them(coact_db):
    """A database whose co-activation run was compacted before such runs had lists gets them once."""
    from store.topk import backfill_top

    store, run = coact_db
    with store.write() as con:
        want = top_pairs(con, run, metric="mean_abs", n=5)
        con.execute(f"DELETE FROM pair_top WHERE run = {run}")
        con.execute(f"DELETE FROM pair_top_lists WHERE run = {run}")
        assert backfill_top(con) == [run] and backfill_top(con) == []
        assert con.execute(f"SELECT count(*) FROM pair_top_lists WHERE run = {run}").fetchone()[0] == 22
        pd.testing.assert_frame_equal(top_pairs(con, run, metric="mean_abs", n=5), want)


def test_compaction_lists_from_the_rows_it_holds_equal_lists_read_back(tmp_path):
    """Compaction hands its merged rows and G to the lists; rebuilding them from pair_coact gives the same
    lists row for row (two compactions: the second merges a shard into compacted rows)."""
    from store import Store, ingest_job_shards
    from tests.store.coact_jobs import make_coact_job

    job, _, _ = make_coact_job(tmp_path / "jobs", "coact-held", n_shards=2, seed=4)
    hidden = sorted((job / "shards").glob("shard-*.json"))[1]
    hidden.rename(hidden.with_suffix(".hidden"))
    store = Store(tmp_path / "fra.duckdb")
    try:
        with store.write() as con:
            run = ingest_job_shards(con, job)["run"]
        hidden.with_suffix(".hidden").rename(hidden)
        with store.write() as con:
            assert ingest_job_shards(con, job)["shards"] == 1
            query = f"SELECT * EXCLUDE (run) FROM pair_top WHERE run = {run} ORDER BY ALL"
            held = con.execute(query).fetchall()
            lists = con.execute(f"SELECT * FROM pair_top_lists WHERE run = {run} ORDER BY ALL").fetchall()
            con.execute("BEGIN TRANSACTION")
            refresh_top(con, run)  # from pair_coact
            con.execute("COMMIT")
            assert len(held) > 20 and con.execute(query).fetchall() == held
            assert con.execute(f"SELECT * FROM pair_top_lists WHERE run = {run} ORDER BY ALL").fetchall() == lists
    finally:
        store.close()

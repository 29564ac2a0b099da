"""All-pair runs stored as one co-activation table per layer + the heads' projected rows: after ingest and
compaction, every `pair_rows` / `pair_example_rows` row equals the cell-by-cell enumeration of the terms
ã_if·ã_jg·G_h[f, g] (tests/store/coact_jobs.py), and every read path serves such runs."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fra_core import contracts
from store import (
    StoreError,
    delete_run,
    export_pairs,
    get_run,
    html_report,
    ingest_job_shards,
    pair_examples,
    results_package,
    summary_stats,
    top_pairs,
)
from store.page_queries import head_summary
from tests.store.coact_jobs import (
    LAYERS,
    PAIR_LAYER,
    expected_examples,
    expected_rows,
    ingested_coact_job,
    make_coact_job,
)
from tests.store.fake_jobs import aggregate

COLS = ["layer", "head", "q_src", "q_feat", "k_src", "k_feat", "n", "sum", "abs_sum", "max", "min", "diag_n",
        "diag_sum", "diag_abs_sum", "nd_sum"]
EX_COLS = ["layer", "head", "q_src", "q_feat", "k_src", "k_feat", "sample", "q_pos", "k_pos", "value"]


def _rows(cur, run: int, coact_only: bool = True) -> pd.DataFrame:
    where = f"run = {run}" + (f" AND layer <> {PAIR_LAYER}" if coact_only else "")
    return cur.execute(f"SELECT {', '.join(COLS)} FROM pair_rows WHERE {where} ORDER BY layer, head, q_src, q_feat, "
                       "k_src, k_feat").df()


def _examples(cur, run: int) -> pd.DataFrame:
    return cur.execute(f"SELECT {', '.join(EX_COLS)} FROM pair_example_rows WHERE run = {run} AND layer <> "
                       f"{PAIR_LAYER} ORDER BY {', '.join(EX_COLS[:9])}").df()


def assert_rows_equal(got: pd.DataFrame, exp: pd.DataFrame) -> None:
    """Keys, counts, max and min exact; sums to 1e-12 of the row's Σ|terms| (a sum may cancel to ~0)."""
    assert len(got) == len(exp) > 0
    for col in ("layer", "head", "q_src", "q_feat", "k_src", "k_feat", "n", "diag_n"):
        np.testing.assert_array_equal(got[col].to_numpy(np.int64), exp[col].to_numpy(np.int64), err_msg=col)
    for col in ("max", "min"):
        np.testing.assert_array_equal(got[col].to_numpy(np.float32), exp[col].to_numpy(np.float32), err_msg=col)
    scale = exp["abs_sum"].to_numpy()
    for col in ("sum", "abs_sum", "diag_sum", "diag_abs_sum", "nd_sum"):
        err = np.abs(got[col].to_numpy() - exp[col].to_numpy())
        assert (err <= 1e-12 * scale).all(), (col, float((err / scale).max()))


def assert_examples_equal(got: pd.DataFrame, exp: pd.DataFrame) -> None:
    assert len(got) == len(exp) > 0
    for col in EX_COLS[:9]:
        np.testing.assert_array_equal(got[col].to_numpy(np.int64), exp[col].to_numpy(np.int64), err_msg=col)
    np.testing.assert_array_equal(got["value"].to_numpy(np.float32), exp["value"].to_numpy(np.float32))


@pytest.fixture(scope="module")
def coact_run(tmp_path_factory):
    """One 4-shard coact job ingested at once (the database, the run id, the job's cells and vectors)."""
    store, run, cells, extra, job = ingested_coact_job(tmp_path_factory.mktemp("coact"), "coact-a", n_shards=4, seed=5)
    yield store, run, cells, extra, job
    store.close()


def test_pair_rows_equal_cell_enumeration(coact_run):
    store, run, cells, extra, _ = coact_run
    with store.read() as cur:
        got = _rows(cur, run)
        staged = cur.execute("SELECT count(*) FROM pair_coact_staged").fetchone()[0]
        coact = cur.execute("SELECT count(*) FROM pair_coact WHERE run = ?", [run]).fetchone()[0]
    assert staged == 0
    exp = expected_rows(cells, extra["vecs"])
    assert_rows_equal(got, exp)
    # stored once per layer, served once per head of it
    per_layer = cells.drop_duplicates(["layer", "q_src", "q_feat", "k_src", "k_feat"]).groupby("layer").size()
    assert coact == per_layer.sum() and len(got) == sum(per_layer[la] * len(hs) for la, hs in LAYERS.items())
    assert cells["p"].duplicated().any()  # equal products in different cells: the tie rule is exercised


def test_pair_example_rows_are_the_max_and_min_cells(coact_run):
    store, run, cells, extra, _ = coact_run
    with store.read() as cur:
        got = _examples(cur, run)
    exp = expected_examples(cells, extra["vecs"], 3)
    assert_examples_equal(got, exp)
    assert len(exp) > len(exp.drop_duplicates(EX_COLS[:6]))  # some pairs have two examples


def test_the_per_head_layer_reads_as_before(coact_run):
    store, run, _, extra, _ = coact_run
    with store.read() as cur:
        got = cur.execute(f"SELECT head, q_feat, k_feat, n, sum, max FROM pair_rows WHERE run = {run} "
                          f"AND layer = {PAIR_LAYER} ORDER BY head, q_feat, k_feat").df()
        stored = cur.execute(f"SELECT count(*) FROM pair_stats WHERE run = {run}").fetchone()[0]
    exp = aggregate(extra["occ"], layer=PAIR_LAYER).to_pandas()
    assert stored == len(got) == len(exp)
    np.testing.assert_array_equal(got["n"], exp["n"])
    np.testing.assert_allclose(got["sum"], exp["sum"], atol=1e-5)


@pytest.mark.parametrize("epp", [1, 0])
def test_examples_per_pair_one_keeps_the_larger_value(tmp_path, store, epp):
    job, cells, extra = make_coact_job(tmp_path / "jobs", f"coact-epp{epp}", n_shards=2, seed=9, examples_per_pair=epp)
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
    with store.read() as cur:
        got = _examples(cur, run) if epp else cur.execute(
            f"SELECT count(*) FROM pair_example_rows WHERE run = {run} AND layer <> {PAIR_LAYER}").fetchone()[0]
    if epp:
        exp = expected_examples(cells, extra["vecs"], 1)
        assert_examples_equal(got, exp)
        assert not exp.duplicated(EX_COLS[:6]).any()
    else:
        assert got == 0


def test_resumed_ingest_equals_one_at_once(coact_run, tmp_path):
    from store import Store

    store, run, *_, job = coact_run
    copy = shutil.copytree(job, tmp_path / "jobs" / job.name)
    manifests = sorted((copy / "shards").glob("shard-*.json"))
    hidden = [m.rename(m.with_suffix(".hidden")) for m in manifests[2:]]
    other = Store(tmp_path / "halves.duckdb")
    with other.write() as con:
        assert ingest_job_shards(con, copy)["shards"] == 2
        half = con.execute("SELECT sum(n) FROM pair_coact").fetchone()[0]
    for h in hidden:
        h.rename(h.with_suffix(".json"))
    with other.write() as con:
        assert ingest_job_shards(con, copy)["shards"] == 2
        run2 = con.execute("SELECT id FROM runs WHERE name = ?", [job.name]).fetchone()[0]
        halves, ex_halves = _rows(con, run2, coact_only=False), _examples(con, run2)
        coact2 = con.execute("SELECT * EXCLUDE (run) FROM pair_coact ORDER BY ALL").df()
        n_proj2 = con.execute("SELECT count(*) FROM pair_proj").fetchone()[0]
    other.close()
    with store.read() as cur:
        once, ex_once = _rows(cur, run, coact_only=False), _examples(cur, run)
        coact1 = cur.execute("SELECT * EXCLUDE (run) FROM pair_coact WHERE run = ? ORDER BY ALL", [run]).df()
        n_proj1 = cur.execute("SELECT count(*) FROM pair_proj WHERE run = ?", [run]).fetchone()[0]
    assert 0 < half < coact1["n"].sum() and n_proj1 == n_proj2
    exact = [c for c in coact1.columns if c not in ("s", "abs", "diag_s", "diag_abs")]
    pd.testing.assert_frame_equal(coact2[exact], coact1[exact])  # counts, max/min and their cells exact
    np.testing.assert_allclose(coact2["s"], coact1["s"], rtol=1e-12)
    assert_rows_equal(halves, once)
    assert_examples_equal(ex_halves, ex_once)


def test_proj_rows_are_stored_once_and_checked(tmp_path, store):
    job, *_ = make_coact_job(tmp_path / "jobs", "coact-proj", n_shards=3, seed=2)
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        dup = con.execute("SELECT count(*) - count(DISTINCT (layer, head, side, src, feature)) FROM pair_proj"
                          ).fetchone()[0]
        assert dup == 0 and con.execute("SELECT count(*) FROM pair_proj WHERE run = ?", [run]).fetchone()[0] > 0
    # a later shard whose vector of a feature differs (dictionary changed mid-run) is refused, whole
    table = contracts.read_shard_table(job, 2, "proj").to_pandas()
    table.loc[0, "vec"] = list(np.asarray(table.loc[0, "vec"]) * 1.001)
    with store.write() as con:
        con.execute("DELETE FROM ingested_shards WHERE run = ? AND shard = 2", [run])
        con.execute("DELETE FROM samples_done WHERE run = ? AND shard = 2", [run])
        before = con.execute("SELECT count(*) FROM pair_coact_staged").fetchone()[0]
    contracts.write_kind_atomic(pa.Table.from_pandas(table, schema=contracts.PROJ_SCHEMA, preserve_index=False), job, 2,
                                "proj")
    with store.write() as con, pytest.raises(StoreError, match=r"proj vector of \(layer \d+, head \d+, side '.', src"):
        ingest_job_shards(con, job)
    with store.read() as cur:
        assert cur.execute("SELECT count(*) FROM pair_coact_staged").fetchone()[0] == before  # nothing half-written
        assert cur.execute("SELECT count(*) FROM ingested_shards WHERE run = ? AND shard = 2", [run]).fetchone()[0] == 0


def test_delete_run_removes_coact_and_proj_rows(tmp_path, store):
    job_a, *_ = make_coact_job(tmp_path / "jobs", "coact-del-a", n_shards=2, seed=3)
    job_b, *_ = make_coact_job(tmp_path / "jobs", "coact-del-b", n_shards=2, seed=4)
    with store.write() as con:
        a, b = ingest_job_shards(con, job_a)["run"], ingest_job_shards(con, job_b)["run"]
        before_b = _rows(con, b, coact_only=False)
        delete_run(con, a)
        for table in ("pair_coact", "pair_coact_staged", "pair_proj", "pair_rows", "pair_example_rows"):
            assert con.execute(f"SELECT count(*) FROM {table} WHERE run = ?", [a]).fetchone()[0] == 0, table
        pd.testing.assert_frame_equal(_rows(con, b, coact_only=False), before_b)


def test_pages_queries_serve_a_coact_run(coact_run, tmp_path):
    store, run, cells, extra, _ = coact_run
    exp = expected_rows(cells, extra["vecs"])
    with store.read() as cur:
        info = get_run(cur, run)
        top = top_pairs(cur, run, metric="sum", n=5, layer=1, head=2)
        top_abs = top_pairs(cur, run, metric="max_abs", n=3, order="abs")
        summary = summary_stats(cur, run)
        heads = head_summary(cur, run)
        ex = pair_examples(cur, run, n=5, feature=1, side="query", src=0, layer=2, head=3)
        report = html_report(cur, run)
        export_pairs(cur, run, tmp_path / "pairs.parquet", layer=1)
        package = results_package(cur, run, tmp_path / "results.tar.gz")
        n_rows = len(_rows(cur, run, coact_only=False))
    h = exp[(exp["layer"] == 1) & (exp["head"] == 2)].sort_values("sum", ascending=False)
    assert list(top["q_feat"]) == list(h["q_feat"][:5]) and list(top["k_feat"]) == list(h["k_feat"][:5])
    np.testing.assert_allclose(top["sum"], h["sum"][:5], rtol=1e-12)
    best = np.maximum(exp["max"].abs(), exp["min"].abs()).max()
    assert top_abs["max_abs"].iloc[0] == pytest.approx(float(best))
    coact_heads = sum(len(hs) for hs in LAYERS.values())
    assert info["n_pairs"] == summary["unique_pairs"] == n_rows
    assert summary["occurrences"] >= exp["n"].sum()
    got_heads = heads[heads["layer"] != PAIR_LAYER].reset_index(drop=True)
    assert len(got_heads) == coact_heads
    per = exp.groupby(["layer", "head"]).agg(abs_sum=("abs_sum", "sum"), n=("n", "sum")).reset_index()
    np.testing.assert_allclose(got_heads["abs_sum"], per["abs_sum"], rtol=1e-12)
    np.testing.assert_array_equal(got_heads["occurrences"], per["n"])
    assert len(ex) >= 1 and (ex["q_feat"] == 1).all() and (ex["head"] == 3).all() and ex["context"].notna().all()
    assert "L1H2" in report
    exported = pd.read_parquet(tmp_path / "pairs.parquet")
    assert len(exported) == len(exp[exp["layer"] == 1])
    assert package.stat().st_size > 0


def test_results_package_database_holds_the_coact_run(coact_run, tmp_path):
    import tarfile

    import duckdb

    store, run, cells, extra, _ = coact_run
    with store.read() as cur:
        path = results_package(cur, run, tmp_path / "results.tar.gz")
        want = _rows(cur, run, coact_only=False)
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    (db,) = (tmp_path / "x").rglob("run.duckdb")
    con = duckdb.connect(str(db), read_only=True)
    try:
        pd.testing.assert_frame_equal(_rows(con, run, coact_only=False), want)
    finally:
        con.close()


def test_coact_row_without_a_heads_vector_is_refused(tmp_path, store):
    job, *_ = make_coact_job(tmp_path / "jobs", "coact-missing", n_shards=1, seed=6)
    df = contracts.read_shard_table(job, 0, "proj").to_pandas()
    drop = (df["side"] == "k") & (df["head"] == 3)  # head 3 of layer 2 loses one feature's key vector
    drop &= drop.cumsum() == 1
    contracts.write_kind_atomic(pa.Table.from_pandas(df[~drop], schema=contracts.PROJ_SCHEMA, preserve_index=False),
                                job, 0, "proj")
    with store.write() as con, pytest.raises(StoreError, match=r"co-activation row .* has \d+ 'q' and 1 'k' proj "
                                                               r"vectors stored, but its layer has 2 heads"):
        ingest_job_shards(con, job)
    with store.read() as cur:
        for table in ("pair_coact_staged", "pair_proj", "ingested_shards"):
            assert cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table


def test_sql_box_reads_the_views(coact_run):
    from store import run_sql_readonly

    store, run, cells, extra, _ = coact_run
    df = run_sql_readonly(store, f"SELECT layer, head, count(*) AS pairs FROM pair_rows WHERE run = {run} "
                                 "GROUP BY ALL ORDER BY layer, head")
    exp = expected_rows(cells, extra["vecs"]).groupby(["layer", "head"]).size()
    got = df[df["layer"] != PAIR_LAYER].set_index(["layer", "head"])["pairs"]
    assert got.to_dict() == exp.to_dict()
    ex = run_sql_readonly(store, f"SELECT count(*) AS n FROM pair_example_rows WHERE run = {run}")
    assert int(ex["n"].iloc[0]) > 0


def test_later_compaction_adds_new_pairs_with_their_g(tmp_path, store):
    """Pairs first seen after a compaction get their G then; compacted pairs keep theirs (the second
    compaction computes G only for pairs new since the first)."""
    job, cells, extra = make_coact_job(tmp_path / "jobs", "coact-grow", n_shards=2, seed=8, samples_per_shard=3)
    first = contracts.read_shard_table(job, 0, "coact").to_pandas()
    contracts.write_kind_atomic(pa.Table.from_pandas(first[first["q_feat"] < 2], schema=contracts.COACT_SCHEMA,
                                                     preserve_index=False), job, 0, "coact")
    cells = cells[~((cells["sample"] < 3) & (cells["q_feat"] >= 2))]
    hidden = contracts.shard_path(job, 1, "manifest")
    hidden.rename(hidden.with_suffix(".hidden"))
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        n_first = con.execute("SELECT count(*) FROM pair_coact WHERE run = ?", [run]).fetchone()[0]
    hidden.with_suffix(".hidden").rename(hidden)
    with store.write() as con:
        assert ingest_job_shards(con, job)["shards"] == 1
        got = _rows(con, run)
        assert con.execute("SELECT count(*) FROM pair_coact WHERE run = ?", [run]).fetchone()[0] > n_first
    assert_rows_equal(got, expected_rows(cells, extra["vecs"]))

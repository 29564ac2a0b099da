"""Query functions against a hand-made run whose answers are known."""

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from store import (
    StoreError,
    compare_pairs,
    compare_summary,
    feature_partners,
    pair_examples,
    register_run,
    self_fraction_by_head,
    set_feature_labels,
    summary_stats,
    top_pairs,
    value_histogram,
)
from store.compact import refresh_summary
from store.schema import migrate

#            head q  k   n  sum   abs   max  min  diag_n diag_sum
ROWS = [(0, 1, 1, 4, 8.0, 8.0, 3.0, 1.0, 3, 7.0),    # self pair, mostly diagonal
        (0, 1, 2, 2, 5.0, 5.0, 3.0, 2.0, 0, 0.0),
        (0, 3, 2, 10, -6.0, 9.0, 1.0, -4.0, 0, 0.0),
        (0, 2, 2, 1, 1.0, 1.0, 1.0, 1.0, 0, 0.0),    # self pair, off-diagonal
        (1, 1, 2, 3, 4.0, 4.0, 2.0, 1.0, 0, 0.0),
        (1, 5, 5, 6, 9.0, 9.0, 2.0, 1.0, 6, 9.0)]    # self pair, all diagonal


def _table(rows):
    cols = list(zip(*rows))
    n = len(rows)
    return pa.table({"layer": pa.array([1] * n, pa.uint16()), "head": pa.array(cols[0], pa.uint16()),
                     "q_src": pa.array([0] * n, pa.uint16()), "q_feat": pa.array(cols[1], pa.uint32()),
                     "k_src": pa.array([0] * n, pa.uint16()), "k_feat": pa.array(cols[2], pa.uint32()),
                     "n": pa.array(cols[3], pa.uint64()), "sum": pa.array(cols[4]), "abs_sum": pa.array(cols[5]),
                     "max": pa.array(cols[6], pa.float32()), "min": pa.array(cols[7], pa.float32()),
                     "diag_n": pa.array(cols[8], pa.uint64()), "diag_sum": pa.array(cols[9]),
                     "diag_abs_sum": pa.array(cols[9])})


@pytest.fixture
def con():
    con = duckdb.connect(":memory:")
    migrate(con)
    for name, rows in (("a", ROWS), ("b", [r[:4] + (r[4] * (-1 if r[1] == 3 else 1),) + r[5:] for r in ROWS])):
        run = register_run(con, name, "accumulate", {"model": "demo", "q_sae": "s", "layer": 1})
        con.execute("INSERT INTO sources VALUES (?, 0, 'sae', 's', 's', 'hook', 8)", [run])
        tbl = _table(rows)  # noqa: F841 - read by DuckDB's replacement scan below
        con.execute("INSERT INTO pair_stats SELECT ?, *, sum - diag_sum FROM tbl", [run])
        refresh_summary(con, run)
    set_feature_labels(con, "s", {1: "one", 2: "two"})
    return con


def keys(df):
    return list(zip(df["head"], df["q_feat"], df["k_feat"]))


def test_top_pairs_metrics(con):
    assert keys(top_pairs(con, "a", metric="sum", n=3)) == [(1, 5, 5), (0, 1, 1), (0, 1, 2)]
    assert keys(top_pairs(con, "a", metric="mean", n=2)) == [(0, 1, 2), (0, 1, 1)]
    assert keys(top_pairs(con, "a", metric="count", n=1)) == [(0, 3, 2)]
    assert keys(top_pairs(con, "a", metric="max_abs", n=1)) == [(0, 3, 2)]
    assert keys(top_pairs(con, "a", metric="sum", order="asc", n=1)) == [(0, 3, 2)]
    assert keys(top_pairs(con, "a", metric="sum", order="abs", n=1)) == [(1, 5, 5)]
    df = top_pairs(con, "a", n=1)
    assert df["mean"][0] == pytest.approx(1.5) and bool(df["self_pair"][0])
    assert top_pairs(con, "a", feature=1, n=1)["q_label"][0] == "one"


def test_top_pairs_filters(con):
    assert keys(top_pairs(con, "a", head=0, n=10)) == [(0, 1, 1), (0, 1, 2), (0, 2, 2), (0, 3, 2)]
    assert keys(top_pairs(con, "a", self_pairs="only")) == [(1, 5, 5), (0, 1, 1), (0, 2, 2)]
    assert (0, 1, 1) not in keys(top_pairs(con, "a", self_pairs="exclude"))
    assert keys(top_pairs(con, "a", min_count=4)) == [(1, 5, 5), (0, 1, 1), (0, 3, 2)]
    assert set(keys(top_pairs(con, "a", feature=2, side="key"))) == {(0, 1, 2), (0, 3, 2), (0, 2, 2), (1, 1, 2)}
    assert set(keys(top_pairs(con, "a", feature=3, side="either"))) == {(0, 3, 2)}
    # without the diagonal: (1,5,5) has no off-diagonal occurrence, (0,1,1) keeps sum 1 over n 1
    nd = top_pairs(con, "a", diagonal=False)
    assert (1, 5, 5) not in keys(nd)
    assert nd.set_index(["head", "q_feat", "k_feat"]).loc[(0, 1, 1), "sum"] == pytest.approx(1.0)


def test_bad_arguments(con):
    with pytest.raises(StoreError, match="unknown metric"):
        top_pairs(con, "a", metric="median")
    with pytest.raises(StoreError, match="self_pairs"):
        top_pairs(con, "a", self_pairs="yes")
    with pytest.raises(StoreError, match="does not exist"):
        top_pairs(con, "zzz")


def test_feature_partners(con):
    as_query = feature_partners(con, "a", 1, side="query")
    assert set(as_query["partner"]) == {1, 2}
    as_key = feature_partners(con, "a", 2, side="key", head=0)
    assert list(as_key["partner"]) == [1, 2, 3]


def test_summary_and_self_fraction(con):
    s = summary_stats(con, "a", top_n=2)
    assert s["unique_pairs"] == 6 and s["self_pairs"] == 3 and s["occurrences"] == 26
    assert s["self_frac_top"] == 1.0          # (1,5,5) and (0,1,1)
    assert s["self_frac_top_no_diag"] == 0.0  # without the diagonal: (0,1,2)=5, (1,1,2)=4
    by_head = self_fraction_by_head(con, "a", top_n=1).set_index("head")
    assert by_head.loc[0, "self_frac_top"] == 1.0 and by_head.loc[0, "self_frac_top_no_diag"] == 0.0


def test_histogram(con):
    h = value_histogram(con, "a", metric="sum", bins=5)
    assert h["count"].sum() == 6 and len(h) <= 5
    assert h["bin_lo"].min() == pytest.approx(-6.0) and h["bin_hi"].max() == pytest.approx(9.0)
    assert value_histogram(con, "a", feature=999).empty


def test_compare_runs_and_heads(con):
    df = compare_pairs(con, "a", "b", n=4)
    row = df.set_index(["q_feat", "k_feat"]).loc[(3, 2)]
    assert row["value_a"] == -6.0 and row["value_b"] == 6.0
    assert pd.isna(row["rank_a"]) and row["rank_b"] == 4  # ranks exist only inside each side's top n
    summary = compare_summary(df, 4)
    assert summary["overlap"] == 3 and summary["jaccard"] == pytest.approx(3 / 5)
    heads = compare_pairs(con, "a", "a", head_a=0, head_b=1, n=10)
    both = heads.dropna(subset=["value_a", "value_b"])
    assert list(zip(both["q_feat"], both["k_feat"])) == [(1, 2)]


def test_pair_examples_context(con):
    run = 1
    con.execute("INSERT INTO pair_examples VALUES (?, 1, 0, 0, 1, 0, 2, 7, 3, 1, 2.5)", [run])
    con.execute("INSERT INTO samples_done VALUES (?, 7, 0, 4, ['a', 'b', 'c', 'd'])", [run])
    ex = pair_examples(con, "a", feature=1, side="query")
    assert ex["q_token"][0] == "d" and ex["k_token"][0] == "b"
    assert ex["context"][0] == "a [[b]] c <<d>>"

"""CSV exports neutralise spreadsheet formulas in labels (= + - @ tab CR get a leading '); Parquet and the
database keep the label verbatim; numbers (negative values too) are untouched."""

from __future__ import annotations

import io

import pandas as pd

from store import Store, export_pairs_bytes, ingest_job_shards, set_feature_labels
from store.report import csv_safe, dataframe_bytes
from tests.store.fake_jobs import make_job

FORMULAS = {1: '=HYPERLINK("http://evil.example","click")', 2: "@SUM(A1:A9)", 3: "+1+1", 4: "-2+3",
            5: "\tcmd", 6: "plain label", 7: "a=b"}


def test_csv_export_neutralises_formulas(tmp_path):
    store = Store(tmp_path / "fra.duckdb")
    job, _ = make_job(tmp_path / "jobs", "job-x")
    with store.write() as con:
        run = ingest_job_shards(con, job)["run"]
        set_feature_labels(con, "demo-l1-ln1", FORMULAS)
    with store.read() as cur:
        csv = pd.read_csv(io.BytesIO(export_pairs_bytes(cur, run, "csv")), keep_default_na=False)
        parquet = pd.read_parquet(io.BytesIO(export_pairs_bytes(cur, run, "parquet")))
    store.close()
    for feature, label in FORMULAS.items():
        cells = set(csv.loc[csv["q_feat"] == feature, "q_label"])
        want = label if feature in (6, 7) else "'" + label
        assert cells == {want}, (feature, cells)
        assert set(parquet.loc[parquet["q_feat"] == feature, "q_label"]) == {label}
    assert (csv["value"] < 0).any() and pd.api.types.is_float_dtype(csv["value"])  # numbers stay numbers
    assert list(csv["value"]) == sorted(csv["value"], reverse=True)


def test_dataframe_csv_bytes_are_safe():
    df = pd.DataFrame({"label": ["=1+1", "ok", None, "-x"], "value": [-1.5, 2.0, 3.0, -4.0]})
    got = pd.read_csv(io.BytesIO(dataframe_bytes(df, "csv")))
    assert list(got["label"].fillna("∅")) == ["'=1+1", "ok", "∅", "'-x"]
    assert list(got["value"]) == [-1.5, 2.0, 3.0, -4.0]
    assert list(csv_safe(df)["value"]) == list(df["value"]) and df["label"][0] == "=1+1"  # a copy

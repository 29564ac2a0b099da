"""The Pair tables Feature view on a run with two dictionaries (AppTest, synthetic shards): it opens on a
feature that has pairs in the dictionary picked, follows a change of dictionary, keeps a typed feature,
and names sources by short name (tables) and full ref (exports)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from fra_core import contracts
from tests.store.fake_jobs import make_job

REPO = Path(__file__).resolve().parents[2]
KK = "release:gpt2-small-hook-z-kk/blocks.{}.hook_z"


def _two_source_job(jobs_root: Path) -> Path:
    """A finished job whose features of one parity (that of the best pair's query feature) belong to source
    1 ("kk L1"), the others to source 0 ("kk L0"): the best pair's query feature is not in source 0."""
    job, _ = make_job(jobs_root, "accumulate-two-saes", n_shards=2, seed=4, n_feat=40)
    shards = [contracts.shard_path(job, i, "pairs") for i in range(2)]
    tables = [pq.read_table(p) for p in shards]
    both = pa.concat_tables(tables).group_by(["head", "q_feat", "k_feat"]).aggregate([("sum", "sum")])
    best = both.sort_by([("sum_sum", "descending")]).slice(0, 1).to_pylist()[0]
    parity = best["q_feat"] % 2
    for path, table in zip(shards, tables):
        for side in ("q", "k"):
            src = pc.cast(pc.equal(pc.bit_wise_and(table[f"{side}_feat"], 1), parity), pa.int8())
            table = table.set_column(table.schema.get_field_index(f"{side}_src"), f"{side}_src",
                                     pc.cast(src, table.schema.field(f"{side}_src").type))
        pq.write_table(table, path)
    info = contracts.read_run_info(job)
    info["sources"] = [{**info["sources"][0], "src": s, "name": KK.format(s), "sae_id": KK.format(s),
                        "hook": f"blocks.{s}.attn.hook_z", "d_sae": 40} for s in (0, 1)]
    contracts.write_run_info(job, info)
    return job


@pytest.fixture
def two_sae_ws(workspace):
    _two_source_job(workspace.jobs)
    yield workspace
    from ui import store as ui_store

    ui_store._handle.clear()


def _open() -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page("pages/pair_tables.py")
    # the job is built around the best pair by sum over every pair (the page's default is mean |FRA| with a
    # min count of 5): rank as the job was built, through the URL as a shared link would
    at.query_params.update({"pt_metric": "sum", "pt_min_count": "1"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _no_pairs(at: AppTest) -> list[str]:
    return [i.value for i in at.info if "has no pairs" in i.value]


def test_top_pairs_show_short_source_names(two_sae_ws):
    at = _open()
    table = at.dataframe[0].value
    assert set(table["q_src"]) <= {"kk L0", "kk L1"} and len(set(table["q_src"])) == 2


def test_feature_view_opens_on_a_feature_with_pairs_in_the_picked_dictionary(two_sae_ws):
    at = _open()
    top = at.dataframe[0].value.iloc[0]  # the best pair (Top pairs, by sum)
    at.radio(key="pt_view").set_value("Feature").run()
    assert not at.exception, [e.value for e in at.exception]
    picker = at.selectbox(key="pt_src")
    assert picker.value == 1 and top["q_src"] == "kk L1"  # the best pair's query source, not the first one
    assert at.number_input(key="pt_feature_view").value == int(top["q_feat"])
    assert "kk L0  (release:gpt2-small-hook-z-kk/blocks.0.hook_z)" in picker.options
    assert not [m for m in _no_pairs(at) if "as query" in m], _no_pairs(at)
    partners = at.dataframe[0].value  # as query: its key partners
    assert len(partners) and "partner source" in partners

    # another dictionary: the view moves to that dictionary's best feature, which has pairs there
    at.selectbox(key="pt_src").set_value(0).run()
    fid = at.number_input(key="pt_feature_view").value
    assert fid % 2 != int(top["q_feat"]) % 2  # a feature of source 0
    assert len(_no_pairs(at)) < 2, _no_pairs(at)

    # a feature the user types is kept while only the other filters change
    at.number_input(key="pt_feature_view").set_value(fid + 2).run()
    at.number_input(key="pt_min_count").set_value(1).run()
    assert at.number_input(key="pt_feature_view").value == fid + 2
    # the "Feature id" filter decides the default
    at.text_input(key="pt_feature").set_value(str(fid + 4)).run()
    assert at.number_input(key="pt_feature_view").value == fid + 4


def test_exports_name_each_source(two_sae_ws):
    from ui import store as ui_store

    at = _open()
    run_id = int(at.selectbox(key="pt_run").value)
    make = ui_store.export_callables(run_id, dict(metric="sum", diagonal=True, limit=20, head=None, layer=None,
                                                  feature=None, side="either", self_pairs=None, min_count=1))
    table = pq.read_table(io.BytesIO(make["parquet"]())).to_pandas()
    assert set(zip(table["q_src"], table["q_source"], table["q_sae"])) <= {(0, "kk L0", KK.format(0)),
                                                                          (1, "kk L1", KK.format(1))}
    csv = make["csv"]().decode()
    assert csv.splitlines()[0].startswith("layer,head,q_src,q_feat") and csv.splitlines()[0].endswith(
        "q_source,q_sae,k_source,k_sae,q_neuronpedia,k_neuronpedia")  # unquoted: DuckDB's CSV as written
    assert csv.count("\n") == 21 and f",kk L1,{KK.format(1)}" in csv


def test_csv_source_columns_keep_every_cell_as_written():
    from ui.export_columns import with_sources

    original = ('layer,head,q_src,q_feat,k_src,k_feat,q_label\n'
                '1,0,0,3,1,4,"a, b"\n'
                '1,0,1,5,0,6,"two\nlines ""quoted"""\n'
                '1,0,0,7,0,8,\n'
                '1,0,0,9,0,9,""\n').encode()
    out = with_sources(original, "csv", [{"src": 0, "sae_id": "mine"}, {"src": 1, "sae_id": KK.format(1)}]).decode()
    rows = out.split("\n")
    assert rows[0] == "layer,head,q_src,q_feat,k_src,k_feat,q_label,q_source,q_sae,k_source,k_sae"
    assert rows[1] == f'1,0,0,3,1,4,"a, b",mine,mine,kk L1,{KK.format(1)}'
    assert rows[2:4] == ["1,0,1,5,0,6,\"two", f'lines ""quoted""",kk L1,{KK.format(1)},mine,mine']
    assert rows[4] == "1,0,0,7,0,8,,mine,mine,mine,mine"  # NULL label stays empty
    assert rows[5] == '1,0,0,9,0,9,"",mine,mine,mine,mine'  # the empty string stays quoted
    assert np.all([len(r) for r in rows[:-1]]) and rows[-1] == ""

"""AppTest for the Pair tables page's Marginals view and the run's statistics label (synthetic shards)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fra_core import contracts as shards
from tests.pages.test_pair_tables_page import _ok, _open
from tests.store.fake_jobs import make_job


def _add_marginals(job_dir, n_shards: int) -> None:
    """Marginal and node-total shards whose parts add up: per head, query features sum to 3, query
    nodes to 1 (total 4); pairs come from make_job's random shards."""
    for shard in range(n_shards):
        m = {"layer": [1] * 4, "head": [0, 0, 1, 1], "side": ["query", "key", "query", "key"], "src": [0] * 4,
             "feature": [1, 2, 1, 2], "n": [5, 6, 5, 6], "sum": [3.0, 2.5, 3.0, 2.5], "abs_sum": [4.0, 3.0, 4.0, 3.0]}
        t = pa.table({f.name: pa.array(m[f.name], f.type) for f in shards.MARGINALS_SCHEMA})
        shards.write_table_atomic(t, shards.shard_path(job_dir, shard, "marginals"))
        nd = {"layer": [1] * 4, "head": [0, 0, 1, 1], "side": ["query", "key", "query", "key"],
              "node": ["sae_error", "bias", "sae_error", "bias"], "n": [40] * 4, "sum": [1.0, 1.5, 1.0, 1.5],
              "abs_sum": [2.0] * 4, "sum_vs_features": [0.5, 0.25, 0.5, 0.25]}
        t = pa.table({f.name: pa.array(nd[f.name], f.type) for f in shards.NODE_TOTALS_SCHEMA})
        shards.write_table_atomic(t, shards.shard_path(job_dir, shard, "node_totals"))


@pytest.fixture
def marg_ws(workspace):
    job, _ = make_job(workspace.jobs, "accumulate-m", n_shards=2, seed=0)
    _add_marginals(job, 2)
    make_job(workspace.jobs, "accumulate-old", n_shards=1, seed=1)
    return workspace


def test_marginals_view(marg_ws):
    at = _open()
    _ok(at)
    runs = at.selectbox(key="pt_run")  # newest first: the marginal run (ingested first) is the last option
    at.selectbox(key="pt_run").set_value(runs.options[-1]).run()
    label = " ".join(c.value for c in at.caption)
    assert "top-8 kept" in label  # synthetic configs predate statistics: labelled with their m
    at.radio(key="pt_view").set_value("Marginals").run()
    _ok(at)
    shares, feats, nodes = (d.value for d in at.dataframe[:3])
    assert list(shares["total"]) == [8.0, 8.0]  # 2 shards × (3 + 1)
    np.testing.assert_allclose(shares["query_nodes_share"], 0.25)
    assert list(feats["feature"]) == [1, 1] and list(feats["n"]) == [10, 10]
    np.testing.assert_allclose(feats["share"], 0.75)
    assert set(nodes["node"]) == {"sae_error", "bias"}
    at.radio(key="pt_marg_side").set_value("key").run()
    at.selectbox(key="pt_marg_order").set_value("n").run()
    _ok(at)
    assert list(at.dataframe[1].value["feature"]) == [2, 2]
    at.selectbox(key="pt_head").set_value("L1H1").run()
    _ok(at)
    assert list(at.dataframe[0].value["head"]) == [1] and set(at.dataframe[1].value["head"]) == {1}


def test_marginals_view_without_marginals(marg_ws):
    at = _open()
    runs = at.selectbox(key="pt_run")
    old = [i for i in runs.options if i != runs.options[-1]][0]
    at.selectbox(key="pt_run").set_value(old).run()
    at.radio(key="pt_view").set_value("Marginals").run()
    _ok(at)
    assert any("no marginals" in i.value for i in at.info)

"""The Pair tables' default ranking on a real demo run: mean |FRA| per cell over pairs seen in >= 5
cells puts the induction pairs on top of the induction head, where "sum" puts dense features.

A pair is induction-like when its query feature's automatic label is current token ‘A’ and its key
feature's is "after ‘A’" (the key sits after an earlier A). Measured on this run (96 demo texts of 40
tokens): 20 / 20 of the default top 20, 1 / 20 by sum."""

from __future__ import annotations

import re

import pytest

from tests.pages.fra_helpers import assert_clean, induction_head, open_page


@pytest.fixture
def bigger_demo_run(fra_ws):
    from fra_core import jobs
    from fra_core.accumulate import AccumulateFRAConfig
    from ui import store as ui_store

    cfg = AccumulateFRAConfig(model="demo", q_saes=("demo-l1-ln1",), layer=1, n_samples=96, context_length=40,
                              batch_size=4, shard_size=48, top_m=4, k_active=8, examples_per_pair=1)
    job_dir = jobs.new_job_dir(fra_ws.jobs, "accumulate", cfg)
    assert jobs.run_job_dir(job_dir) == 0, (job_dir / "log.txt").read_text()[-2000:]
    yield fra_ws
    ui_store._handle.clear()


def _token(label, after: bool = False) -> str | None:
    m = re.search(r"after ‘([^’]*)’" if after else r"^‘([^’]*)’", label) if isinstance(label, str) else None
    return m.group(1) if m else None


def _induction_like(at) -> int:
    top = at.dataframe[0].value.head(20)
    assert len(top) == 20
    return sum(_token(q) is not None and _token(q) == _token(k, True) for q, k in zip(top["q_label"], top["k_label"]))


def test_default_ranking_shows_the_induction_pairs(bigger_demo_run):
    at = open_page("pages/pair_tables.py")
    assert_clean(at)
    assert (at.selectbox(key="pt_metric").value, at.number_input(key="pt_min_count").value) == ("mean_abs", 5)
    at.selectbox(key="pt_head").set_value(f"L1H{induction_head()}").run()
    assert_clean(at)
    assert (at.dataframe[0].value["n"] >= 5).all()
    default = _induction_like(at)
    at.selectbox(key="pt_metric").set_value("sum").run()
    at.number_input(key="pt_min_count").set_value(1).run()
    assert_clean(at)
    by_sum = _induction_like(at)
    assert default >= 18 and by_sum <= 10, (default, by_sum)

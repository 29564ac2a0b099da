"""The Pair tables page shows the run's measured completeness (run.json → store → caption)."""

from __future__ import annotations

from fra_core import contracts as shards
from tests.pages.test_pair_tables_page import _ok, _open
from tests.store.fake_jobs import make_job


def test_run_completeness_beside_the_run(workspace):
    job, _ = make_job(workspace.jobs, "accumulate-c", n_shards=1, seed=2)
    make_job(workspace.jobs, "accumulate-d", n_shards=1, seed=3)  # no completeness recorded
    info = shards.read_run_info(job)
    info["completeness"] = {"1": {"0": 2.5e-07, "1": 3.25e-06}}
    shards.write_run_info(job, info)
    at = _open()
    _ok(at)
    shown = {}
    for i in range(len(at.selectbox(key="pt_run").options)):
        at.selectbox(key="pt_run").select_index(i).run()
        _ok(at)
        shown[i] = " ".join(c.value for c in at.caption)
    assert sum("completeness **3.2e-06**" in text for text in shown.values()) == 1, shown  # the worst head
    assert sum("completeness not measured" in text for text in shown.values()) == 1, shown

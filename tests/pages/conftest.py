"""Fixtures for the page tests."""

import pytest

from tests.pages.fra_helpers import install_demo_saes


@pytest.fixture
def fra_ws(workspace):
    """An isolated workspace holding the shipped demo SAEs."""
    install_demo_saes(workspace)
    return workspace


def demo_run_cfg():
    from fra_core.accumulate import AccumulateFRAConfig

    return AccumulateFRAConfig(model="demo", q_saes=("demo-l1-ln1",), layer=1, n_samples=4, context_length=40,
                               batch_size=2, shard_size=4, top_m=4, k_active=8, examples_per_pair=2)


@pytest.fixture
def demo_run(fra_ws):
    """A small real accumulation run on the demo in the page tests' workspace; the app's cached stores
    are closed afterwards (the next test's workspace is another folder)."""
    from fra_core import jobs
    from ui import store as ui_store

    job_dir = jobs.new_job_dir(fra_ws.jobs, "accumulate", demo_run_cfg())
    assert jobs.run_job_dir(job_dir) == 0, (job_dir / "log.txt").read_text()[-2000:]
    yield fra_ws
    ui_store._handle.clear()

"""AppTest: a real accumulation job, launched from the form, on a sliding-window model (Mistral-style
flags, 4-token window, 24-token contexts): it finishes, records its completeness, and the Pair tables
page shows it beside the run."""

from __future__ import annotations

import pytest

from fra_core import contracts as shards
from fra_core import jobs
from tests.pages.test_fra_accumulate_page import _close_cached_stores, _job_from_the_form  # noqa: F401


@pytest.mark.slow  # the job process imports torch + TransformerLens + SAELens
def test_sliding_window_job_from_the_form(workspace):
    from tests.fra_core.accumulate_helpers import save_parts, tiny_sae
    from tests.fra_core.test_accumulate_completeness import WINDOW, _sliding
    from tests.pages.test_pair_tables_page import _open

    model = _sliding(workspace.root)
    save_parts(workspace, model, tiny_sae(model), model_name="sliding", sae_name="sliding-sae")
    _job_from_the_form(workspace, "sliding", "sliding-sae")
    [job] = jobs.list_jobs(workspace.jobs, "accumulate")
    comp = shards.read_run_info(job.path)["completeness"]
    assert model.cfg.window_size == WINDOW and set(comp["1"]) == {"0", "1", "2", "3"}
    assert max(comp["1"].values()) <= 1e-4
    at = _open()
    assert not at.exception and not at.error
    assert any("completeness **" in c.value for c in at.caption), [c.value for c in at.caption]

"""AppTest for ui.common.job_progress: the rate carries the job's own unit (restoration training counts steps)."""

import json


def _render(job_dir: str, unit: str | None):
    from streamlit.testing.v1 import AppTest

    def app(job_dir, unit):
        from pathlib import Path

        import ui.common

        if unit is None:
            ui.common.job_progress(Path(job_dir))
        else:
            ui.common.job_progress(Path(job_dir), unit=unit)

    at = AppTest.from_function(app, args=(job_dir, unit), default_timeout=60)
    at.run()
    assert not at.exception
    return " ".join(c.value for c in at.caption)


def test_rate_shows_the_jobs_unit(tmp_path):
    status = {"state": "running", "done": 40, "total": 100, "rate": 2.5, "eta_s": 24.0, "elapsed_s": 16.0}
    (tmp_path / "status.json").write_text(json.dumps(status))
    (tmp_path / "job.json").write_text(json.dumps({"kind": "train-restoration"}))
    assert "2.5 steps/s" in _render(str(tmp_path), "steps")
    assert "2.5 samples/s" in _render(str(tmp_path), None)

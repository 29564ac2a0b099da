"""Before launch: the accumulation form's work settings (K = all active by default, threads, minimum pair
count) reach the config, and the time / memory / disk estimates say where they come from."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from fra_core import jobs
from fra_core.accumulate import AccumulateFRAConfig
from fra_core.contracts import write_json_atomic
from tests.store.fake_jobs import make_job
from ui import launch

REPO = Path(__file__).resolve().parents[2]


def _finished(workspace, rate: float, rss: float):
    job, _ = make_job(workspace.jobs, "accumulate-20260101-000000-ref", n_shards=2, samples_per_shard=4)
    write_json_atomic(job / "status.json", {"state": "done", "done": 8, "total": 8, "rate": rate,
                                            "result": {"samples": 8, "peak_rss_mb": rss}})
    return job


def test_estimates_scale_from_a_finished_job(workspace):
    job = _finished(workspace, rate=2.0, rss=1500.0)
    size = sum(p.stat().st_size for p in (job / "shards").iterdir())
    cfg = AccumulateFRAConfig(model="demo", layer=1, heads=(0, 1), n_samples=80, context_length=64)
    text = launch.estimate(cfg, workspace)
    assert "≈ 40 s at ≈ 2 samples/s" in text and "memory ≈ 1.57 GB" in text
    assert f"disk ≈ {launch.fmt_bytes(size / 8 * 80)}" in text  # same cost per sample: bytes × samples
    twice = launch.estimate(AccumulateFRAConfig(model="demo", layer=1, heads=(0, 1, 2, 3), n_samples=80,
                                                context_length=64), workspace)
    assert "≈ 1 min 20 s" in twice or "80 s" in twice  # twice the heads: half the rate
    first = launch.estimate(AccumulateFRAConfig(model="demo", layer=0), workspace)  # nothing to scale from
    assert "unknown before a first job" in first and "≈" not in first.split("(")[0]


def test_top_m_bound_without_history(workspace):
    cfg = AccumulateFRAConfig(statistics="top_m", heads=(0,), n_samples=10, context_length=8, batch_size=2, top_m=4)
    text = launch.estimate(cfg, workspace)
    cells = 8 * 9 // 2
    assert launch.fmt_bytes(2 * cells * 4 * 36) in text and launch.fmt_bytes(10 * cells * 4 * 60) in text
    assert "upper bound" in text


def test_form_sends_the_work_settings(workspace):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page("pages/fra_accumulate.py")
    at.run()
    assert at.number_input(key="acc_k_active").value == 0  # every active feature by default
    at.number_input(key="acc_threads").set_value(2).run()
    at.number_input(key="acc_min_pair_count").set_value(3).run()
    assert not at.exception
    yaml = next(c.value for c in at.code if "AccumulateFRAConfig" in c.value)
    assert "k_active: 0" in yaml and "threads: 2" in yaml and "min_pair_count: 3" in yaml
    assert not jobs.list_jobs(workspace.jobs)

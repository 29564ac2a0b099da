"""Before an accumulation job is created: check, in the app process, everything the job would check in
its first seconds (the model loads offline, each SAE's d_in and hook fit the model and the layer, the
heads exist, the context fits), and estimate its time from earlier jobs. A refused launch leaves no job
folder behind, so it can neither fail 20 s later, nor offer "Resume", nor become a default run."""

from __future__ import annotations

import dataclasses
from typing import Any

from fra_core import jobs
from fra_core.errors import FRAStudioError
from ui import common as ui
from ui import tables


class LaunchRefused(FRAStudioError):
    """A launch-time check failed (the message names the field and the value)."""


def check_parts(cfg) -> None:
    """Load the model (cached, as the pages do) and every SAE, and run the job's own set-up and fit checks
    (`fra_core.accumulate.run.prepare`: the runner of the run's statistics); LaunchRefused on any failure."""
    import streamlit as st

    from fra_core.accumulate.run import prepare

    with st.spinner("Checking the model, the SAEs' fit to it and the layer…"):
        _check(cfg, prepare)


def _check(cfg, prepare) -> None:
    try:
        model = ui.get_model(cfg.model)
    except (ValueError, OSError, RuntimeError) as exc:
        raise LaunchRefused(f"model = {cfg.model!r} cannot be loaded here (offline, the Hugging Face cache "
                            f"must hold it): {exc}") from exc
    try:
        prepare(cfg, model=model)
    except (ValueError, OSError, RuntimeError) as exc:
        raise LaunchRefused(f"{exc}") from exc


def estimate(cfg, ws) -> str | None:
    """'≈ 3 min 20 s at 1.2 samples/s (job X, same model and layer)' from the newest finished job of the
    same model and layer that measured a rate, or None."""
    best: tuple[str, float] | None = None
    for job in jobs.list_jobs(ws.jobs, "accumulate"):
        cfg_path = job.path / "config.yaml"
        rate = job.status.get("rate")
        if job.state != "done" or not rate or not cfg_path.is_file():
            continue
        other = _read_cfg(cfg_path)
        if other.get("model") == cfg.model and int(other.get("layer", -1)) == cfg.layer:
            scale = _cost(other) / max(_cost(dataclasses.asdict(cfg)), 1e-9)
            best = (job.job_id, float(rate) * scale)
            break  # newest first
    if best is None:
        return None
    name, rate = best
    return (f"≈ {tables.fmt_seconds(cfg.n_samples / rate)} at ≈ {tables.fmt_rate(rate)} (scaled from job "
            f"{name}: same model and layer)")


def _read_cfg(path) -> dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _cost(c: dict[str, Any]) -> float:
    """Relative cost of one sample: tokens × heads (0 heads = all, counted as 12)."""
    heads = len(c.get("heads") or ()) or 12
    return float(c.get("context_length") or 64) * heads

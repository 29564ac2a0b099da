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
from ui.tables import fmt_bytes


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
    """Estimates before launch, each labelled with where it comes from: time ('≈ 3 min 20 s at 1.2
    samples/s', scaled from the newest finished job of the same model and layer), and memory and disk
    (that job's measured peak memory and bytes written per sample, scaled; else a bound from K, T, batch,
    heads and m for top-m runs). None when there is nothing honest to say."""
    parts = []
    ref = _reference_job(cfg, ws)
    if ref is not None:
        name, status, other, size = ref
        scale = _cost(other) / max(_cost(dataclasses.asdict(cfg)), 1e-9)  # rate ∝ 1 / cost
        rate = float(status["rate"]) * scale
        parts.append(f"≈ {tables.fmt_seconds(cfg.n_samples / rate)} at ≈ {tables.fmt_rate(rate)} (scaled from "
                     f"job {name}: same model and layer)")
        rss = (status.get("result") or {}).get("peak_rss_mb")
        if rss:
            parts.append(f"memory ≈ {fmt_bytes(rss * 2**20)} (job {name}'s peak)")
        done = int((status.get("result") or {}).get("samples") or status.get("done") or 0)
        if done and size:
            disk = size / done / max(scale, 1e-9) * cfg.n_samples
            parts.append(f"disk ≈ {fmt_bytes(disk)} of shards (job {name}: {fmt_bytes(size / done)} per sample"
                         + (", before min_pair_count pruning)" if cfg.min_pair_count > 1 else ")"))
    elif cfg.statistics == "top_m":
        parts.append(topm_bound(cfg))
    else:  # every pair: no bound worth quoting without a measured job
        parts.append("memory and disk grow with heads × distinct pairs, unknown before a first job (measured: "
                     "GPT-2-sized L5 with ≈ 200 active features per position wrote ≈ 110 MB of shards per sample "
                     "and head, and 12 heads of one 4-sample shard needed > 23 GB): start with a few samples, a "
                     "small shard size, or top-m statistics")
    return " · ".join(parts) or None


def topm_bound(cfg) -> str:
    """Upper bounds of a top-m job without history: ≤ m pairs per cell, 36 B an entry in memory per batch,
    ~60 B a stored pair (unique pairs are fewer: pairs repeat across cells and samples)."""
    heads = len(cfg.heads) or 12
    cells = cfg.context_length * (cfg.context_length + 1) // 2
    per_batch = cfg.batch_size * heads * cells * cfg.top_m * 36
    disk = cfg.n_samples * heads * cells * cfg.top_m * 60
    return (f"memory ≲ {fmt_bytes(per_batch)} of pair entries per batch + the model and SAEs · disk ≲ "
            f"{fmt_bytes(disk)} (upper bound: every kept pair distinct; estimates, no earlier job to scale from)")


def _reference_job(cfg, ws):
    """(job id, status, its config, bytes of its shards) of the newest finished job of the same model,
    layer and statistics that measured a rate, or None."""
    for job in jobs.list_jobs(ws.jobs, "accumulate"):  # newest first
        cfg_path = job.path / "config.yaml"
        if job.state != "done" or not job.status.get("rate") or not cfg_path.is_file():
            continue
        other = _read_cfg(cfg_path)
        if other.get("model") == cfg.model and int(other.get("layer", -1)) == cfg.layer and \
                other.get("statistics", "all_pairs") == cfg.statistics:
            shards = job.path / "shards"
            size = sum(p.stat().st_size for p in shards.glob("*") if p.is_file()) if shards.is_dir() else 0
            return job.job_id, job.status, other, size
    return None


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

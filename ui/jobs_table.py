"""The Dataset accumulation page's table of jobs and runs (no torch): one row per job folder (its state,
progress, owner and place in its device's queue) and per stored run whose folder is gone."""

from __future__ import annotations

import pandas as pd

from fra_core import jobs
from fra_core.jobqueue import job_owner
from ui.tables import fmt_eta, fmt_rate, fmt_seconds


def queue_cell(status: dict) -> str:
    """'2 · cuda' for a job waiting in state "queued" at position 2 of the cuda queue (`fra_core.jobqueue`
    writes both into status.json while it waits); '—' for any other job."""
    position = status.get("queue_position")
    if status.get("state") != "queued" or position is None:
        return "—"
    device = status.get("waiting_for")
    return f"{int(position)}" + (f" · {device}" if device else "")


def job_table(job_list: list[jobs.JobInfo], runs: pd.DataFrame) -> pd.DataFrame:
    by_name = {r["name"]: r for _, r in runs.iterrows()}
    rows = []
    for job in job_list:
        s, run = job.status, by_name.get(job.job_id)
        rows.append({"job": job.job_id, "state": job.state, "owner": job_owner(job.path) or "—",
                     "queue": queue_cell({**s, "state": job.state}), "done": s.get("done"), "total": s.get("total"),
                     "rate": fmt_rate(s.get("rate")),
                     "ETA": fmt_eta(s.get("eta_s"), s.get("done"), s.get("total"), s.get("elapsed_s"))
                     if job.state == "running" else "—",
                     "started": s.get("started"), "wall time": fmt_seconds(s.get("wall_s")),
                     "run": None if run is None else int(run["id"]),
                     "ingested samples": None if run is None else int(run["n_samples"]),
                     "pairs": None if run is None else int(run["n_pairs"]), "message": s.get("message")})
    for name, run in by_name.items():  # runs whose job folder is gone (or came from another machine)
        if name not in {j.job_id for j in job_list}:
            owner = run.get("owner")
            rows.append({"job": name, "state": run["status"], "owner": owner if isinstance(owner, str) and owner else "—",
                         "queue": "—", "run": int(run["id"]), "ingested samples": int(run["n_samples"]),
                         "pairs": int(run["n_pairs"]), "wall time": fmt_seconds(run["wall_s"]),
                         "message": "no job folder"})
    return pd.DataFrame(rows)

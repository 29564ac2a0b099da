"""Shared page helpers: sidebar, cached model loading, job progress. Not a page itself.

Heavy libraries (torch, transformer_lens, fra_core.models) are imported inside functions so pages that
only read the database stay light.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import streamlit as st

from fra_core.workspace import Workspace

DEVICE_KEY = "fra_device"


def workspace() -> Workspace:
    return Workspace.from_env()


def device_choice() -> str:
    """The user's device preference ('auto', 'cpu', 'cuda', 'mps'); MPS only when chosen explicitly."""
    return st.session_state.get(DEVICE_KEY, os.environ.get("FRA_DEVICE", "auto"))


def render_sidebar() -> None:
    with st.sidebar:
        st.caption(f"Workspace: `{workspace().root}`")
        choices = ["auto", "cpu", "cuda", "mps"]
        current = device_choice()
        st.selectbox("Device", choices, index=choices.index(current) if current in choices else 0,
                     key=DEVICE_KEY, help="auto = CUDA if available, else CPU. Apple MPS is opt-in.")
        if "torch" in sys.modules:  # never import torch just for the sidebar
            try:
                from fra_core.devices import pick_device

                st.caption(f"Running on **{pick_device(device_choice())}**")
            except ValueError as exc:
                st.warning(str(exc))
        else:
            st.caption(f"Device: **{device_choice()}** (resolved when a model loads)")


@st.cache_resource(show_spinner="Loading model…", max_entries=4)
def _cached_model(ref: str, device: str, stamp: float):
    from fra_core.models import load_model

    return load_model(ref, device)


def _folder_stamp(ref: str) -> float:
    """Modification time of a workspace model folder, so a re-saved model is reloaded."""
    folder = workspace().models / ref
    return folder.stat().st_mtime if folder.is_dir() else 0.0


def get_model(ref: str):
    """Load (cached) a model by ref; raises ModelLoadError / ValueError with a readable message."""
    return _cached_model(ref, device_choice(), _folder_stamp(ref))


def show_error(exc: BaseException, what: str = "") -> None:
    prefix = f"{what}: " if what else ""
    st.error(f"{prefix}{exc}", icon=":material/error:")


def job_progress(job_dir: Path, unit: str = "samples") -> dict[str, Any]:
    """Render one job's status (state, progress bar, rate in `unit`/s, ETA, message); returns the status dict."""
    from fra_core.jobs import job_status

    status = job_status(job_dir)
    state = status.get("state", "unknown")
    done, total = status.get("done") or 0, status.get("total")
    if total:
        st.progress(min(float(done) / float(total), 1.0), text=f"{state}: {done:g} / {total:g}")
    else:
        st.write(f"**{state}**")
    from ui.tables import fmt_eta, fmt_rate

    bits = []
    if status.get("rate"):
        bits.append(fmt_rate(status["rate"], unit))
    if state == "running":  # "—" until the rate is stable (a first ETA from one batch is noise)
        bits.append(f"ETA {fmt_eta(status.get('eta_s'), done, total, status.get('elapsed_s'))}")
    if status.get("message") and state not in ("failed", "died"):  # a failure's message: once, as the error
        bits.append(str(status["message"]))
    if bits:
        st.caption(" · ".join(bits))
    if state in ("failed", "died"):
        st.error(status.get("message", state))
    return status


def fmt_age(ts: float) -> str:
    secs = time.time() - ts
    return f"{secs:.0f} s ago" if secs < 120 else f"{secs / 60:.0f} min ago"

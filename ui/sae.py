"""SAE-page helpers: cached model/SAE/activation loading, training-job panel, Altair charts.

torch-heavy modules (`fra_core.models`, `fra_core.sae...`) are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from fra_core import jobs
from fra_core.workspace import Workspace
from ui import auth as ui_auth
from ui import common as ui

METRIC_TITLES = {"loss": "loss", "l0": "L0 (active features / token)", "explained_variance": "explained variance",
                 "dead_features": "dead features"}


def workspace() -> Workspace:
    return ui.workspace()


def device_choice() -> str:
    return ui.device_choice()


def get_model(ref: str):
    return ui.get_model(ref)


@st.cache_resource(show_spinner="Loading SAE…", max_entries=8)
def _cached_sae(ref: str, root: str, device: str, stamp: float):
    from fra_core.sae import load_sae

    return load_sae(ref, device=device, workspace=Workspace(Path(root)))


def sae_stamp(ref: str, ws: Workspace) -> float:
    """Modification time of a workspace SAE (so a re-created SAE is reloaded), 0 for other refs."""
    path = ws.saes / ref / "sae_weights.safetensors"
    return path.stat().st_mtime if path.is_file() else 0.0


def get_sae(ref: str):
    ws = workspace()
    return _cached_sae(ref, str(ws.root), ui.device_choice(), sae_stamp(ref, ws))


@st.cache_resource(show_spinner="Running the SAE over the texts…", max_entries=8)
def _cached_activations(sae_ref: str, model_ref: str, dataset: str, n_texts: int, root: str, device: str,
                        stamp: float):
    from fra_core.sae.inspect import collect_activations
    from fra_core.sae.train import build_text_dataset

    sae = get_sae(sae_ref)  # SAE first: its errors are the ones the user is fixing here
    texts = build_text_dataset(dataset, n_texts, 1, Workspace(Path(root)))["text"]
    return collect_activations(get_model(model_ref), sae, texts)


def get_activations(sae_ref: str, model_ref: str, dataset: str, n_texts: int):
    """SAE activations over `n_texts` texts of `dataset` (cached per SAE version, model, texts, device)."""
    ws = workspace()
    return _cached_activations(sae_ref, model_ref, dataset, n_texts, str(ws.root), ui.device_choice(),
                               sae_stamp(sae_ref, ws))


def default_model_for(sae_ref: str, ws: Workspace) -> str:
    from fra_core.sae import list_saes

    for entry in list_saes(ws):
        if entry.name == sae_ref and entry.model:
            return entry.model
    return "gpt2-small" if sae_ref.startswith(("ckkissane:", "release:")) else "demo"


# ----------------------------------------------------------------------------- charts
def bar_chart(df: pd.DataFrame, x: str, y: str, title: str, x_title: str | None = None) -> alt.Chart:
    return alt.Chart(df, title=title).mark_bar().encode(
        x=alt.X(f"{x}:Q", title=x_title or x), y=alt.Y(f"{y}:Q", title=y), tooltip=[x, y]).properties(height=220)


def histogram_chart(df: pd.DataFrame, title: str, x_title: str) -> alt.Chart:
    return alt.Chart(df, title=title).mark_bar().encode(
        x=alt.X("bin_start:Q", title=x_title, bin="binned"), x2="bin_end:Q", y=alt.Y("count:Q", title="count"),
        tooltip=["bin_start", "bin_end", "count"]).properties(height=220)


def metrics_charts(rows: list[dict]) -> None:
    if not rows:
        st.caption("No metrics yet.")
        return
    df = pd.DataFrame(rows)
    cols = st.columns(4)
    for col, (key, title) in zip(cols, METRIC_TITLES.items()):
        if key in df:
            col.altair_chart(alt.Chart(df, title=title).mark_line(point=len(df) < 40).encode(
                x=alt.X("step:Q"), y=alt.Y(f"{key}:Q", title=None, scale=alt.Scale(zero=False)),
                tooltip=["step", key]).properties(height=180), width="stretch")


# ----------------------------------------------------------------------------- live job panel
@st.fragment(run_every=2)
def job_panel() -> None:
    """The SAE training jobs (newest first): status, progress, live metrics, cancel."""
    ws = workspace()
    found = jobs.list_jobs(ws.jobs, "train-sae")
    if not found:
        st.caption("No training jobs yet.")
        return
    labels = {j.job_id: f"{j.job_id} · {j.state}" for j in found}
    chosen = st.session_state.get("sae_job")
    ids = list(labels)
    job_id = st.selectbox("Training job", ids, index=ids.index(chosen) if chosen in ids else 0,
                          format_func=labels.get, key="sae_job_pick")
    job = next(j for j in found if j.job_id == job_id)
    status = jobs.job_status(job.path)
    state, done, total = status.get("state", "?"), status.get("done") or 0, status.get("total") or 0
    from ui.tables import fmt_eta

    eta = fmt_eta(status.get("eta_s"), done, total, status.get("elapsed_s")) if state == "running" else "—"
    st.progress(min(1.0, done / total) if total else 0.0,
                text=f"{state} · {status.get('message', '')}" + (f" · ETA {eta}" if eta != "—" else ""))
    if state in ("running", "queued"):
        if st.button("Cancel job", key=f"cancel-{job_id}") and ui_auth.allowed_on_job(job.path, "cancel"):
            jobs.cancel_job(job.path)
            st.toast("Cancel requested; the job stops at its next step.")
    elif state == "failed":
        st.error(f"Training failed: {status.get('message')}")
    elif state == "died":
        st.warning(status.get("message"))
    elif state == "done" and status.get("result"):
        r = status["result"]
        st.success(f"Saved SAE **{r.get('sae_name')}** to `{r.get('path')}` · L0 {r.get('l0', 0):.2f} · "
                   f"explained variance {r.get('explained_variance', 0):.3f} · dead {r.get('dead_features')}")
        from fra_core.sae.inspect import sparsity_warning

        warning = sparsity_warning(float(r.get("l0") or 0), int(r.get("d_sae") or 0))
        if warning:
            st.warning(warning, icon="⚠️")
        if r.get("eval_source"):
            st.caption(f"Figures computed on {r['eval_source']}.")
        if r.get("dead_warning"):
            st.warning(r["dead_warning"], icon="⚠️")
    metrics_charts(jobs.read_metrics(job.path))

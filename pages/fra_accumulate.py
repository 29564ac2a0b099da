"""Dataset accumulation: configure and launch FRA accumulation jobs, watch them, and list their runs.

A job is its own process (`fra_core.jobs`): closing the tab or restarting the app does not stop it, and
nothing it needs lives in the session. While this page is open it polls the job folders and ingests
finished shards into DuckDB (idempotent), so the run grows on the Pair tables page as the job works.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pandas as pd
import streamlit as st

from fra_core import jobs
from fra_core.accumulate import KIND, AccumulateFRAConfig
from fra_core.datasets import open_texts
from store import StoreBusy, StoreError, delete_run
from ui import accumulate_form as ui_acc_form
from ui import auth as ui_auth
from ui import common as ui
from ui import launch as ui_launch
from ui import pickers as ui_pickers
from ui import store as ui_store
from ui.help_texts import ACCUMULATE as H
from ui.jobs_table import job_table
from ui.tables import fmt_seconds

ui_auth.page_gate(__file__)  # sign-in and role, on every run (see ui.auth)

DEMO_SAES = ui_pickers.DEMO_SAE_NAMES
STATISTICS_LABELS = {"all_pairs": "exact: every feature pair", "top_m": "top-m pairs per cell (older runs)"}
SOURCES = {"Demo texts": "demo", "Local file (.txt / .jsonl)": "file", "Saved HF dataset (folder)": "disk",
           "Stream from the HF Hub": "hf"}
ACTIVE = ("queued", "running")
MODEL_KEYS = ("_q_saes", "_k_saes", "_extra_saes", "_k_extra_saes")  # widget state that belongs to one model
OTHER = "other folder…"

st.title("Dataset accumulation")
ws = ui.workspace()


def folders(root: Path, marker: str) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / marker).is_file())


# ----------------------------------------------------------------------------- the form
with st.expander("New accumulation run", expanded=True):
    c = st.columns(3)
    models = ["demo", *folders(ws.models, "config.json"), "gpt2-small", "other…"]
    model = c[0].selectbox("Model", models, key="acc_model", help=H["acc_model"])
    if model == "other…":
        model = c[0].text_input("TransformerLens model name", key="acc_model_name", help=H["acc_model_name"]).strip()
    ui_pickers.reset_on_model_change("acc", model, only=MODEL_KEYS)  # no demo SAE left on another model
    singles, groups = ui_pickers.accumulation_saes(model)  # what fits the model, kk releases as one choice
    saes = [*sorted(set(DEMO_SAES) | set(singles)), *groups] if model == "demo" else [*singles, *groups]
    q_pick = c[1].multiselect("Query-side SAE(s)", saes, default=["demo-l1-ln1"] if model == "demo" else [],
                              key="acc_q_saes", help=H["acc_q_saes"])
    k_pick = c[2].multiselect("Key-side SAE(s) (empty = same as query side)", saes, key="acc_k_saes", help=H["acc_k_saes"])
    c = st.columns(2)
    typed = [c[i].text_input(f"Other {side}-side SAE refs (comma-separated)", key=key, help=H[key],
                             placeholder="ckkissane:/path/to/sae.pt, release:<release>/<sae_id>, /path/to/folder")
             for i, (side, key) in enumerate((("query", "acc_extra_saes"), ("key", "acc_k_extra_saes")))]
    c = st.columns(3)
    layer = int(c[0].number_input("Layer", min_value=0, value=1, step=1, key="acc_layer", help=H["acc_layer"]))
    q_saes, k_saes = (ui_pickers.expand_groups(pick, groups, layer) + [s.strip() for s in text.split(",") if s.strip()]
                      for pick, text in ((q_pick, typed[0]), (k_pick, typed[1])))
    heads_text = c[1].text_input("Heads (comma-separated; blank = all)", key="acc_heads", help=H["acc_heads"])
    source = SOURCES[c[2].selectbox("Dataset", list(SOURCES), key="acc_source", help=H["acc_source"])]
    location, column, split = "", "text", "train"
    if source != "demo":
        c = st.columns([3, 1, 1])
        hint = {"file": "path/to/texts.txt or .jsonl (relative: workspace datasets/ folder)",
                "disk": "folder written by datasets.save_to_disk", "hf": "Elriggs/openwebtext-100k"}[source]
        saved = ui_pickers.saved_datasets() if source == "disk" else []  # workspace datasets/ folders
        location = c[0].selectbox("Saved dataset", [*saved, OTHER], key="acc_saved", help=H["acc_saved"]) if saved else OTHER
        if location == OTHER:
            location = c[0].text_input("Dataset path or name", key="acc_location", help=H["acc_location"],
                                       placeholder=hint).strip()
        column = c[1].text_input("Text column", "text", key="acc_column", help=H["acc_column"]).strip() or "text"
        split = c[2].text_input("Split", "train", key="acc_split", help=H["acc_split"]).strip() or "train"
    c = st.columns(4)
    n_samples = int(c[0].number_input("Samples", min_value=1, value=256, step=64, key="acc_n_samples", help=H["acc_n_samples"]))
    context = int(c[1].number_input("Context length (tokens)", min_value=2, value=64, step=16, key="acc_context", help=H["acc_context"]))
    batch = int(c[2].number_input("Batch size", min_value=1, value=8, key="acc_batch", help=H["acc_batch"]))
    shard = int(c[3].number_input("Samples per shard", min_value=1, value=64, key="acc_shard", help=H["acc_shard"]))
    c = st.columns([1.2, 2])
    statistics = c[0].selectbox("Statistics", list(STATISTICS_LABELS), format_func=STATISTICS_LABELS.get,
                                key="acc_statistics", help=H["acc_statistics"])
    layers_text = c[1].text_input("Layers (comma-separated, all their heads; blank = the layer above)", key="acc_layers",
                                  help=H["acc_layers"])
    c = st.columns(3)
    top_m = int(c[0].number_input("Top-m pairs per cell (top-m statistics)", min_value=1, value=8, key="acc_top_m", help=H["acc_top_m"]))
    examples = int(c[1].number_input("Examples kept per pair", min_value=0, value=3, key="acc_examples", help=H["acc_examples"]))
    seed = int(c[2].number_input("Seed", min_value=0, value=0, key="acc_seed", help=H["acc_seed"]))
    work = ui_acc_form.work_fields()  # k_active (0 = all), threads, min_pair_count
    c = st.columns(3)
    flags = dict(prepend_bos=c[0].checkbox("Prepend BOS", True, key="acc_bos", help=H["acc_bos"]),
                 include_diagonal=c[0].checkbox("Record the diagonal (query = key)", True, key="acc_diag", help=H["acc_diag"]),
                 exclude_bos_key=c[1].checkbox("Exclude BOS as key", key="acc_bos_key", help=H["acc_bos_key"]),
                 exclude_bos_query=c[1].checkbox("Exclude BOS as query", key="acc_bos_query", help=H["acc_bos_query"]),
                 row_centre=c[2].checkbox("Row-centre scores", key="acc_row_centre", help=H["acc_row_centre"]),
                 attention_weighted=c[2].checkbox("Weight by attention", key="acc_attn_weighted", help=H["acc_attn_weighted"]))
    c = st.columns([1, 2, 1])
    executor = c[0].selectbox("Executor", ["local", "ray"], key="acc_executor",
                              help="ray: the shards run on Ray workers; both write identical shards")
    if executor == "ray":
        flags.update(ray_address=c[1].text_input("Ray address (blank: $RAY_ADDRESS, else a local cluster)",
                                                 key="acc_ray_address", help=H["acc_ray_address"]).strip(),
                     ray_workers=int(c[2].number_input("Ray workers (0 = one per GPU or CPU)", min_value=0, value=0,
                                                       key="acc_ray_workers", help=H["acc_ray_workers"])))
    cfg = None
    try:
        what, text = "Heads", heads_text
        heads = tuple(int(h) for h in text.replace(" ", "").split(",") if h)
        what, text = "Layers", layers_text
        layers = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        st.error(f"{what} must be whole numbers separated by commas, got {text!r}.")
    else:
        dataset = {"demo": "demo", "file": location, "disk": f"disk:{location}", "hf": f"hf:{location}"}[source]
        try:
            if not model:
                raise ValueError("give a model name")
            cfg = AccumulateFRAConfig(
                model=model, q_saes=tuple(q_saes), k_saes=tuple(k_saes), layer=layer, layers=layers, heads=heads,
                statistics=statistics,
                dataset=dataset, text_column=column, split=split, n_samples=n_samples, context_length=context,
                batch_size=batch, shard_size=shard, top_m=top_m, examples_per_pair=examples,
                device=ui.device_choice(), seed=seed, executor=executor, **work, **flags)
        except ValueError as exc:
            ui.show_error(exc, "Invalid settings")
    if cfg is not None:
        c = st.columns([1, 1, 3])
        c[1].download_button("Config YAML", cfg.to_yaml(), file_name=f"accumulate-{cfg.config_hash()[:8]}.yaml",
                             mime="application/x-yaml", key="acc_yaml", help=H["acc_yaml"], on_click="ignore")
        c[2].caption("The YAML runs unchanged headless: `python -m fra_core accumulate --config run.yaml --ingest`"
                     + (f" · estimated time {eta}" if (eta := ui_launch.estimate(cfg, ws)) else ""))
        with st.expander("Config YAML"):
            st.code(cfg.to_yaml(), language="yaml")
        if c[0].button("Launch", type="primary", key="acc_launch", help=H["acc_launch"]):
            try:
                if source != "demo" and not location:
                    raise ValueError("give the dataset's path or name")
                open_texts(cfg.dataset, cfg.text_column, cfg.split, cfg.seed, ws)  # fails fast, offline too
                ui_pickers.check_sae_refs(ws, list(cfg.q_saes) + list(cfg.k_saes))
                ui_launch.check_parts(cfg)  # in this process, before any job folder exists
                job_dir = jobs.launch_job(ws.jobs, KIND, cfg, owner=ui_auth.launcher())
            except ValueError as exc:
                ui.show_error(exc, "Not launched")
            else:
                st.session_state["acc_job"] = job_dir.name
                st.success(f"Launched job **{job_dir.name}**: it runs in its own process (closing this tab does "
                           "not stop it); its shards appear on the Pair tables page as they finish.")


# ----------------------------------------------------------------------------- jobs and runs
def job_detail(job: jobs.JobInfo | None, run: pd.Series | None) -> None:
    if job is not None:
        status = ui.job_progress(job.path)
        meta = jobs.read_json(job.path / "job.json", {}) or {}
        st.caption(f"created {meta.get('created', '—')} · started {status.get('started', '—')} · "
                   f"updated {status.get('updated', '—')} · wall time {fmt_seconds(status.get('wall_s'))} · "
                   f"folder `{job.path}`")
        ui_acc_form.run_notes(job.path)
        c = st.columns(3)
        if status.get("state") in ACTIVE and c[0].button("Cancel", key="acc_cancel", help=H["acc_cancel"]) \
                and ui_auth.allowed_on_job(job.path, "cancel"):
            jobs.cancel_job(job.path)
            st.info("Cancel requested: the job stops at its next progress check (its complete shards are kept).")
        if status.get("state") in ("died", "cancelled", "failed") and c[1].button("Resume", key="acc_resume", help=H["acc_resume"]) \
                and ui_auth.allowed_on_job(job.path, "resume"):
            try:
                jobs.start_process(job.path)
                st.info("Resumed: samples of complete shards are skipped, so none is counted twice.")
            except ValueError as exc:  # JobBusy: another resume won the race
                ui.show_error(exc, "Not resumed")
        if (config := job.path / "config.yaml").is_file():
            with st.expander("Config"):
                st.code(config.read_text(encoding="utf-8"), language="yaml")
        log = job.path / "log.txt"
        if log.is_file():
            with st.expander("Log (last lines)"):
                st.code("\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]) or "(empty)")
    if run is not None:
        c = st.columns([1, 2])
        sure = c[1].checkbox(f"Yes, delete run #{int(run['id'])} from the database", key="acc_delete_sure", help=H["acc_delete_sure"])
        if c[0].button("Delete run", key="acc_delete", help=H["acc_delete"], disabled=not sure) \
                and ui_auth.allowed(run.get("owner"), "delete", f"run #{int(run['id'])}"):
            try:
                with ui_store.get_store().write() as con:
                    delete_run(con, int(run["id"]))
                st.success(f"Deleted run #{int(run['id'])} (its job folder stays; it is not ingested again).")
            except (StoreError, StoreBusy) as exc:
                ui.show_error(exc)


any_active = any(j.state in ACTIVE for j in jobs.list_jobs(ws.jobs, KIND))


@st.fragment(run_every=2 if any_active else 10)
def jobs_panel() -> None:
    _, errors = ui_store.sync_jobs()
    for message in errors:
        st.warning(message)
    job_list = jobs.list_jobs(ws.jobs, KIND)
    try:
        runs = ui_store.runs()
    except (StoreError, StoreBusy) as exc:
        ui.show_error(exc, "Cannot read the database")
        return
    table = job_table(job_list, runs)
    if table.empty:
        st.info("No accumulation jobs yet: fill in the form above and launch one.")
        return
    st.dataframe(table, hide_index=True, width="stretch")
    names = list(table["job"])
    if st.session_state.get("acc_job") not in names:
        st.session_state.pop("acc_job", None)
    name = st.selectbox("Job / run", names, key="acc_job", help=H["acc_job"])
    job = next((j for j in job_list if j.job_id == name), None)
    match = runs.loc[runs["name"] == name]
    job_detail(job, None if match.empty else match.iloc[0])
    st.caption(f"Refreshed {_dt.datetime.now():%H:%M:%S} (every {2 if any_active else 10} s).")


st.subheader("Jobs and runs")
jobs_panel()

"""Restoration training and evaluation: launch a training job (live loss, cancel), compare a trained
model with the character n-gram baseline on held-out fragments, and restore characters in a line."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from fra_core import jobs
from fra_core.restoration.dataset import list_restoration_datasets
from fra_core.restoration.runs import list_runs
from ui import auth as ui_auth
from ui.auth import page_gate
from ui.common import device_choice, fmt_age, job_progress, show_error, workspace

page_gate(__file__)  # sign-in and role, on every run (see ui.auth)

KIND = "train-restoration"
ws = workspace()


@st.cache_resource(show_spinner="Loading checkpoint…", max_entries=4)
def load_run(path: str, stamp: float):
    from fra_core.atf import CharVocab
    from fra_core.restoration.model import load_checkpoint

    model, payload = load_checkpoint(path)
    return model, CharVocab.from_json(payload["vocab"])


def launch(values: dict) -> None:
    from fra_core.restoration.train import TrainRestorationConfig

    try:
        cfg = TrainRestorationConfig(**values).validate()
        for path in (ws.root / "restoration" / cfg.name, ws.models / cfg.name):
            if path.exists():
                raise ValueError(f"{path} already exists; choose another name")
        job_dir = jobs.launch_job(ws.jobs, KIND, cfg, owner=ui_auth.launcher())
    except (ValueError, TypeError) as exc:
        show_error(exc, "Could not start training")
        return
    st.session_state["restoration_job"] = job_dir.name
    st.session_state["restoration_yaml"] = cfg.to_yaml()
    st.success(f"Started training job {job_dir.name}")


def train_form() -> None:
    datasets = list_restoration_datasets(ws)
    if not datasets:
        st.info("No restoration dataset yet: build one on the Restoration data page.")
        return
    with st.form("train_restoration"):
        c = st.columns(4)
        dataset = c[0].selectbox("Dataset", datasets, help="A dataset built on the Restoration data page")
        name = c[1].text_input("Save as", "restorer", help="Name of the checkpoint folder (and of the converted workspace model)")
        layers = c[2].number_input("Layers", 1, 48, 4, help="Transformer blocks")
        d_model = c[3].number_input("d_model", 16, 4096, 128, step=16, help="Residual width")
        heads = c[0].number_input("Heads", 1, 64, 4, help="Attention heads per layer (d_model must divide by it)")
        batch = c[1].number_input("Batch size", 1, 1024, 16, help="Lines per training step")
        lr = c[2].number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f",
                               help="Peak AdamW rate (warm-up, then decay to the last step or the budget)")
        steps = c[3].number_input("Max steps", 1, 10**7, 2000, help="Training stops here, or earlier at the time budget")
        budget = c[0].number_input("Time budget (s, 0 = none)", 0, 10**6, 0,
                               help="Stop after this many wall-clock seconds (the job says so, after how many steps)")
        order = c[1].number_input("n-gram baseline order", 0, 8, 6, help="0: choose 3..7 on the validation split")
        quirk = c[2].checkbox("Seed RoPE quirk", help="train with the seed's RoPE slicing quirk (see docs)")
        threads = c[3].number_input("CPU threads (0 = default)", 0, 256, 0,
                                    help="1 is often fastest for small models on a busy machine")
        convert = c[0].checkbox("Convert to TransformerLens after training", value=True,
                             help="Also save a verified workspace model (for the Models and FRA pages)")
        go = st.form_submit_button("Train", type="primary", help="Start a training job (runs in its own process)")
    if go:
        launch(dict(dataset=dataset, name=name.strip(), n_layers=int(layers), d_model=int(d_model),
                    n_heads=int(heads), batch_size=int(batch), lr=float(lr), max_steps=int(steps),
                    time_budget_s=float(budget), ngram_order=int(order), rope_quirk=quirk, convert=convert,
                    threads=int(threads), device=device_choice()))
    if st.session_state.get("restoration_yaml"):
        st.download_button("Download config (for python -m fra_core train-restoration --config …)",
                           st.session_state["restoration_yaml"], file_name="train_restoration.yaml")


def loss_chart(rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    cols = [c for c in ("loss", "val_loss", "val_top1") if c in df]
    if df.empty or not cols:
        st.caption("No metrics yet.")
        return
    st.line_chart(df.set_index("step")[cols], height=220)


@st.fragment(run_every=2)
def job_panel() -> None:
    entries = jobs.list_jobs(ws.jobs, KIND)
    if not entries:
        st.caption("No training jobs yet.")
        return
    names = [j.job_id for j in entries]
    current = st.session_state.get("restoration_job")
    pick = st.selectbox("Job", names, index=names.index(current) if current in names else 0, key="restoration_pick",
                        help="A training job of this workspace")
    job = entries[names.index(pick)]
    status = job_progress(job.path, unit="steps")
    loss_chart(jobs.read_metrics(job.path))
    if status.get("state") in ("running", "queued") and st.button("Cancel job", help="Stop the job at its next step") \
            and ui_auth.allowed_on_job(job.path, "cancel"):
        jobs.cancel_job(job.path)
    if status.get("state") == "done":
        result = status.get("result", {})
        reason = status.get("stop_reason") or (result.get("train") or {}).get("stop_reason")
        if reason:  # e.g. "stopped by the time budget (60 s wall-clock) after 78 of 2,000 steps"
            st.success(f"Training {reason}; evaluated on the test split and saved as **{result.get('name')}**.",
                       icon=":material/check_circle:")
        st.caption(f"checkpoint `{result.get('checkpoint')}` · model `{result.get('converted')}` · "
                   f"max |Δlogit| {result.get('max_abs_dlogit', float('nan')):.2e}")
        show_new_model(job.job_id, result.get("name"))


def show_new_model(job_id: str, name: str | None) -> None:
    """A job that finished since the page last looked points the Evaluate tab at its model and reruns the
    whole page (the job panel is a fragment: without this the Evaluate tab kept the old model's figures)."""
    if not name or st.session_state.get("restoration_evaluated") == job_id:
        return
    st.session_state["restoration_evaluated"] = job_id
    if name in [r.name for r in list_runs(ws)]:
        st.session_state["restoration_eval_pick"] = name
        st.rerun(scope="app")


def evaluation(run) -> None:
    from fra_core.restoration.evaluate import EvalReport

    ev = run.result.get("eval")
    if not ev:
        st.info("This run has no evaluation.")
        return
    report = EvalReport(**ev)
    m = st.columns(4)
    m[0].metric("top-1 (model)", f"{report.model['top1']:.3f}",
                f"{report.model['top1'] - report.ngram['top1']:+.3f} vs n-gram")
    m[1].metric("top-5 (model)", f"{report.model['top5']:.3f}")
    m[2].metric("CER (model)", f"{report.model['cer']:.3f}")
    m[3].metric("held-out", f"{report.n_fragments} fragments", f"{report.model['masked_chars']} masked chars", "off")
    st.dataframe(pd.DataFrame(report.table()), hide_index=True, width="stretch")


def restore_box(run) -> None:
    from fra_core.restoration.evaluate import restore_text

    text = st.text_area("Line to restore (mark each missing character with _)", "a-na {d}UTU be-__-ia",
                        key="restore_text", help="Each _ is one missing character")
    atf = st.checkbox("The line is raw ATF (clean it first)", value=False, help="Apply the dataset cleaning (ATF markup removed) first")
    k = st.slider("Candidates per character", 1, 10, 5, help="Top-k characters shown for each gap")
    if not text.strip():
        return
    try:
        model, vocab = load_run(str(run.checkpoint), run.checkpoint.stat().st_mtime)
        out = restore_text(model, vocab, text, top_k=k, atf=atf)
    except ValueError as exc:
        show_error(exc)
        return
    st.markdown(f"**Best restoration:** `{out['best']}`")
    rows = [{"position": p["index"], **{f"#{i + 1}": f"{c} ({q:.2f})" for i, (c, q) in enumerate(p["candidates"])}}
            for p in out["positions"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


st.title("Restoration model")
train_tab, eval_tab = st.tabs(["Train", "Evaluate & restore"])
with train_tab:
    train_form()
    job_panel()
with eval_tab:
    runs = list_runs(ws)
    if not runs:
        st.info("No trained restoration model yet.")
    else:
        names = [r.name for r in runs]
        if st.session_state.get("restoration_eval_pick") not in names:
            st.session_state.pop("restoration_eval_pick", None)
        run = runs[names.index(st.selectbox("Trained model", names, key="restoration_eval_pick",
                                            help="A trained restoration model; a job that just finished "
                                                 "selects its own model here."))]
        trained = run.result.get("train") or {}
        how = trained.get("stop_reason") or f"{trained.get('steps', '?')} steps"
        st.caption(f"**{run.name}** · {how} · saved {fmt_age(run.checkpoint.stat().st_mtime)}")
        evaluation(run)
        st.subheader("Restore this line")
        restore_box(run)

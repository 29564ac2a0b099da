"""SAEs: train one with SAELens as a background job (live charts, cancel), and inspect trained or loaded
SAEs (sparsity, density, top contexts, pattern search, vocab projection, comparison across layers)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import auth as ui_auth
from ui import pickers as ui_pickers
from ui import sae as ui
from ui.auth import page_gate

page_gate(__file__)  # sign-in and role, on every run (see ui.auth)

ARCHS = ("topk", "standard", "batchtopk", "jumprelu")
HOOKS = ("blocks.{L}.ln1.hook_normalized", "blocks.{L}.hook_resid_pre", "blocks.{L}.attn.hook_z",
         "blocks.{L}.hook_mlp_out", "blocks.{L}.mlp.hook_post", "blocks.{L}.hook_resid_post")

st.title("Sparse autoencoders")
ws = ui.workspace()
train_tab, inspect_tab, compare_tab = st.tabs(["Train", "Inspect", "Compare"])


def launch(values: dict) -> None:
    from fra_core import jobs
    from fra_core.sae.loaders import hook_input_shape
    from fra_core.sae.train import TrainSAEConfig

    try:
        cfg = TrainSAEConfig(**values).validate()
        if (ws.saes / cfg.output_name).exists():
            raise ValueError(f"an SAE named {cfg.output_name!r} already exists; choose another name")
        model = ui.get_model(cfg.model)
        hook_input_shape(model, cfg.hook_name)  # unknown hook -> clear error before a job starts
        if cfg.context_size > model.cfg.n_ctx:
            raise ValueError(f"context size {cfg.context_size} exceeds the model's n_ctx={model.cfg.n_ctx}")
        job_dir = jobs.launch_job(ws.jobs, "train-sae", cfg, owner=ui_auth.launcher())
    except (ValueError, TypeError) as exc:
        st.error(str(exc))
        return
    st.session_state["sae_job"] = job_dir.name
    st.session_state["sae_yaml"] = cfg.to_yaml()
    st.success(f"Started training job {job_dir.name}")


with train_tab:
    with st.form("train_sae"):
        c1, c2, c3 = st.columns(3)
        model_ref = c1.text_input("Model", "demo", help="demo, a workspace model name, or gpt2-small")
        layer = c2.number_input("Layer", 0, 100, 1)
        hook_tpl = c3.selectbox("Hook point", HOOKS)
        arch = c1.selectbox("Architecture", ARCHS)
        d_sae = c2.number_input("d_sae (0 = expansion × d_in)", 0, 1 << 20, 768, step=64)
        expansion = c3.number_input("Expansion factor", 1, 256, 8)
        sparsity = c1.number_input("Sparsity coefficient (standard L1 / jumprelu L0)", 0.0, 1e4, 5.0)
        k = c2.number_input("k (topk / batchtopk)", 1, 4096, 4)
        tokens = c3.number_input("Training tokens", 1024, 10**10, 204_800, step=1024)
        lr = c1.number_input("Learning rate", 1e-6, 1.0, 3e-3, format="%.5f")
        batch = c2.number_input("Batch size (tokens)", 64, 1 << 16, 512, step=64)
        ctx = c3.number_input("Context size", 4, 8192, 64)
        dataset = c1.text_input("Dataset", "demo", help="demo, a .txt/.jsonl path or workspace dataset "
                                                        "name, disk:<saved HF dataset>, hf:<hub dataset>")
        n_texts = c2.number_input("Texts", 10, 10**7, 2000)
        name = c3.text_input("Save as", "my-sae")
        devices = ("auto", "cpu", "cuda", "mps")
        device = c1.selectbox("Device", devices, index=devices.index(ui.device_choice())
                              if ui.device_choice() in devices else 0)
        seed = c2.number_input("Seed", 0, 2**31 - 1, 0)
        submitted = st.form_submit_button("Train", type="primary")
    if submitted:
        launch(dict(model=model_ref.strip(), hook_name=hook_tpl.format(L=int(layer)), architecture=arch,
                    d_sae=int(d_sae), expansion_factor=int(expansion), sparsity_coefficient=float(sparsity),
                    k=int(k), training_tokens=int(tokens), lr=float(lr), train_batch_size_tokens=int(batch),
                    context_size=int(ctx), dataset=dataset.strip(), n_texts=int(n_texts), output_name=name.strip(),
                    device=device, seed=int(seed)))
    if st.session_state.get("sae_yaml"):
        st.download_button("Download config (for python -m fra_core train-sae --config …)",
                           st.session_state["sae_yaml"], file_name="train_sae.yaml")
    ui.job_panel()


def inspect_view(sae_ref: str, model_ref: str, dataset: str, n_texts: int) -> None:
    from fra_core.sae import inspect as si

    acts = ui.get_activations(sae_ref, model_ref, dataset, n_texts)
    sae, model = ui.get_sae(sae_ref), ui.get_model(model_ref)
    dead = si.dead_features(acts)
    m = st.columns(5)
    m[0].metric("hook", acts.hook_name.replace("blocks.", "L"))
    m[1].metric("mean L0", f"{acts.mean_l0:.2f}", f"{100 * acts.mean_l0 / acts.d_sae:.1f} % of d_sae", "off")
    m[2].metric("explained variance", f"{acts.explained_variance:.3f}")
    m[3].metric("dead features", f"{dead.size} / {acts.d_sae}")
    m[4].metric("tokens", acts.n_tokens)
    warning = si.sparsity_warning(acts.mean_l0, acts.d_sae)
    if warning:
        st.warning(warning, icon="⚠️")
    h1, h2, h3 = st.columns(3)
    h1.altair_chart(ui.bar_chart(si.l0_histogram(acts), "l0", "tokens", "L0 per token", "active features"),
                    width="stretch")
    h2.altair_chart(ui.histogram_chart(si.activation_histogram(acts), "Activation values", "log10(activation)"),
                    width="stretch")
    dens = si.feature_density(acts)
    alive = dens[dens["fires"] > 0]
    if len(alive):
        import numpy as np

        counts, edges = np.histogram(alive["log10_density"], bins=30)
        h3.altair_chart(ui.histogram_chart(pd.DataFrame({"bin_start": edges[:-1], "bin_end": edges[1:],
                                                         "count": counts}), "Feature density (alive)",
                                           "log10(firing fraction)"), width="stretch")
    if dead.size:
        with st.expander(f"{dead.size} dead features (never fire on these texts)"):
            st.write(", ".join(map(str, dead[:2000].tolist())))

    st.subheader("Feature")
    top_feature = int(alive.sort_values("fires", ascending=False)["feature"].iloc[0]) if len(alive) else 0
    f = int(st.number_input("Feature id", 0, acts.d_sae - 1, top_feature))
    c1, c2 = st.columns([3, 2])
    c1.markdown("**Top-activating contexts**")
    c1.dataframe(si.top_contexts(acts, f, k=15), hide_index=True, width="stretch")
    c2.markdown("**Decoder → vocabulary (direct logit effect)**")
    try:
        c2.dataframe(si.vocab_projection(sae, model, f, k=10), hide_index=True, width="stretch")
    except ValueError as exc:
        c2.info(str(exc))

    st.subheader("Find features by token pattern")
    p1, p2, p3 = st.columns(3)
    pattern = p1.text_input("Pattern", "", placeholder="e.g. am")
    mode = p2.selectbox("Match", ("suffix", "substring", "exact", "prefix", "regex"))
    which = p3.selectbox("Token", ("current token", "previous token"))
    if pattern:
        try:
            st.dataframe(si.search_features(acts, pattern, mode, offset=int(which == "previous token")),
                         hide_index=True, width="stretch")
        except ValueError as exc:
            st.error(str(exc))


with inspect_tab:
    from fra_core.sae import list_saes

    entries = list_saes(ws)
    if not any(e.name.startswith("demo-") for e in entries) and st.button("Create the demo SAEs"):
        from fra_core import jobs
        from fra_core.sae.demo import DEMO_SAE_CONFIGS, ensure_demo_saes

        made = ensure_demo_saes(ws, train_if_missing=False)  # copies the shipped ones
        for name, cfg in DEMO_SAE_CONFIGS.items():
            if name not in made:  # not shipped: train it as a job (progress in the Train tab)
                st.session_state["sae_job"] = jobs.launch_job(ws.jobs, "train-sae", cfg,
                                                              owner=ui_auth.launcher()).name
                st.info(f"Training {name} in the background; follow it in the Train tab.")
        entries = list_saes(ws)
    with st.expander("Import an SAE from the Hugging Face cache (SAELens registry) into the workspace"):
        ui_pickers.import_panel()
        entries = list_saes(ws)
    if entries:
        st.dataframe(pd.DataFrame([e.to_row() for e in entries]), hide_index=True, width="stretch")
    names = [e.name for e in entries]
    i1, i2 = st.columns(2)
    picked = i1.selectbox("SAE", names + ["other…"]) if names else "other…"
    sae_ref = i1.text_input("SAE reference", placeholder="ckkissane:/path/file.pt, release:<release>/<id>, or a "
                            "folder") if picked == "other…" else picked
    model_ref = i2.text_input("Model", ui.default_model_for(sae_ref, ws) if sae_ref else "demo", key=f"m-{sae_ref}")
    dataset = i1.text_input("Texts", "demo", key="inspect_texts")
    n_texts = int(i2.number_input("Number of texts", 1, 100_000, 200))
    if sae_ref and model_ref:
        try:
            inspect_view(sae_ref.strip(), model_ref.strip(), dataset.strip(), n_texts)
        except ValueError as exc:
            st.error(str(exc))
        except Exception as exc:  # noqa: BLE001 - a page shows a message, never a traceback
            st.error(f"Could not inspect {sae_ref!r} on {model_ref!r}: {type(exc).__name__}: {exc}")

with compare_tab:
    from fra_core.sae import list_saes as _list

    names = [e.name for e in _list(ws)]
    chosen = st.multiselect("SAEs to compare", names, default=names[:2])
    c_texts = st.text_input("Texts", "demo", key="compare_texts")
    if chosen and st.button("Compare"):
        from fra_core.sae.inspect import compare_saes

        try:
            results = {n: ui.get_activations(n, ui.default_model_for(n, ws), c_texts.strip(), 100) for n in chosen}
            st.dataframe(compare_saes(results), hide_index=True, width="stretch")
        except Exception as exc:  # noqa: BLE001 - a page shows a message, never a traceback
            st.error(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}")

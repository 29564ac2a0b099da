"""Pickers that only offer what fits: SAE sides that fit the chosen model and layer (workspace SAEs and
SAELens registry SAEs found in the local Hugging Face cache, upstream hook_z SAEs of several layers as one
choice), the accumulation form's SAE choices, saved datasets, and per-model widget state.

Fit is decided from configs (hook name and d_in against the model's config), never by a forward pass.
torch-heavy modules are imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from ui import common as ui

DEMO_SAE_NAMES = ("demo-l1-ln1", "demo-l0-hook-z", "demo-l0-ln1")  # shipped with the demo model

CUSTOM = "custom refs…"  # the side choice that shows a text field for typed SAE refs
HEAD_INPUT = ("ln1.hook_normalized", "hook_resid_pre")
D_MODEL_HOOKS = (*HEAD_INPUT, "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
KEEP_ON_MODEL_CHANGE = ("_model", "_model_seen", "_goto", "_pending")
# upstream dictionaries (fra_core.fra.upstream): hook ending → the kind shown in the picker
UPSTREAM_HOOKS = {"attn.hook_z": "hook_z", "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out"}


def upstream_kind(hook: str) -> str | None:
    return next((k for suffix, k in UPSTREAM_HOOKS.items() if hook.endswith(suffix)), None)


@dataclass(frozen=True)
class Candidate:
    ref: str     # what load_sae takes
    name: str    # short display name
    group: str   # "workspace" or the registry release
    hook: str
    d_in: int


def hook_width(model, hook: str) -> int | None:
    """The SAE input width of `hook` on `model` from its config (head axes flattened), None if unknown."""
    if hook not in model.hook_dict:
        return None
    if hook.endswith("attn.hook_z"):
        return model.cfg.n_heads * model.cfg.d_head
    return model.cfg.d_model if hook.endswith(D_MODEL_HOOKS) else None


@st.cache_data(show_spinner=False, ttl=30)
def _registry(model_ref: str | None, cache: str) -> list:
    """Cached registry SAEs (of `model_ref`; all when None); `cache` keys the result on the cache folder."""
    from fra_core.sae.registry import cached_registry_saes

    return cached_registry_saes(model_ref, Path(cache))


def candidates(model, model_ref: str) -> list[Candidate]:
    """Workspace SAEs (made for `model_ref`, or of unknown model) and cached registry SAEs of `model_ref`
    whose hook exists on `model` with their d_in as its width."""
    from fra_core.sae import list_saes
    from fra_core.sae.registry import hub_cache_dir

    found = [Candidate(e.name, e.name, "workspace", e.hook_name or "", e.d_in or 0)
             for e in list_saes(ui.workspace()) if e.error is None and e.model in (None, model_ref)]
    found += [Candidate(e.ref, f"{e.release}/{e.sae_id}", e.release, e.hook_name, e.d_in)
              for e in _registry(model_ref, str(hub_cache_dir()))]
    return [c for c in found if c.hook and hook_width(model, c.hook) == c.d_in]


def _layers_label(layers: list[int]) -> str:
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    return f"L{layers[0]}–{layers[-1]}" if contiguous and len(layers) > 1 else ", ".join(f"L{l}" for l in layers)


def side_options(model, layer: int, model_ref: str) -> dict[str, tuple[str, ...]]:
    """Choices for one side of `layer`: head-input SAEs of that layer (ln1.hook_normalized, hook_resid_pre or
    the previous block's hook_resid_post, the same stream), then per source (the workspace, each
    registry release) and kind (hook_z, attn_out, mlp_out) all its upstream SAEs of layers < `layer` as one
    combined choice, and each attention group with each MLP group (the whole residual stream in features)."""
    from fra_core.sae.profiles import hook_layer

    opts: dict[str, tuple[str, ...]] = {}
    upstream: dict[tuple[str, str], dict[int, Candidate]] = {}
    for c in candidates(model, model_ref):
        kind = upstream_kind(c.hook)
        if c.hook in (*(f"blocks.{layer}.{h}" for h in HEAD_INPUT), f"blocks.{layer - 1}.hook_resid_post"):
            opts[f"{c.name}  ({c.hook})"] = (c.ref,)
        elif kind is not None and (hook_layer(c.hook) or 0) < layer:
            upstream.setdefault((c.group, kind), {}).setdefault(hook_layer(c.hook), c)
    groups = {}
    for (group, kind), by_layer in upstream.items():
        layers = sorted(by_layer)
        names = ", ".join(by_layer[l].name for l in layers) if group == "workspace" else \
            f"{group} {_layers_label(layers)}"
        groups[(group, kind)] = (names, tuple(by_layer[l].ref for l in layers))
        opts[f"upstream {kind}: {names}"] = groups[(group, kind)][1]
    for (_, ka), (na, ra) in groups.items():
        for (_, km), (nm, rm) in groups.items():
            if ka != "mlp_out" and km == "mlp_out":
                opts[f"upstream {ka} + mlp_out: {na} + {nm}"] = ra + rm
    return opts


def reset_on_model_change(prefix: str, ref: str, only: tuple[str, ...] | None = None) -> None:
    """Widgets whose meaning depends on the model (text, sides, layer, cell, sources…; `only` these key
    suffixes when given) start from the new model's defaults when the model changes, so what a page shows
    is what it computes on."""
    seen = st.session_state.get(f"{prefix}_model_seen")
    if seen is not None and seen != ref:
        keep = {f"{prefix}{k}" for k in KEEP_ON_MODEL_CHANGE}
        drop = [k for k in st.session_state if str(k).startswith(f"{prefix}_") and k not in keep] if only is None \
            else [f"{prefix}{k}" for k in only if f"{prefix}{k}" in st.session_state]
        for key in drop:
            del st.session_state[key]
    st.session_state[f"{prefix}_model_seen"] = ref


# ----------------------------------------------------------------------------- accumulation form
def accumulation_saes(model_ref: str) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """(single SAE refs, upstream groups) for the accumulation form, without loading the model: workspace
    SAEs made for `model_ref` (or of unknown model) and cached registry SAEs of `model_ref`; a group is
    label → every cached hook_z SAE of one release (the job keeps those of layers < its layer)."""
    from fra_core.sae import list_saes
    from fra_core.sae.registry import hub_cache_dir

    singles = [e.name for e in list_saes(ui.workspace()) if e.error is None and e.model in (None, model_ref)]
    groups: dict[str, list] = {}
    for e in _registry(model_ref, str(hub_cache_dir())):
        singles.append(e.ref)
        if upstream_kind(e.hook_name) is not None:
            groups.setdefault((e.release, upstream_kind(e.hook_name)), []).append(e)
    return singles, {f"{rel}: {kind} of every layer < the run's layer": tuple(e.ref for e in es)
                     for (rel, kind), es in groups.items()}


def expand_groups(chosen: list[str], groups: dict[str, tuple[str, ...]], layer: int) -> list[str]:
    """Replace each chosen group label by its refs of layers < `layer` (in layer order)."""
    import re

    out = []
    for item in chosen:
        if item not in groups:
            out.append(item)
            continue
        layered = [(int(m.group(1)), r) for r in groups[item] if (m := re.search(r"blocks\.(\d+)\.", r))]
        out += [r for l, r in sorted(layered) if l < layer]
    return out


def saved_datasets() -> list[str]:
    """Folders in the workspace's datasets/ that `datasets.save_to_disk` wrote (for `disk:<name>`)."""
    root = ui.workspace().root / "datasets"
    if not root.is_dir():
        return []
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / m).is_file() for m in markers))


def import_panel() -> None:
    """Import a SAELens registry SAE found in the local HF cache into the workspace, under a name."""
    from fra_core.sae.registry import hub_cache_dir, import_sae

    found = {e.ref: e for e in _registry(None, str(hub_cache_dir()))}
    if not found:
        st.caption(f"No SAELens registry SAE is in the Hugging Face cache ({hub_cache_dir()}); the README says "
                   "how to fill it on a machine with Hub access.")
        return
    c = st.columns([3, 2, 1])
    ref = c[0].selectbox("Cached registry SAE", list(found), key="sae_import_ref",
                         format_func=lambda r: f"{r}  ({found[r].model}, {found[r].hook_name}, d_sae {found[r].d_sae})")
    entry = found[ref]
    name = c[1].text_input("Workspace name", f"{entry.release}-{entry.sae_id}", key=f"sae_import_name_{ref}")
    if c[2].button("Import", key="sae_import"):
        try:
            path = import_sae(ref, name.strip(), ui.workspace(), model=entry.model)
        except ValueError as exc:
            ui.show_error(exc, "Not imported")
            return
        st.success(f"Imported {ref} as the workspace SAE **{name.strip()}** (`{path}`).")


def check_sae_refs(ws, refs: list[str]) -> None:
    """Each SAE ref resolves to something loadable (before a job is started for nothing)."""
    for ref in refs:
        if ref.startswith("release:"):
            continue  # SAELens release: resolved (and cached) by the job
        path = Path(ref.removeprefix("ckkissane:")).expanduser()
        if ref.startswith("ckkissane:") and not path.is_file():
            raise ValueError(f"SAE checkpoint not found: {path}")
        if ref.startswith("ckkissane:") or (ws.saes / ref).is_dir() or path.is_dir():
            continue
        if ref in DEMO_SAE_NAMES:
            from fra_core.sae.demo import ensure_demo_saes  # torch: only when launching

            if ref in ensure_demo_saes(ws, train_if_missing=False):
                continue
            raise ValueError(f"demo SAE {ref!r} is not built yet: build it on the SAEs page "
                             "(or `python scripts/build_demo_saes.py`) first")
        raise ValueError(f"SAE {ref!r} not found: not a workspace SAE (in {ws.saes}), a SAELens folder, "
                         "'ckkissane:<file.pt>' or 'release:<release>/<sae_id>'")

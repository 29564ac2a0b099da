"""Resolve a model reference: the built-in demo, a workspace folder, a path, or an official TL name.

Official names (``gpt2-small`` ...) go through the Hugging Face cache. Offline machines are common (CI,
air-gapped laptops, cluster nodes): when the weights are not cached and the Hub is unreachable we fail
within seconds with instructions, instead of letting the HF clients retry for tens of seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from fra_core import hub
from fra_core.devices import pick_device
from fra_core.models.demo import load_demo_model
from fra_core.models.local import CONFIG_FILE, ModelLoadError, load_local_model, read_meta
from fra_core.server import server_mode
from fra_core.workspace import Workspace

DEMO_REF = "demo"


@dataclass(frozen=True)
class ModelEntry:
    ref: str          # what load_model takes
    source: str       # "built-in" | "workspace" | "official"
    path: Path | None
    meta: dict[str, Any]


def list_models(workspace: Workspace | None = None) -> list[ModelEntry]:
    """The demo, then every model folder in the workspace (sorted), then GPT-2 Small (via the HF cache)."""
    workspace = workspace or Workspace.from_env()
    entries = [ModelEntry(DEMO_REF, "built-in", None, {"description": "2-layer attention-only demo model"})]
    for folder in sorted(workspace.models.iterdir()):
        if folder.is_dir() and not folder.name.startswith(".") and (folder / CONFIG_FILE).is_file():
            entries.append(ModelEntry(folder.name, "workspace", folder, read_meta(folder)))
    entries.append(ModelEntry("gpt2-small", "official", None, {"description": "needs the HF cache or Hub"}))
    return entries


# ----------------------------------------------------------------------------- official TL names
def official_repo_id(name: str) -> str:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError as exc:
        raise ModelLoadError(f"{name!r} is not the demo, a workspace model, nor an official "
                             f"TransformerLens model name") from exc


def is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def load_official_model(name: str, device: torch.device | str | None = None) -> HookedTransformer:
    repo_id = official_repo_id(name)
    device = pick_device(str(device) if device is not None else None)
    if is_cached(repo_id):
        with hub.forced_offline():
            try:
                return HookedTransformer.from_pretrained(name, device=str(device)).eval()
            except Exception as exc:  # partial cache: config present, weights missing
                raise ModelLoadError(f"{name} is only partly in the Hugging Face cache ({exc}); "
                                     f"refill it as described in the README") from exc
    if not hub.hub_reachable():
        raise ModelLoadError(
            f"{name} ({repo_id}) is not in the Hugging Face cache and the Hub is unreachable. "
            f"On a machine with access run: python -c \"from transformer_lens import HookedTransformer; "
            f"HookedTransformer.from_pretrained('{name}')\", then copy its ~/.cache/huggingface folder here "
            f"(or point HF_HOME at a filled cache)."
        )
    return HookedTransformer.from_pretrained(name, device=str(device)).eval()


def load_model(ref: str, device: torch.device | str | None = None,
               workspace: Workspace | None = None) -> HookedTransformer:
    """`ref`: "demo", a workspace model folder name, a path to a model folder, or an official TL name."""
    if not ref or not ref.strip():
        raise ModelLoadError("no model given")
    if ref == DEMO_REF:
        return load_demo_model(device)
    workspace = workspace or Workspace.from_env()
    if server_mode():  # a workspace model, a folder inside the workspace, or an official name
        from fra_core.paths import confine

        candidate = confine(ref, workspace.root, workspace.models, what="model")
        if not candidate.is_dir() and os.sep in ref:
            candidate = confine(ref, workspace.root, what="model folder")
        if candidate.is_dir() or os.sep in ref:
            return load_local_model(candidate, device)
        return load_official_model(ref, device)
    candidate = workspace.models / ref
    if candidate.is_dir():
        return load_local_model(candidate, device)
    if os.sep in ref or Path(ref).is_dir():
        return load_local_model(Path(ref), device)
    return load_official_model(ref, device)


def model_summary(model: HookedTransformer) -> dict[str, Any]:
    cfg = model.cfg
    return {
        "layers": cfg.n_layers, "d_model": cfg.d_model, "heads": cfg.n_heads, "d_head": cfg.d_head,
        "d_mlp": None if cfg.attn_only else cfg.d_mlp, "d_vocab": cfg.d_vocab, "n_ctx": cfg.n_ctx,
        "normalization": cfg.normalization_type, "positional_embedding": cfg.positional_embedding_type,
        "attention": cfg.attention_dir, "parameters": sum(p.numel() for p in model.parameters()),
    }

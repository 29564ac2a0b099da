"""Model loading and saving: the built-in demo, local workspace folders, official TransformerLens names.

A local model folder (written by `save_local_model`, read by `load_local_model`)::

    config.json        HookedTransformerConfig fields (dtype as a string, no device)
    model.safetensors  the HookedTransformer state dict, float32
    tokenizer/         a Hugging Face fast tokenizer (optional, needed for text input)
    meta.json          free-form provenance: origin, training/verification figures, ...

Official names (``gpt2-small`` ...) go through the Hugging Face cache. Offline machines are common (CI,
air-gapped laptops, cluster nodes): when the weights are not cached and the Hub is unreachable we fail
within seconds with instructions, instead of letting the HF clients retry for tens of seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from fra_core.atomic import atomic_folder
from fra_core.checks import read_json_file, state_dict_problem
from fra_core.devices import pick_device
from fra_core.server import server_mode
from fra_core.vocab_tokenizer import load_tokenizer, save_tokenizer
from fra_core.workspace import Workspace

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR, META_FILE = "config.json", "model.safetensors", "tokenizer", "meta.json"
DEMO_REF = "demo"


class ModelLoadError(ValueError):
    """A model that cannot be loaded; the message names the problem and the fix."""


# ----------------------------------------------------------------------------- config (de)serialisation
def cfg_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.init or f.name in ("device", "n_devices"):
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        out[f.name] = value
    return out


def cfg_from_json(data: dict[str, Any], device: torch.device | str = "cpu") -> HookedTransformerConfig:
    data = dict(data)
    if isinstance(data.get("dtype"), str):
        data["dtype"] = getattr(torch, data["dtype"])
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelLoadError(f"config.json has keys HookedTransformerConfig does not know: {unknown}")
    try:
        return HookedTransformerConfig(**data, device=str(device))
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelLoadError(f"config.json is not a valid HookedTransformerConfig: {exc}") from exc


# ----------------------------------------------------------------------------- local folders
def save_local_model(model: HookedTransformer, folder: str | Path, tokenizer=None,
                     meta: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a model folder atomically (temp folder, then rename). Refuses to overwrite unless asked."""
    folder = Path(folder)
    if overwrite and folder.exists() and not all((folder / f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE)):
        raise FileExistsError(f"refusing to overwrite {folder}: it is not a model folder (no {CONFIG_FILE} + "
                              f"{WEIGHTS_FILE}); choose another name")
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg_to_json(model.cfg), indent=1), encoding="utf-8")
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
                 if v.is_floating_point()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        tok = tokenizer if tokenizer is not None else model.tokenizer
        if tok is not None:
            save_tokenizer(tok, tmp / TOKENIZER_DIR)
        (tmp / META_FILE).write_text(json.dumps(meta or {}, indent=1, default=str), encoding="utf-8")
    return folder


def load_local_model(folder: str | Path, device: torch.device | str | None = None) -> HookedTransformer:
    """Load a folder written by `save_local_model`, validating every file with a clear message."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"model folder not found: {folder}")
    for needed in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / needed).is_file():
            raise ModelLoadError(f"{folder} is not a model folder: {needed} is missing")
    data = read_json_file(folder / CONFIG_FILE, ModelLoadError)
    if not isinstance(data, dict):
        raise ModelLoadError(f"{folder / CONFIG_FILE} must hold a JSON object, got {type(data).__name__}")
    device = pick_device(str(device) if device is not None else None)
    cfg = cfg_from_json(data, device="cpu")
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ModelLoadError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file: {exc}") from exc
    tokenizer = None
    if (folder / TOKENIZER_DIR / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(folder / TOKENIZER_DIR)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    expected = {k: v.shape for k, v in model.state_dict().items() if v.is_floating_point()}
    problem = state_dict_problem(expected, state, str(folder / WEIGHTS_FILE))
    if problem:
        raise ModelLoadError(problem)
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


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
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hugging Face Hub (or $HF_ENDPOINT) within `timeout_s`?

    Runs in a daemon thread because a DNS lookup is not covered by the socket timeout and can hang.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return bool(result and result[0])


@contextmanager
def _hf_offline():
    """Force the HF clients offline (they read the flag at import time, so patch the constants too)."""
    import huggingface_hub.constants as hf_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], hf_constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


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
        with _hf_offline():
            try:
                return HookedTransformer.from_pretrained(name, device=str(device)).eval()
            except Exception as exc:  # partial cache: config present, weights missing
                raise ModelLoadError(f"{name} is only partly in the Hugging Face cache ({exc}); "
                                     f"refill it as described in the README") from exc
    if not hub_reachable():
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
        from fra_core.demo import load_demo_model

        return load_demo_model(device)
    workspace = workspace or Workspace.from_env()
    if server_mode():  # a workspace model, a folder inside the workspace, or an official name
        from fra_core.paths import confine

        candidate = confine(ref, workspace.root, workspace.models, what="model")
        if not candidate.is_dir() and os.sep in ref:
            candidate = confine(ref, workspace.root, what="model folder")
        return load_local_model(candidate, device) if candidate.is_dir() or os.sep in ref \
            else load_official_model(ref, device)
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

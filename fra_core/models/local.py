"""Local model folders: a HookedTransformer with its tokenizer and provenance, written atomically.

A local model folder (written by `save_local_model`, read by `load_local_model`)::

    config.json        HookedTransformerConfig fields (dtype as a string, no device)
    model.safetensors  the HookedTransformer state dict, float32
    tokenizer/         a Hugging Face fast tokenizer (optional, needed for text input)
    meta.json          free-form provenance: origin, training/verification figures, ...
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from fra_core.atomic import atomic_folder
from fra_core.checks import read_json_file, state_dict_problem
from fra_core.devices import pick_device
from fra_core.errors import FRAStudioError
from fra_core.models.tokenizers import load_tokenizer, save_tokenizer

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR, META_FILE = "config.json", "model.safetensors", "tokenizer", "meta.json"


class ModelLoadError(FRAStudioError):
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

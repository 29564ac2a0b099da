"""Load SAEs from every format we meet, and check that an SAE fits a model.

Formats (`load_sae(ref)`):

- a workspace SAE name (``$FRA_WORKSPACE/saes/<name>/``) or a SAELens disk folder: ``cfg.json`` +
  ``sae_weights.safetensors`` (what `fra_core.sae.train` writes, plus our ``fra_meta.json``);
- ``release:<release>/<sae_id>``: a SAELens pretrained release through the Hugging Face cache. Offline
  (``HF_HUB_OFFLINE=1`` or Hub unreachable) we read the cache only and fail at once if it lacks the files;
- ``ckkissane:<path>.pt``: the attention-output SAEs of ckkissane (GPT-2 Small, ``hook_z``): a torch state
  dict ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` (unit rows), ``b_enc [d_sae]``, ``b_dec [d_in]``
  (fp32) with ``<name>_cfg.json`` beside it (``act_name``, ``act_size``, ``dict_size``, ``layer``,
  ``model_name``, ``seq_len`` ...). The SAE reads ``blocks.L.attn.hook_z`` flattened head-major
  ([head_index, d_head] -> head_index * d_head) and encodes ``relu((x - b_dec) @ W_enc + b_enc)`` — the
  same as SAELens's ``connor_rob_hook_z`` conversion (a standard SAE with ``reshape_activations="hook_z"``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fra_core.checks import read_json_file
from fra_core.errors import FRAStudioError
from fra_core.server import server_mode
from fra_core.workspace import Workspace

CFG_FILE, WEIGHTS_FILE, META_FILE = "cfg.json", "sae_weights.safetensors", "fra_meta.json"
CKKISSANE_PREFIX, RELEASE_PREFIX = "ckkissane:", "release:"
CKKISSANE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")


class SAELoadError(FRAStudioError):
    """An SAE that cannot be loaded; the message names the file and the problem."""


class SAECompatibilityError(FRAStudioError):
    """An SAE (or SAE config) that does not fit a model: unknown hook, or d_in not the hook's width."""


# ----------------------------------------------------------------------------- hooks and shapes
def hook_input_shape(model, hook_name: str) -> tuple[int, ...]:
    """Trailing shape of `hook_name` on `model` (after [batch, pos]); raises SAECompatibilityError.

    Runs the model on a single token, stopping after the hook's block.
    """
    if hook_name not in model.hook_dict:
        near = [h for h in model.hook_dict if h.split(".")[-1] == hook_name.split(".")[-1]][:4]
        hint = f"; hooks with that ending: {near}" if near else ""
        raise SAECompatibilityError(
            f"hook {hook_name!r} does not exist on this model ({model.cfg.n_layers} layers){hint}")
    tokens = torch.zeros((1, 1), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook_name])
    return tuple(cache[hook_name].shape[2:])


def hook_width(model, hook_name: str) -> int:
    """The SAE input width for a hook: hooks with a head axis are flattened head-major."""
    return math.prod(hook_input_shape(model, hook_name))


def _mlp_input_alias(model, hook: str) -> str:
    """``blocks.l.mlp.hook_in`` (TransformerBridge naming, e.g. mwhanna transcoders) is the MLP's input; on a
    HookedTransformer the hook of the same width is ``blocks.l.ln2.hook_normalized`` (or ``hook_resid_mid``)."""
    parts = hook.split(".")
    if hook in model.hook_dict or len(parts) != 4 or parts[0] != "blocks" or parts[2:] != ["mlp", "hook_in"]:
        return hook
    for alias in (f"blocks.{parts[1]}.ln2.hook_normalized", f"blocks.{parts[1]}.hook_resid_mid"):
        if alias in model.hook_dict:
            return alias
    return hook


def check_sae_fits_model(sae, model) -> str:
    """Check the SAE's hook exists on `model` and that d_in equals the hook's width (a transcoder's output
    hook and d_out too); returns the (input) hook."""
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise SAECompatibilityError("the SAE does not record its hook name (cfg.metadata.hook_name)")
    checks = [(hook, _mlp_input_alias(model, hook), "d_in", sae.cfg.d_in)]
    if hasattr(sae.cfg, "d_out") and getattr(sae.cfg.metadata, "hook_name_out", None):
        out = sae.cfg.metadata.hook_name_out
        checks.append((out, out, "d_out", sae.cfg.d_out))
    for name, actual, what, dim in checks:
        shape = hook_input_shape(model, actual)
        width = math.prod(shape)
        if dim != width:
            raise SAECompatibilityError(
                f"SAE {what}={dim} does not match hook {name!r} on this model: its activations are "
                f"{list(shape)} (width {width})")
    return hook


def sae_input(sae, act: torch.Tensor) -> torch.Tensor:
    """Bring a hook activation ``[batch, pos, *hook_shape]`` into the shape `sae.encode` takes.

    A hook_z SAE (``reshape_activations == "hook_z"``) flattens ``[head_index, d_head]`` itself; any other
    SAE gets ``[batch, pos, d_in]`` (head axes flattened head-major here).
    """
    if getattr(sae.cfg, "reshape_activations", "none") == "hook_z":
        if act.ndim < 4:
            raise SAECompatibilityError(f"hook_z SAE needs [batch, pos, head_index, d_head], got {list(act.shape)}")
        return act
    return act.reshape(*act.shape[:2], -1)


# ----------------------------------------------------------------------------- SAELens disk folders
def _check_weight_shapes(state: dict[str, torch.Tensor], d_in: int, d_sae: int, path: Path) -> None:
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if name in state and tuple(state[name].shape) != shape:
            raise SAELoadError(f"{path}: {name} has shape {list(state[name].shape)}, the config "
                               f"(d_in={d_in}, d_sae={d_sae}) implies {list(shape)}")


def load_sae_folder(folder: str | Path, device: str = "cpu"):
    """Load a SAELens disk folder (``cfg.json`` + ``sae_weights.safetensors``) with clear errors."""
    from sae_lens import SAE
    from safetensors import safe_open

    folder = Path(folder)
    if not folder.is_dir():
        raise SAELoadError(f"SAE folder not found: {folder}")
    cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise SAELoadError(f"{folder} is not a SAELens SAE folder: {path.name} is missing")
    cfg = read_json_file(cfg_path, SAELoadError)
    if not isinstance(cfg, dict) or not {"d_in", "d_sae"} <= set(cfg):
        raise SAELoadError(f"{cfg_path} is not a SAELens config (needs d_in, d_sae, architecture)")
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as fh:
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise SAELoadError(f"{weights_path} is not a readable safetensors file "
                           f"({type(exc).__name__}: {exc})") from exc
    _check_weight_shapes(state, int(cfg["d_in"]), int(cfg["d_sae"]), weights_path)
    try:
        return SAE.load_from_disk(str(folder), device=str(device))
    except Exception as exc:
        raise SAELoadError(f"SAELens could not load {folder}: {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- ckkissane hook_z files
def ckkissane_cfg_path(pt_path: str | Path) -> Path:
    """``<name>.pt`` -> ``<name>_cfg.json`` (the rule SAELens's connor_rob_hook_z loader uses)."""
    pt_path = Path(pt_path)
    return pt_path.with_name(str(pt_path.name).split(".pt")[0] + "_cfg.json")


def ckkissane_cfg_dict(old: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """The SAELens config for a ckkissane cfg json (mirrors `get_connor_rob_hook_z_config_from_hf`)."""
    return {
        "architecture": "standard", "d_in": int(old["act_size"]), "d_sae": int(old["dict_size"]),
        "dtype": "float32", "device": device, "model_name": old.get("model_name", "gpt2-small"),
        "hook_name": old["act_name"], "hook_head_index": None, "activation_fn": "relu",
        "apply_b_dec_to_input": True, "finetuning_scaling_factor": False, "sae_lens_training_version": None,
        "prepend_bos": True, "dataset_path": "Skylion007/openwebtext",
        "context_size": int(old.get("seq_len", 128)), "normalize_activations": "none",
        "dataset_trust_remote_code": True, "reshape_activations": "hook_z",
    }


def load_ckkissane(pt_path: str | Path, device: str = "cpu"):
    """Load a ckkissane attention-output SAE (``<name>.pt`` + ``<name>_cfg.json``) as a SAELens SAE."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

    pt_path = Path(pt_path)
    cfg_path = ckkissane_cfg_path(pt_path)
    if not pt_path.is_file():
        raise SAELoadError(f"ckkissane SAE weights not found: {pt_path}")
    if not cfg_path.is_file():
        raise SAELoadError(f"ckkissane SAE config not found: {cfg_path} (expected beside {pt_path.name})")
    old = read_json_file(cfg_path, SAELoadError)
    missing = [k for k in ("act_name", "act_size", "dict_size") if not isinstance(old, dict) or k not in old]
    if missing:
        raise SAELoadError(f"{cfg_path} lacks the keys {missing}")
    try:
        state = torch.load(str(pt_path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SAELoadError(f"{pt_path} is not a readable torch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or set(CKKISSANE_KEYS) - set(state):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise SAELoadError(f"{pt_path} must hold {list(CKKISSANE_KEYS)}, found {found}")
    d_in, d_sae = int(old["act_size"]), int(old["dict_size"])
    _check_weight_shapes(state, d_in, d_sae, pt_path)
    if tuple(state["b_enc"].shape) != (d_sae,):
        raise SAELoadError(f"{pt_path}: b_enc has shape {list(state['b_enc'].shape)}, expected [{d_sae}]")
    cfg_dict = handle_config_defaulting(ckkissane_cfg_dict(old, str(device)))
    sae = SAE.from_dict(cfg_dict)
    sae.load_state_dict({k: state[k].to(torch.float32) for k in CKKISSANE_KEYS})
    return sae.to(device)


# ----------------------------------------------------------------------------- pretrained releases
def load_release(release: str, sae_id: str, device: str = "cpu"):
    """A SAELens pretrained release through the HF cache; offline it fails at once if files are missing."""
    from sae_lens import SAE

    from fra_core import hub

    try:
        with hub.forced_offline():
            return SAE.from_pretrained(release, sae_id, device=str(device))
    except Exception as exc:  # noqa: BLE001 - not cached (or not a release): decide below
        cached_error = exc
    if isinstance(cached_error, ValueError) and "not found" in str(cached_error):
        raise SAELoadError(f"SAELens release {release!r}/{sae_id!r}: {cached_error}") from cached_error
    if not hub.hub_reachable():
        raise SAELoadError(
            f"SAELens release {release}/{sae_id} is not in the Hugging Face cache and the Hub is unreachable "
            f"(offline). Load it once on a machine with access and copy ~/.cache/huggingface here "
            f"({type(cached_error).__name__})") from cached_error
    try:
        return SAE.from_pretrained(release, sae_id, device=str(device))
    except Exception as exc:
        raise SAELoadError(f"SAELens release {release}/{sae_id} failed to load: {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- entry point
def load_sae(ref: str, device=None, workspace: Workspace | None = None):
    """Load an SAE by reference (see the module docstring) and return a `sae_lens.SAE` in eval mode."""
    from fra_core.devices import pick_device

    if not ref or not str(ref).strip():
        raise SAELoadError("no SAE given")
    ref = str(ref).strip()
    dev = str(pick_device(str(device) if device is not None else None))
    if server_mode() and not ref.startswith(RELEASE_PREFIX):
        return _load_confined(ref, dev, workspace or Workspace.from_env())
    if ref.startswith(CKKISSANE_PREFIX):
        sae = load_ckkissane(ref[len(CKKISSANE_PREFIX):], dev)
    elif ref.startswith(RELEASE_PREFIX):
        release, _, sae_id = ref[len(RELEASE_PREFIX):].partition("/")
        if not release or not sae_id:
            raise SAELoadError(f"expected release:<release>/<sae_id>, got {ref!r}")
        sae = load_release(release, sae_id, dev)
    else:
        workspace = workspace or Workspace.from_env()
        candidate = workspace.saes / ref
        if candidate.is_dir():
            sae = load_sae_folder(candidate, dev)
        elif Path(ref).expanduser().is_dir():
            sae = load_sae_folder(Path(ref).expanduser(), dev)
        else:
            raise SAELoadError(f"no SAE {ref!r}: not a name in {workspace.saes}, not a folder, and not "
                               f"'ckkissane:<file.pt>' or 'release:<release>/<sae_id>'")
    return sae.eval()


def _load_confined(ref: str, dev: str, workspace: Workspace):
    """Server mode: a workspace SAE name, or a folder / ckkissane file inside the workspace."""
    from fra_core.paths import confine

    if ref.startswith(CKKISSANE_PREFIX):
        return load_ckkissane(confine(ref[len(CKKISSANE_PREFIX):], workspace.root, what="SAE file"), dev).eval()
    folder = confine(ref, workspace.root, workspace.saes, what="SAE")
    if not folder.is_dir():
        folder = confine(ref, workspace.root, what="SAE folder")
    if not folder.is_dir():
        raise SAELoadError(f"no SAE {ref!r}: not a name in {workspace.saes} and not a folder in the workspace")
    return load_sae_folder(folder, dev).eval()


@dataclass(frozen=True)
class SAEEntry:
    name: str
    path: Path
    hook_name: str | None
    d_in: int | None
    d_sae: int | None
    architecture: str | None
    model: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_row(self) -> dict[str, Any]:
        m = self.metrics
        return {"name": self.name, "model": self.model, "hook": self.hook_name, "arch": self.architecture,
                "d_in": self.d_in, "d_sae": self.d_sae, "l0": m.get("l0"),
                "explained_variance": m.get("explained_variance"), "dead_features": m.get("dead_features"),
                "error": self.error}


def read_sae_meta(folder: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def list_saes(workspace: Workspace | None = None) -> list[SAEEntry]:
    """Every SAE folder in the workspace (sorted by name), with cfg.json + fra_meta.json metadata.

    Reads JSON only (no weights); a folder with a broken cfg.json is listed with `error` set.
    """
    workspace = workspace or Workspace.from_env()
    out = []
    for folder in sorted(workspace.saes.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        meta = read_sae_meta(folder)
        try:
            cfg = json.loads((folder / CFG_FILE).read_text(encoding="utf-8"))
            md = cfg.get("metadata") or {}
            out.append(SAEEntry(folder.name, folder, md.get("hook_name"), cfg.get("d_in"), cfg.get("d_sae"),
                                md.get("training_architecture") or cfg.get("architecture"),
                                meta.get("model") or md.get("model_name"), meta.get("metrics", {}), meta))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            out.append(SAEEntry(folder.name, folder, None, None, None, None, None, {}, meta,
                                error=f"{CFG_FILE}: {type(exc).__name__}: {exc}"))
    return out

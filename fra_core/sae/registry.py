"""SAELens registry releases whose files are in the local Hugging Face cache, and importing one into the
workspace by name.

Listing reads the cache folder only (``$HF_HUB_CACHE/models--<org>--<name>/refs/main`` → its snapshot),
never the network, so pickers stay instant and offline-safe. Two on-disk formats are recognised, the ones
whose config we can read without loading weights:

- SAELens folders (releases without a ``conversion_func``): ``<path>/cfg.json`` + ``<path>/sae_weights.safetensors``;
- ckkissane hook_z files (``conversion_func: connor_rob_hook_z``, release ``gpt2-small-hook-z-kk``):
  ``<path>`` (``.pt``) + ``<path minus .pt>_cfg.json``.

Other formats are not listed (they still load by typing ``release:<release>/<sae_id>``).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from fra_core.sae.loaders import META_FILE, RELEASE_PREFIX, SAELoadError, load_sae
from fra_core.workspace import Workspace

KK_CONVERSION = "connor_rob_hook_z"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class CachedSAE:
    """One registry SAE whose files are in the cache; `ref` is what `load_sae` takes."""

    release: str
    sae_id: str
    repo_id: str
    model: str
    hook_name: str
    d_in: int
    d_sae: int

    @property
    def ref(self) -> str:
        return f"{RELEASE_PREFIX}{self.release}/{self.sae_id}"


def hub_cache_dir() -> Path:
    import huggingface_hub.constants as hf_constants

    return Path(hf_constants.HF_HUB_CACHE)


def snapshot_dir(repo_id: str, cache: Path | None = None) -> Path | None:
    """The cached snapshot that ``refs/main`` points at, or None when the repo is not cached."""
    folder = (cache or hub_cache_dir()) / f"models--{repo_id.replace('/', '--')}"
    try:
        commit = (folder / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snap = folder / "snapshots" / commit
    return snap if snap.is_dir() else None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _entry(lookup, sae_id: str, snap: Path) -> CachedSAE | None:
    """The SAE's shape and hook from its cached config, or None when its files are not all cached."""
    path = lookup.saes_map[sae_id]
    if lookup.conversion_func == KK_CONVERSION:
        cfg = _read_json(snap / (path.split(".pt")[0] + "_cfg.json"))
        if cfg is None or not (snap / path).is_file() or not {"act_name", "act_size", "dict_size"} <= set(cfg):
            return None
        hook, d_in, d_sae = cfg["act_name"], cfg["act_size"], cfg["dict_size"]
    elif lookup.conversion_func is None:
        cfg = _read_json(snap / path / "cfg.json")
        if cfg is None or not (snap / path / "sae_weights.safetensors").is_file() or not {"d_in", "d_sae"} <= set(cfg):
            return None
        hook = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
        d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    else:
        return None
    if not isinstance(hook, str):
        return None
    return CachedSAE(lookup.release, sae_id, lookup.repo_id, lookup.model, hook, int(d_in), int(d_sae))


def same_model(a: str, b: str) -> bool:
    """Whether two model names name one TransformerLens model: equal, or the same official name through
    TransformerLens's aliases (case-insensitive), e.g. "gpt2", "gpt2-small" and "GPT2-Small" all name
    "gpt2". A name TransformerLens does not know matches only itself."""
    if a == b:
        return True
    from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    if not _ALIASES:  # as transformer_lens.loading_from_pretrained.make_model_alias_map builds it
        for official in OFFICIAL_MODEL_NAMES:
            for name in (*MODEL_ALIASES.get(official, []), official):
                _ALIASES[name.lower()] = official
    return _ALIASES.get(a.lower(), a) == _ALIASES.get(b.lower(), b)


_ALIASES: dict[str, str] = {}  # lower-cased name or alias -> official TransformerLens model name


def cached_registry_saes(model: str | None = None, cache: Path | None = None) -> list[CachedSAE]:
    """Registry SAEs (of `model` when given: its TransformerLens name or any alias, e.g. ``gpt2`` or
    ``gpt2-small``) whose files are all in the local cache."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    cache = cache or hub_cache_dir()
    if not cache.is_dir():
        return []
    cached_repos = {p.name for p in cache.iterdir() if p.name.startswith("models--")}
    out = []
    for lookup in get_pretrained_saes_directory().values():
        if model is not None and not same_model(lookup.model, model):
            continue
        if f"models--{lookup.repo_id.replace('/', '--')}" not in cached_repos:
            continue
        snap = snapshot_dir(lookup.repo_id, cache)
        if snap is None:
            continue
        out += [e for e in (_entry(lookup, sid, snap) for sid in lookup.saes_map) if e is not None]
    return out


def import_sae(ref: str, name: str, workspace: Workspace | None = None, model: str | None = None) -> Path:
    """Copy/convert the SAE `ref` (any `load_sae` ref) into ``workspace.saes/<name>`` as a SAELens folder
    (loadable by ``sae_lens.SAE.load_from_disk``) with an ``fra_meta.json`` that records where it came from."""
    workspace = workspace or Workspace.from_env()
    if not NAME_RE.match(name or ""):
        raise SAELoadError(f"SAE name {name!r} must be 1-100 letters, digits, '.', '_' or '-' (no spaces or '/')")
    target = workspace.saes / name
    if target.exists():
        raise SAELoadError(f"a workspace SAE named {name!r} already exists ({target})")
    sae = load_sae(ref, device="cpu", workspace=workspace)
    tmp = workspace.saes / f".{name}.importing"
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_model(str(tmp))
    md = sae.cfg.metadata
    meta = {"name": name, "model": model or md.model_name, "hook_name": md.hook_name, "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae, "architecture": sae.cfg.architecture(), "origin": ref}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    tmp.rename(target)
    return target

"""Neuronpedia links from the SAE registry's own ids (torch-free: safe on pages that only read the DB).

A feature gets a link only when its SAE *is* a registry SAE that Neuronpedia hosts: SAELens's
`pretrained_saes.yaml` lists, per release and SAE id, a `neuronpedia` id (`gpt2-small/5-att-kk`). The
ref decides: `release:<release>/<sae_id>` is looked up by release and id, `ckkissane:<file.pt>` by the
weights file name of the `gpt2-small-hook-z-kk` release entries. A self-trained SAE on the same hook has
no link (it is a different dictionary: its feature 5 is not Neuronpedia's feature 5).

The registry file is read line by line, not through a YAML parser nor by importing sae_lens (which
imports torch); the index is built once per process.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

URL = "https://www.neuronpedia.org/{np_id}/{feature}"
CKKISSANE_PREFIX, RELEASE_PREFIX = "ckkissane:", "release:"


def registry_path() -> Path | None:
    spec = importlib.util.find_spec("sae_lens")  # finds the package without importing it
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "pretrained_saes.yaml"
    return path if path.is_file() else None


def parse_registry(lines) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """({(release, sae_id): neuronpedia id}, {weights file name: neuronpedia id}) from the registry's
    lines: top-level `release:` keys, `- id:` entries under `saes:`, their `path:` and `neuronpedia:`."""
    by_id: dict[tuple[str, str], str] = {}
    by_file: dict[str, str] = {}
    release, entry = None, {}

    def flush() -> None:
        if release and entry.get("neuronpedia") and entry.get("id"):
            by_id[(release, entry["id"])] = entry["neuronpedia"]
            if entry.get("path"):
                by_file[Path(entry["path"]).name] = entry["neuronpedia"]

    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line[0].isspace() and stripped.endswith(":"):
            flush()
            release, entry = stripped[:-1].strip("'\""), {}
            continue
        if stripped.startswith("- id:"):
            flush()
            entry = {"id": _value(stripped[len("- id:"):])}
        elif entry and (stripped.startswith("neuronpedia:") or stripped.startswith("path:")):
            key, _, value = stripped.partition(":")
            entry[key] = _value(value)
    flush()
    return by_id, by_file


def _value(text: str) -> str:
    return text.strip().strip("'\"")


@functools.lru_cache(maxsize=1)
def _index() -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    path = registry_path()
    if path is None:
        return {}, {}
    with open(path, encoding="utf-8") as fh:
        return parse_registry(fh)


def neuronpedia_id(sae_ref: str | None) -> str | None:
    """The registry's Neuronpedia id of an SAE ref, or None (self-trained, unknown, not hosted)."""
    if not sae_ref:
        return None
    by_id, by_file = _index()
    if sae_ref.startswith(RELEASE_PREFIX):
        release, _, sae_id = sae_ref[len(RELEASE_PREFIX):].partition("/")
        return by_id.get((release, sae_id))
    if sae_ref.startswith(CKKISSANE_PREFIX):
        return by_file.get(Path(sae_ref[len(CKKISSANE_PREFIX):]).name)
    return None


def feature_url(sae_ref: str | None, feature: int) -> str | None:
    """The feature's Neuronpedia page, or None when its SAE is not a Neuronpedia-hosted registry SAE."""
    np_id = neuronpedia_id(sae_ref)
    return URL.format(np_id=np_id, feature=int(feature)) if np_id else None

"""The workspace: the one folder where FRA Studio writes anything.

Layout (created lazily)::

    $FRA_WORKSPACE/            default ./workspace
      models/<name>/           config.json, model.safetensors, tokenizer/, meta.json
      saes/<name>/             SAELens format: cfg.json, sae_weights.safetensors (+ fra_meta.json)
      datasets/<name>/         saved HF datasets, uploaded files
      jobs/<job_id>/           config.yaml, status.json, metrics.jsonl, log.txt, shards/
      fra.duckdb               the pair-statistics store (written only by the app process)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "FRA_WORKSPACE"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_env(cls) -> "Workspace":
        return cls(Path(os.environ.get(ENV_VAR, "workspace")).expanduser().resolve())

    def _sub(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def models(self) -> Path:
        return self._sub("models")

    @property
    def saes(self) -> Path:
        return self._sub("saes")

    @property
    def datasets(self) -> Path:
        return self._sub("datasets")

    @property
    def jobs(self) -> Path:
        return self._sub("jobs")

    @property
    def db_path(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / "fra.duckdb"


def check_name(name: str, what: str = "name") -> str:
    """Validate a user-chosen folder name (no path separators, no dot-files)."""
    if not _NAME_RE.match(name or ""):
        raise ValueError(
            f"invalid {what} {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name

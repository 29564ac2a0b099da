"""Trained restoration runs in the workspace (``$FRA_WORKSPACE/restoration/<name>/``): listing and
reading their results without importing torch (pages that only show tables stay light)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fra_core.workspace import Workspace

CHECKPOINT_FILE, RESULT_FILE = "checkpoint.pt", "result.json"


def restoration_root(workspace: Workspace | None = None) -> Path:
    path = (workspace or Workspace.from_env()).root / "restoration"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class RestorationRun:
    name: str
    path: Path
    result: dict[str, Any]

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE


def read_result(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / RESULT_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def list_runs(workspace: Workspace | None = None) -> list[RestorationRun]:
    """Finished runs (folders holding a checkpoint), sorted by name."""
    root = restoration_root(workspace)
    return [RestorationRun(p.name, p, read_result(p)) for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".") and (p / CHECKPOINT_FILE).is_file()]

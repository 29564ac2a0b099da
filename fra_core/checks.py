"""Validation shared by every loader: JSON files and state dicts, each failure named in one line.

Each loader raises its own error type (ModelLoadError, SAELoadError, CheckpointError) so pages and the
CLI can say which kind of thing was bad; the wording of the problem is the same everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


def read_json_file(path: Path, error: type[Exception]) -> Any:
    """Parse a JSON file, raising `error` naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc


def state_dict_problem(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, Any],
                       source: str) -> str | None:
    """The first missing, unexpected, non-tensor or mis-shaped entry of `state`, as a message (None: fits)."""
    missing = sorted(set(expected) - set(state))
    if missing:
        return f"{source} lacks {len(missing)} tensors, e.g. {missing[:3]}"
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        return f"{source} has tensors the config does not define: {unexpected[:3]}"
    for name, shape in expected.items():
        value = state[name]
        if not hasattr(value, "shape"):
            return f"{source}: {name} is a {type(value).__name__}, not a tensor"
        if tuple(value.shape) != tuple(shape):
            return f"{source}: tensor {name} has shape {tuple(value.shape)}, the config implies {tuple(shape)}"
    return None

"""Frozen job configs that round-trip to YAML and carry a stable hash.

Every job (`TrainSAEConfig`, `AccumulateFRAConfig`, ...) is one frozen dataclass deriving from
`JobConfig`. The YAML a user saves from the UI runs unchanged in the CLI, and the config JSON and its
hash are stored with the results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fra_core.config_types import check_field
from fra_core.errors import FRAStudioError

C = TypeVar("C", bound="JobConfig")


class ConfigError(FRAStudioError):
    """A config file or dict that does not describe a valid job."""


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Base class: subclasses are frozen dataclasses with JSON-friendly fields (tuples for lists)."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump({"job": type(self).__name__, **self.to_dict()}, sort_keys=False)

    def save_yaml(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        data = dict(data)
        job = data.pop("job", None)
        if job is not None and job != cls.__name__:
            raise ConfigError(f"config is for job {job!r}, expected {cls.__name__!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known keys: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {name: check_field(cls.__name__, name, value, hints.get(name), ConfigError)
                  for name, value in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:  # missing required field
            raise ConfigError(f"{cls.__name__}: {exc}") from exc

    @classmethod
    def from_yaml(cls: type[C], text: str) -> C:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"expected a YAML mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def load_yaml(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return cls.from_yaml(path.read_text(encoding="utf-8"))

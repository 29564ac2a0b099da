"""Text sources for jobs: a local .txt / .jsonl file, a saved HF dataset, a streamed HF dataset, or
the demo's generated text.

A dataset is named by one string (it goes into job configs and YAML unchanged):

    demo                         `fra_core.models.demo.demo_texts(n, seed)`
    path/to/file.txt             one text per line; per paragraph when blank lines separate texts
    path/to/file.jsonl           one JSON object per line, text in `text_column`
    disk:path/to/folder          a dataset saved with `datasets.Dataset.save_to_disk` (column `text_column`)
    hf:Elriggs/openwebtext-100k  streamed from the Hugging Face Hub (fails fast when offline)

A relative path is looked up in the workspace's `datasets/` folder first, then from the current
directory; in server mode only paths inside the workspace are accepted (`fra_core.paths.confine`).
`open_texts` checks everything it can up front (path exists, not empty, text column present),
so a job fails in its first second with a one-line `DatasetError`, not an hour in.
Texts come in a fixed order, so a text's index is a stable sample id (what resume relies on).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from fra_core import hub
from fra_core.errors import FRAStudioError
from fra_core.paths import confine
from fra_core.server import server_mode
from fra_core.workspace import Workspace

DEMO = "demo"
DISK_PREFIX = "disk:"
HF_PREFIX = "hf:"
DEFAULT_STREAM = "hf:Elriggs/openwebtext-100k"


class DatasetError(FRAStudioError):
    """A dataset that cannot be read (missing, empty, wrong column, offline Hub)."""


@dataclass(frozen=True)
class TextSource:
    """An opened, validated text source; iterate `texts()` (deterministic order)."""

    spec: str
    kind: str  # "demo" | "txt" | "jsonl" | "disk" | "hf"
    location: str
    text_column: str = "text"
    split: str = "train"
    seed: int = 0
    size: int | None = None  # number of texts when known without reading everything

    def texts(self, limit: int | None = None) -> Iterator[str]:
        it = _ITERATORS[self.kind](self, limit)
        return itertools.islice(it, limit) if limit is not None else it


def _resolve_path(location: str, workspace: Workspace | None) -> Path:
    if server_mode():  # inside the workspace only: its datasets/ folder first, then the workspace itself
        ws = workspace or Workspace.from_env()
        path = confine(location, ws.root, ws.root / "datasets", what="dataset path")
        return path if path.exists() else confine(location, ws.root, what="dataset path")
    path = Path(location).expanduser()
    if not path.is_absolute():
        ws = workspace or Workspace.from_env()
        in_ws = ws.root / "datasets" / path
        if in_ws.exists():
            return in_ws
    return path


def open_texts(spec: str, text_column: str = "text", split: str = "train", seed: int = 0,
               workspace: Workspace | None = None) -> TextSource:
    """Validate `spec` and return a `TextSource`; DatasetError with a one-line reason otherwise."""
    spec = (spec or "").strip()
    if not spec:
        raise DatasetError("no dataset given: use 'demo', a .txt/.jsonl path, 'disk:<folder>' or 'hf:<name>'")
    if spec == DEMO:
        return TextSource(spec, "demo", "", text_column, split, seed)
    if spec.startswith(HF_PREFIX):
        return _open_stream(spec, text_column, split, seed)
    if spec.startswith(DISK_PREFIX):
        return _open_disk(spec, _resolve_path(spec[len(DISK_PREFIX):], workspace), text_column, split, seed)
    path = _resolve_path(spec, workspace)
    if not path.exists():
        raise DatasetError(f"dataset file not found: {path}")
    if path.is_dir():
        return _open_disk(spec, path, text_column, split, seed)
    if path.stat().st_size == 0:
        raise DatasetError(f"dataset file is empty: {path}")
    if path.suffix.lower() == ".jsonl":
        return _open_jsonl(spec, path, text_column, split, seed)
    if path.suffix.lower() not in (".txt", ".text", ""):
        raise DatasetError(f"unsupported dataset file type {path.suffix!r} ({path}): use .txt or .jsonl")
    source = TextSource(spec, "txt", str(path), text_column, split, seed)
    if next(iter(source.texts(1)), None) is None:
        raise DatasetError(f"dataset file has no text (only blank lines): {path}")
    return source


# ----------------------------------------------------------------------------- local files
def _txt_texts(src: TextSource, limit: int | None) -> Iterator[str]:
    """Paragraph mode when the file separates texts by blank lines, else one text per line."""
    with open(src.location, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().splitlines()
    blocks, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    paragraphs = any(len(b) > 1 for b in blocks) and len(blocks) > 1
    for block in blocks:
        if paragraphs:
            yield " ".join(block)
        else:
            yield from block


def _open_jsonl(spec: str, path: Path, column: str, split: str, seed: int) -> TextSource:
    with open(path, encoding="utf-8") as fh:
        first = next((line for line in fh if line.strip()), None)
    if first is None:
        raise DatasetError(f"dataset file has no records (only blank lines): {path}")
    try:
        record = json.loads(first)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} line 1 is not JSON: {exc}") from exc
    if not isinstance(record, dict) or column not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DatasetError(f"text column {column!r} not in {path}; its records have keys {keys}")
    return TextSource(spec, "jsonl", str(path), column, split, seed)


def _jsonl_texts(src: TextSource, limit: int | None) -> Iterator[str]:
    with open(src.location, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{src.location} line {n} is not JSON: {exc}") from exc
            if src.text_column not in record:
                raise DatasetError(f"{src.location} line {n} has no {src.text_column!r} field")
            yield str(record[src.text_column])


# ----------------------------------------------------------------------------- HF datasets
def _load_disk(path: Path, split: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise DatasetError(f"{path} is not a saved Hugging Face dataset ({exc})") from exc
    except IndexError as exc:  # datasets 5.x cannot even open a saved dataset with 0 data files
        raise DatasetError(f"dataset {path} is empty (no data files)") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DatasetError(f"split {split!r} not in {path}; it has {sorted(ds)}")
        ds = ds[split]
    return ds


def _open_disk(spec: str, path: Path, column: str, split: str, seed: int) -> TextSource:
    if not path.exists():
        raise DatasetError(f"dataset folder not found: {path}")
    ds = _load_disk(path, split)
    if column not in ds.column_names:
        raise DatasetError(f"text column {column!r} not in {path}; columns: {ds.column_names}")
    if len(ds) == 0:
        raise DatasetError(f"dataset {path} is empty (0 rows)")
    return TextSource(spec, "disk", str(path), column, split, seed, size=len(ds))


def _disk_texts(src: TextSource, limit: int | None) -> Iterator[str]:
    ds = _load_disk(Path(src.location), src.split)
    n = len(ds) if limit is None else min(limit, len(ds))
    for start in range(0, n, 256):
        yield from (str(t) for t in ds[start:min(n, start + 256)][src.text_column])


def _open_stream(spec: str, column: str, split: str, seed: int) -> TextSource:
    name = spec[len(HF_PREFIX):].strip()
    if not name:
        raise DatasetError(f"expected hf:<dataset name>, got {spec!r}")
    if not hub.hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub.offline_requested() else "the Hugging Face Hub is unreachable"
        raise DatasetError(f"cannot stream {name!r}: {why}. Save it on a machine with access "
                           f"(datasets.load_dataset('{name}', split='{split}').save_to_disk(...)) and use "
                           f"'disk:<folder>'")
    ds = _stream(name, split)
    first = next(iter(ds), None)
    if first is None:
        raise DatasetError(f"streamed dataset {name!r} split {split!r} is empty")
    if column not in first:
        raise DatasetError(f"text column {column!r} not in {name!r}; its records have keys {sorted(first)}")
    return TextSource(spec, "hf", name, column, split, seed)


def _stream(name: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, split=split, streaming=True)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types; one message for the user
        raise DatasetError(f"cannot stream {name!r} split {split!r}: {type(exc).__name__}: {exc}") from exc


def _hf_texts(src: TextSource, limit: int | None) -> Iterator[str]:
    for record in _stream(src.location, src.split):
        yield str(record[src.text_column])


def _demo_texts(src: TextSource, limit: int | None) -> Iterator[str]:
    from fra_core.models.demo import demo_texts  # lazy: fra_core.models.demo imports torch

    # demo_texts(n, seed) is deterministic and prefix-stable, so any limit gives the same first texts
    yield from demo_texts(limit if limit is not None else 10_000, seed=src.seed)


_ITERATORS = {"demo": _demo_texts, "txt": _txt_texts, "jsonl": _jsonl_texts, "disk": _disk_texts,
              "hf": _hf_texts}

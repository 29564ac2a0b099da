"""Masked-character restoration dataset: cleaned fragments -> chunks -> masked examples -> HF dataset.

An example is one chunk of a fragment: whole cleaned lines joined by newlines, at most `max_len`
tokens including the leading <bos> (44 % of eBL fragments exceed 768 characters, so long fragments are
chunked by line; a single over-long line is cut at a space). Columns::

    fragment_id, chunk, text, status     the chunk's characters and their status (c b g m, see atf.clean)
    input_ids    [<bos>] + character ids; lost characters are <gap>
    maskable     1 where the character was read on the tablet ('c'), so it has ground truth
    masked_ids   input_ids with the masked positions replaced by <mask> (a reserved id, never an ATF sign)
    labels       the original id at masked positions, -100 elsewhere (the loss ignores -100)

Masks are drawn only from `maskable` positions, so a gap (x, …), an editor's restoration inside [ ],
kept markup or the line separator is never a target. Masks come as single characters and as spans of
2..max_span characters (real gaps are mostly spans). Splits are by fragment: no fragment has chunks
in two splits. The training split's masks are a fixed sample; the trainer redraws them every batch.

Saved under ``$FRA_WORKSPACE/datasets/<name>/``: ``hf/`` (DatasetDict.save_to_disk), ``vocab.json``,
``settings.json`` (the BuildDatasetConfig, its hash and corpus statistics). Written to a temp folder and
renamed, so a failed build leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fra_core.atf import (
    BOS_ID,
    LINE_SEP,
    MASK_ID,
    AtfError,
    CharVocab,
    CleanLine,
    CleanOptions,
    Fragment,
    build_vocab,
    clean_fragment,
    dedupe_ids,
    load_fragments,
)
from fra_core.atomic import atomic_folder
from fra_core.errors import FRAStudioError
from fra_core.server import server_mode
from fra_core.workspace import Workspace, check_name

SPLITS = ("train", "validation", "test")
IGNORE_INDEX = -100


class DatasetBuildError(FRAStudioError):
    """The dataset cannot be built or read; one-line message."""


@dataclass(frozen=True)
class BuildDatasetConfig(CleanOptions):
    """Cleaning options (inherited) plus chunking, masking and split settings."""

    source: str = ""            # eBL JSON / JSONL / ATF file (ignored when fragments are passed in)
    name: str = "restoration"   # -> $FRA_WORKSPACE/datasets/<name>
    max_len: int = 768          # tokens per example, <bos> included (the seed's context length)
    mask_rate: float = 0.15     # share of maskable characters masked per example
    span_prob: float = 0.5      # share of mask events that are spans rather than single characters
    max_span: int = 8
    mask_spaces: bool = True    # word boundaries are part of what a restorer must get right
    broken_input: str = "keep"  # keep: editors' restorations stay visible as input | gap: shown as <gap>
    min_count: int = 1          # rarer characters map to <unk>
    val_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.max_len < 8:
            raise ValueError(f"max_len must be at least 8, got {self.max_len}")
        if not 0 < self.mask_rate < 1 or not 0 <= self.span_prob <= 1 or self.max_span < 2:
            raise ValueError(f"bad masking settings: mask_rate={self.mask_rate}, span_prob={self.span_prob}, "
                             f"max_span={self.max_span}")
        if self.broken_input not in ("keep", "gap"):
            raise ValueError(f"broken_input must be 'keep' or 'gap', got {self.broken_input!r}")
        if self.val_frac < 0 or self.test_frac < 0 or self.val_frac + self.test_frac >= 1:
            raise ValueError(f"bad split fractions: val {self.val_frac}, test {self.test_frac}")


# ----------------------------------------------------------------------------- chunking
def _split_long_line(line: CleanLine, limit: int) -> list[CleanLine]:
    """Cut a line longer than `limit` at the last space before the limit (hard cut if there is none)."""
    out, text, status = [], line.text, line.status
    while len(text) > limit:
        cut = text.rfind(" ", 1, limit + 1)
        cut = cut if cut > 0 else limit
        out.append(CleanLine(text[:cut], status[:cut]))
        rest = cut
        while rest < len(text) and text[rest] == " ":
            rest += 1
        text, status = text[rest:], status[rest:]
    if text:
        out.append(CleanLine(text, status))
    return out


def chunk_lines(lines: Sequence[CleanLine], max_chars: int) -> list[CleanLine]:
    """Greedily pack whole lines (joined by LINE_SEP, status 'm') into chunks of <= max_chars."""
    pieces = [p for line in lines for p in _split_long_line(line, max_chars)]
    chunks, text, status = [], "", ""
    for piece in pieces:
        joined = len(text) + len(LINE_SEP) + len(piece.text) if text else len(piece.text)
        if text and joined > max_chars:
            chunks.append(CleanLine(text, status))
            text, status = "", ""
        if text:
            text, status = text + LINE_SEP + piece.text, status + "m" + piece.status
        else:
            text, status = piece.text, piece.status
    if text:
        chunks.append(CleanLine(text, status))
    return chunks


# ----------------------------------------------------------------------------- masking
def maskable_positions(chunk: CleanLine, mask_spaces: bool = True) -> np.ndarray:
    """bool [1 + len]: position 0 is <bos>; True where the character was read on the tablet."""
    ok = np.array([st == "c" and (mask_spaces or ch != " ") and ch != LINE_SEP
                   for ch, st in zip(chunk.text, chunk.status)], dtype=bool)
    return np.concatenate([[False], ok])


def sample_mask(maskable: np.ndarray, rng: np.random.Generator, rate: float = 0.15, span_prob: float = 0.5,
                max_span: int = 8) -> np.ndarray:
    """Choose positions to mask: about `rate` of the maskable ones, as single characters or spans.

    A span starts at a random maskable position and extends right over maskable positions only, so
    it stops at a gap, a restoration, markup or a line end (never masks a character without ground truth).
    """
    maskable = np.asarray(maskable, dtype=bool)
    candidates = np.flatnonzero(maskable)
    mask = np.zeros_like(maskable)
    if candidates.size == 0:
        return mask
    target = max(1, int(round(rate * candidates.size)))
    for _ in range(4 * target):  # bounded: crowded examples may not reach the target exactly
        if mask.sum() >= target:
            break
        start = int(candidates[rng.integers(candidates.size)])
        length = 1 if rng.random() >= span_prob else int(rng.integers(2, max_span + 1))
        length = min(length, target - int(mask.sum()))
        end = start
        while end < start + length and end < maskable.size and maskable[end]:
            end += 1
        mask[start:end] = True
    return mask & maskable


def apply_mask(input_ids: Sequence[int], mask: np.ndarray) -> tuple[list[int], list[int]]:
    ids = np.asarray(input_ids, dtype=np.int64)
    masked = np.where(mask, MASK_ID, ids)
    labels = np.where(mask, ids, IGNORE_INDEX)
    return masked.tolist(), labels.tolist()


# ----------------------------------------------------------------------------- splits
def split_of(fragment_ids: Sequence[str], val_frac: float, test_frac: float, seed: int) -> dict[str, str]:
    """Assign each fragment to one split: a seeded shuffle of the sorted ids, then cut by fractions."""
    ids = sorted(set(fragment_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = int(round(test_frac * len(ids)))
    n_val = int(round(val_frac * len(ids)))
    if len(ids) >= 3:  # tiny corpora still get one fragment in each held-out split
        n_test, n_val = max(n_test, 1 if test_frac > 0 else 0), max(n_val, 1 if val_frac > 0 else 0)
    out = {}
    for rank, idx in enumerate(order):
        out[ids[idx]] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
    return out


def _stable_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def build_examples(fragments: Sequence[Fragment], cfg: BuildDatasetConfig,
                   vocab: CharVocab | None = None) -> tuple[dict[str, list[dict]], CharVocab]:
    """Clean, chunk, encode and mask every fragment; returns examples per split and the vocabulary."""
    fragments = dedupe_ids(fragments)
    options = cfg.clean_options()
    cleaned = {f.fragment_id: clean_fragment(f, options) for f in fragments}
    cleaned = {k: v for k, v in cleaned.items() if v}
    if not cleaned:
        raise DatasetBuildError("no text lines left after cleaning: nothing to build a dataset from")
    vocab = vocab or build_vocab([line for lines in cleaned.values() for line in lines], cfg.min_count)
    splits = split_of(list(cleaned), cfg.val_frac, cfg.test_frac, cfg.seed)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for frag_id, lines in cleaned.items():
        for index, chunk in enumerate(chunk_lines(lines, cfg.max_len - 1)):
            ids = [BOS_ID] + vocab.encode(chunk.text, chunk.status, broken_as_gap=cfg.broken_input == "gap")
            maskable = maskable_positions(chunk, cfg.mask_spaces)
            rng = np.random.default_rng(_stable_seed(cfg.seed, frag_id, index))
            mask = sample_mask(maskable, rng, cfg.mask_rate, cfg.span_prob, cfg.max_span)
            masked, labels = apply_mask(ids, mask)
            out[splits[frag_id]].append({
                "fragment_id": frag_id, "chunk": index, "text": chunk.text, "status": chunk.status,
                "input_ids": ids, "maskable": maskable.astype(np.int8).tolist(), "masked_ids": masked,
                "labels": labels,
            })
    return out, vocab


# ----------------------------------------------------------------------------- save / load
def _to_dataset_dict(examples: dict[str, list[dict]]):
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Sequence as Seq

    features = Features({
        "fragment_id": Value("string"), "chunk": Value("int32"), "text": Value("string"),
        "status": Value("string"), "input_ids": Seq(Value("int32")), "maskable": Seq(Value("int8")),
        "masked_ids": Seq(Value("int32")), "labels": Seq(Value("int32")),
    })
    columns = list(features)
    return DatasetDict({
        split: Dataset.from_dict({c: [row[c] for row in rows] for c in columns}, features=features)
        for split, rows in examples.items()
    })


def dataset_stats(examples: dict[str, list[dict]]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for split, rows in examples.items():
        stats[split] = {
            "fragments": len({r["fragment_id"] for r in rows}), "examples": len(rows),
            "tokens": sum(len(r["input_ids"]) for r in rows),
            "masked": sum(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in rows),
        }
    return stats


def build_restoration_dataset(cfg: BuildDatasetConfig, workspace: Workspace | None = None,
                              fragments: Sequence[Fragment] | None = None, overwrite: bool = False) -> Path:
    """Build and save the dataset as `$FRA_WORKSPACE/datasets/<cfg.name>`; returns its folder."""
    workspace = workspace or Workspace.from_env()
    check_name(cfg.name, "dataset name")
    if fragments is None:
        if not cfg.source:
            raise DatasetBuildError("no source file given and no fragments passed in")
        fragments = load_fragments(cfg.source)
    folder = workspace.datasets / cfg.name
    if folder.exists() and not overwrite:
        raise DatasetBuildError(f"dataset {cfg.name!r} already exists in {workspace.datasets}; choose another name")
    examples, vocab = build_examples(fragments, cfg)
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        _to_dataset_dict(examples).save_to_disk(str(tmp / "hf"))
        vocab.save(tmp / "vocab.json")
        settings = {"kind": "restoration", "config": cfg.to_dict(), "config_hash": cfg.config_hash(),
                    "vocab_size": vocab.size, "stats": dataset_stats(examples)}
        (tmp / "settings.json").write_text(json.dumps(settings, indent=1, ensure_ascii=False), encoding="utf-8")
    return folder


def resolve_dataset(ref: str, workspace: Workspace | None = None) -> Path:
    workspace = workspace or Workspace.from_env()
    candidates = (workspace.datasets / ref, Path(ref))
    if server_mode():  # inside the workspace only
        from fra_core.paths import confine

        candidates = (confine(ref, workspace.root, workspace.datasets, what="restoration dataset"),
                      confine(ref, workspace.root, what="restoration dataset"))
    for folder in candidates:
        if (folder / "settings.json").is_file() and (folder / "hf").is_dir():
            return folder
    raise DatasetBuildError(f"no restoration dataset {ref!r} (neither {workspace.datasets / ref} nor a folder "
                            f"with settings.json and hf/)")


def load_restoration_dataset(ref: str, workspace: Workspace | None = None):
    """(DatasetDict, CharVocab, settings dict) of a dataset built by `build_restoration_dataset`."""
    from datasets import load_from_disk

    folder = resolve_dataset(ref, workspace)
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    return load_from_disk(str(folder / "hf")), CharVocab.load(folder / "vocab.json"), settings


def list_restoration_datasets(workspace: Workspace | None = None) -> list[str]:
    workspace = workspace or Workspace.from_env()
    return sorted(p.name for p in workspace.datasets.iterdir()
                  if (p / "settings.json").is_file() and (p / "hf").is_dir() and not p.name.startswith("."))


__all__ = ["AtfError", "BuildDatasetConfig", "DatasetBuildError", "IGNORE_INDEX", "SPLITS", "apply_mask",
           "build_examples", "build_restoration_dataset", "chunk_lines", "dataset_stats", "list_restoration_datasets",
           "load_restoration_dataset", "maskable_positions", "resolve_dataset", "sample_mask", "split_of"]

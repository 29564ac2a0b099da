"""Character vocabulary for the restoration model: reserved ids first, then the real characters.

The seed's vocabulary size was ``ord('⸣') + 1`` = 11 812 — a code-point artefact for ~150 real
characters — and its mask symbols were ATF characters (``-``, ``#``). Here every id is either one of
six reserved tokens or a character actually seen in the cleaned corpus:

    0 <pad>   1 <mask>   2 <gap>   3 <unk>   4 <bos>   5 <eos>   6.. characters (most frequent first)

``<mask>`` marks a character to predict, ``<gap>`` a character that is lost on the tablet (``x``,
``…``; never a target). `to_tokenizer` builds the matching Hugging Face character tokenizer (same ids)
for TransformerLens.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from fra_core.atf.clean import CleanLine
from fra_core.errors import FRAStudioError

# the same strings as fra_core.models.tokenizers (not imported: that module pulls in transformers)
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"

MASK, GAP = "<mask>", "<gap>"
SPECIALS = (PAD, MASK, GAP, UNK, BOS, EOS)
PAD_ID, MASK_ID, GAP_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIALS))
LINE_SEP = "\n"  # joins the lines of a chunk
VOCAB_FORMAT = "fra-char-vocab-v1"


class VocabError(FRAStudioError):
    """A vocabulary file or argument that cannot be used."""


@dataclass(frozen=True)
class CharVocab:
    chars: tuple[str, ...]

    def __post_init__(self):
        bad = [c for c in self.chars if len(c) != 1]
        if bad:
            raise VocabError(f"vocabulary entries must be single characters, got {bad[:5]}")
        if len(set(self.chars)) != len(self.chars):
            raise VocabError("vocabulary has duplicate characters")
        object.__setattr__(self, "_index", {c: i + len(SPECIALS) for i, c in enumerate(self.chars)})

    @property
    def size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def __len__(self) -> int:
        return self.size

    def id_of(self, char: str) -> int:
        return self._index.get(char, UNK_ID)

    def token(self, idx: int) -> str:
        if idx < 0 or idx >= self.size:
            raise VocabError(f"id {idx} is outside the vocabulary (size {self.size})")
        return SPECIALS[idx] if idx < len(SPECIALS) else self.chars[idx - len(SPECIALS)]

    def encode(self, text: str, status: str | None = None, broken_as_gap: bool = False) -> list[int]:
        """Ids for `text`; characters with status 'g' (and 'b' if `broken_as_gap`) become <gap>."""
        status = status if status is not None else "c" * len(text)
        gap_states = ("g", "b") if broken_as_gap else ("g",)
        return [GAP_ID if st in gap_states else self.id_of(ch) for ch, st in zip(text, status)]

    def decode(self, ids: Iterable[int], mask: str = "▒", gap: str = "x", unk: str = "�") -> str:
        """Text for ids; special ids render as `mask`/`gap`/`unk`, pad/bos/eos as nothing."""
        shown = {PAD_ID: "", MASK_ID: mask, GAP_ID: gap, UNK_ID: unk, BOS_ID: "", EOS_ID: ""}
        return "".join(shown[i] if i in shown else self.token(int(i)) for i in ids)

    def to_json(self) -> dict:
        return {"format": VOCAB_FORMAT, "specials": list(SPECIALS), "chars": list(self.chars)}

    @classmethod
    def from_json(cls, data: dict) -> "CharVocab":
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            raise VocabError(f"not a {VOCAB_FORMAT} vocabulary")
        if list(data.get("specials", [])) != list(SPECIALS):
            raise VocabError(f"vocabulary reserves {data.get('specials')}, expected {list(SPECIALS)}")
        return cls(tuple(data["chars"]))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CharVocab":
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise VocabError(f"cannot read vocabulary {path}: {exc}") from exc

    def to_tokenizer(self):
        """A Hugging Face fast character tokenizer with exactly these ids (prepends <bos>)."""
        from fra_core.models.tokenizers import build_tokenizer

        return build_tokenizer(list(self.chars), level="char", special=SPECIALS)


def char_counts(lines: Iterable[CleanLine], statuses: str = "cbm") -> Counter:
    """Counts of the characters that get their own id (gaps are <gap>, whatever their spelling)."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(ch for ch, st in zip(line.text, line.status) if st in statuses)
    return counts


def build_vocab(lines: Iterable[CleanLine], min_count: int = 1,
                extra: Sequence[str] = (" ", LINE_SEP)) -> CharVocab:
    """Characters seen at least `min_count` times, most frequent first (ties by code point), plus
    `extra` (space and the line separator, which chunks always need)."""
    counts = char_counts(lines)
    chars = [c for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    chars += [c for c in extra if c not in chars]
    if not chars:
        raise VocabError("no characters to build a vocabulary from (empty corpus?)")
    return CharVocab(tuple(chars))

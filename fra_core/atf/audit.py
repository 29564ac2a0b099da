"""Character audit of an ATF corpus: what characters occur, which ones eBL-ATF does not define, and
per-fragment figures (length, share of lost text, lines, whether it needs chunking)."""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from fra_core.atf.clean import CleanOptions, clean_text_line
from fra_core.atf.parse import TEXT, Fragment, parse_atf

# The characters eBL-ATF text lines are written with: Latin letters, digits, the Akkadian/Sumerian
# letters, subscript indices, and ATF punctuation. Anything else is flagged as "unknown" (typos,
# typographic quotes, precomposed accents that ATF writes otherwise, fractions, ...).
_ATF_LETTERS = "šṣṭĝḫŠṢṬĜḪʾāēīūâêîûĀĒĪŪÂÊÎÛ"
_ATF_PUNCT = " .-+:;,/|&%@$#?!*[](){}<>°\\⸢⸣…×'\"=_~"
KNOWN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + _ATF_LETTERS + _ATF_PUNCT
    + "₀₁₂₃₄₅₆₇₈₉ₓ"
)


@dataclass(frozen=True)
class AuditReport:
    n_fragments: int
    line_kinds: dict[str, int]
    chars: list[dict[str, Any]]          # char, name, raw count (text lines), clean count, known
    unknown: dict[str, int]              # unknown char -> count in raw text lines
    unknown_examples: dict[str, str]     # unknown char -> first fragment id where it occurs
    fragments: list[dict[str, Any]] = field(repr=False)  # one row per fragment

    @property
    def n_distinct_chars(self) -> int:
        return len(self.chars)

    def summary(self) -> dict[str, Any]:
        rows = self.fragments
        total = sum(r["clean_chars"] for r in rows)
        return {
            "fragments": self.n_fragments,
            "text_lines": self.line_kinds.get(TEXT, 0),
            "raw_text_chars": sum(r["raw_chars"] for r in rows),
            "clean_chars": total,
            "distinct_chars": self.n_distinct_chars,
            "unknown_chars": len(self.unknown),
            "lost_share": (sum(r["gap_chars"] + r["broken_chars"] for r in rows) / total) if total else 0.0,
            "fragments_over_max_len": sum(1 for r in rows if r["over_max_len"]),
        }


def _char_name(ch: str) -> str:
    if ch == "\n":
        return "LINE FEED"
    return unicodedata.name(ch, f"U+{ord(ch):04X}")


def audit_fragments(fragments: Sequence[Fragment], options: CleanOptions | None = None,
                    max_len: int = 768) -> AuditReport:
    """Audit raw text-line characters and the cleaned text `options` gives.

    `max_len` is the model's context: a fragment whose cleaned text (lines joined by newlines, plus
    <bos>) is longer must be chunked by line.
    """
    options = options if options is not None else CleanOptions()
    kinds: Counter = Counter()
    raw_counts: Counter = Counter()
    clean_counts: Counter = Counter()
    first_seen: dict[str, str] = {}
    rows = []
    for frag in fragments:
        row = _audit_one(frag, options, max_len, kinds, raw_counts, clean_counts)
        for ch in row.pop("_raw_chars"):
            first_seen.setdefault(ch, frag.fragment_id)
        rows.append(row)
    chars = [{"char": ch, "name": _char_name(ch), "raw_count": raw_counts[ch], "clean_count": clean_counts[ch],
              "known": ch in KNOWN_CHARS}
             for ch in sorted(set(raw_counts) | set(clean_counts), key=lambda c: -raw_counts[c] - clean_counts[c])]
    unknown = {ch: n for ch, n in raw_counts.most_common() if ch not in KNOWN_CHARS}
    return AuditReport(len(fragments), dict(kinds), chars, unknown,
                       {ch: first_seen[ch] for ch in unknown}, rows)


def _audit_one(frag: Fragment, options: CleanOptions, max_len: int, kinds: Counter, raw_counts: Counter,
               clean_counts: Counter) -> dict[str, Any]:
    lines = parse_atf(frag.atf)
    kinds.update(line.kind for line in lines)
    text = [line for line in lines if line.kind == TEXT]
    raw_chars: set[str] = set()
    status_counts: Counter = Counter()
    clean_len, unknown_n, raw_len = 0, 0, 0
    n_clean_lines = 0
    for line in text:
        raw_counts.update(line.content)
        raw_chars.update(line.content)
        raw_len += len(line.content)
        unknown_n += sum(1 for ch in line.content if ch not in KNOWN_CHARS)
        cleaned = clean_text_line(line.number, line.content, options)
        if not cleaned.text:
            continue
        n_clean_lines += 1
        clean_len += len(cleaned.text)
        status_counts.update(cleaned.status)
        clean_counts.update(ch for ch, st in zip(cleaned.text, cleaned.status) if st != "g")
    joined = clean_len + max(n_clean_lines - 1, 0) + 1  # newlines between lines, plus <bos>
    return {
        "fragment_id": frag.fragment_id, "lines": len(lines), "text_lines": len(text), "raw_chars": raw_len,
        "clean_chars": clean_len, "content_chars": status_counts["c"], "broken_chars": status_counts["b"],
        "gap_chars": status_counts["g"], "markup_chars": status_counts["m"], "unknown_chars": unknown_n,
        "over_max_len": joined > max_len, "_raw_chars": raw_chars,
    }

"""ATF (cuneiform transliteration) preprocessing: read eBL records / ATF files, classify lines, clean
text lines with explicit options, audit characters, and build the character vocabulary.

Public API::

    load_fragments(path) / parse_corpus(bytes_or_text, source) -> list[Fragment]   (AtfError on bad input)
    parse_atf(atf) -> list[AtfLine]; classify_line(line) -> AtfLine (kind: text, structure, state, ...)
    CleanOptions(...); clean_fragment(fragment, options) -> list[CleanLine(text, status)]
    audit_fragments(fragments, options, max_len) -> AuditReport
    build_vocab(clean_lines) -> CharVocab (reserved ids: pad, mask, gap, unk, bos, eos)
    sample_path() -> the small hand-written demo corpus shipped with the package

No torch here: pages may import this freely.
"""

from __future__ import annotations

from pathlib import Path

from fra_core.atf.audit import AuditReport, audit_fragments
from fra_core.atf.clean import CLEAN_CHOICES, CleanLine, CleanOptions, annotate, clean_fragment, clean_text_line, render
from fra_core.atf.parse import (
    LINE_KINDS,
    AtfError,
    AtfLine,
    Fragment,
    classify_line,
    dedupe_ids,
    load_fragments,
    parse_atf,
    parse_corpus,
    text_lines,
)
from fra_core.atf.vocab import (
    BOS_ID,
    EOS_ID,
    GAP_ID,
    LINE_SEP,
    MASK_ID,
    PAD_ID,
    SPECIALS,
    UNK_ID,
    CharVocab,
    VocabError,
    build_vocab,
    char_counts,
)


def sample_path() -> Path:
    """A few hand-written fragments in eBL record format (our own, for the demo and smoke tests)."""
    return Path(__file__).resolve().parent / "data" / "sample_fragments.json"


__all__ = [
    "CLEAN_CHOICES", "AtfError", "AtfLine", "AuditReport", "BOS_ID", "CharVocab", "CleanLine", "CleanOptions", "EOS_ID", "Fragment",
    "GAP_ID", "LINE_KINDS", "LINE_SEP", "MASK_ID", "PAD_ID", "SPECIALS", "UNK_ID", "VocabError", "annotate",
    "audit_fragments", "build_vocab", "char_counts", "classify_line", "clean_fragment", "clean_text_line",
    "dedupe_ids", "load_fragments", "parse_atf", "parse_corpus", "render", "sample_path", "text_lines",
]

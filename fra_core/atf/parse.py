"""Read eBL fragment records and plain ATF files; classify ATF lines.

Accepted inputs (`load_fragments`):

- a JSON list of eBL records (the API dump: ``_id``, ``atf``, ``museumNumber``, ...),
- JSON Lines, one record per line,
- a plain ATF file (``.atf`` / ``.txt``): one fragment, or several separated by ``&`` header lines
  (``&P123456 = ...``, the Oracc convention).

Every problem is an `AtfError` (a `ValueError`) with a one-line message naming the file and the
record, so pages can `st.error` it and the CLI can print it: malformed JSON, records without a string
``atf``, non-UTF-8 bytes, an empty corpus.

Line kinds follow eBL-ATF: text lines start with a line number (``1.``, ``1'.``, ``a+1.``, ``6'a.``,
``1'-2'.``); ``@`` structure (surfaces, columns, colophons), ``$`` state (rulings, breaks), ``#``
comments (``#note:``, ``#tr.en:`` translations), ``//`` parallels. Anything else is ``other``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from fra_core.errors import FRAStudioError


class AtfError(FRAStudioError):
    """Input that is not a usable ATF corpus; the message is one line."""


@dataclass(frozen=True)
class Fragment:
    """One tablet fragment: an id (eBL ``_id`` / museum number) and its raw ATF text."""

    fragment_id: str
    atf: str


# Line kinds
TEXT, STRUCTURE, STATE, NOTE, TRANSLATION, COMMENT, PARALLEL, BLANK, OTHER = (
    "text", "structure", "state", "note", "translation", "comment", "parallel", "blank", "other")
LINE_KINDS = (TEXT, STRUCTURE, STATE, NOTE, TRANSLATION, COMMENT, PARALLEL, BLANK, OTHER)

# A line number: optional prefix letter + "+" (a+1, A+1'), digits, primes, an optional sub-line letter
# (6'a), an optional range (1'-2'), then "." and the text.
_NUM = r"(?:[A-Za-z]\+)?\d+'*[a-z]?"
LINE_NUMBER_RE = re.compile(rf"^(?P<number>{_NUM}(?:-{_NUM})?)\.(?:\s+|$)(?P<content>.*)$")
_TRANSLATION_RE = re.compile(r"^#\s*tr(?:\.[A-Za-z-]+)?\s*:")


@dataclass(frozen=True)
class AtfLine:
    """One line of a fragment: its kind, the raw line, and for text lines the number and content."""

    kind: str
    raw: str
    number: str = ""
    content: str = ""


def classify_line(line: str) -> AtfLine:
    """Classify one raw ATF line (no trailing newline)."""
    stripped = line.strip()
    if not stripped:
        return AtfLine(BLANK, line)
    if stripped.startswith("//"):
        return AtfLine(PARALLEL, line)
    first = stripped[0]
    if first == "@":
        return AtfLine(STRUCTURE, line)
    if first == "$":
        return AtfLine(STATE, line)
    if first == "#":
        if re.match(r"^#+\s*note\b", stripped):
            return AtfLine(NOTE, line)
        if _TRANSLATION_RE.match(stripped):
            return AtfLine(TRANSLATION, line)
        return AtfLine(COMMENT, line)
    match = LINE_NUMBER_RE.match(stripped)
    if match:
        return AtfLine(TEXT, line, match["number"], match["content"])
    return AtfLine(OTHER, line)


def parse_atf(atf: str) -> list[AtfLine]:
    """All lines of one fragment's ATF, classified."""
    return [classify_line(line) for line in atf.splitlines()]


def text_lines(atf: str) -> list[AtfLine]:
    return [line for line in parse_atf(atf) if line.kind == TEXT]


# ----------------------------------------------------------------------------- reading files
def _decode(data: bytes, source: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AtfError(f"{source} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                       f"convert it to UTF-8 first") from exc
    # NFC: eBL data is NFC, but hand-typed files may carry combining accents (s + caron)
    return unicodedata.normalize("NFC", text)


def _record_to_fragment(record: object, index: int, source: str) -> Fragment:
    if not isinstance(record, dict):
        raise AtfError(f"{source}: record {index} is a {type(record).__name__}, expected an object with 'atf'")
    atf = record.get("atf")
    if not isinstance(atf, str):
        ident = record.get("_id", record.get("museumNumber", f"#{index}"))
        what = "has no 'atf' field" if atf is None else f"has a non-text 'atf' ({type(atf).__name__})"
        raise AtfError(f"{source}: record {index} ({ident}) {what}")
    ident = record.get("_id") or record.get("museumNumber") or f"record-{index}"
    if isinstance(ident, dict):  # museumNumber is {"prefix", "number", "suffix"} in eBL dumps
        ident = ".".join(str(ident.get(k, "")) for k in ("prefix", "number", "suffix") if ident.get(k))
    return Fragment(str(ident), unicodedata.normalize("NFC", atf))


def _parse_json_records(text: str, source: str) -> list[Fragment]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AtfError(f"{source} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
        return [_record_to_fragment(r, i, source) for i, r in enumerate(records)]
    try:  # a single JSON object (one record) rather than JSON Lines
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return [_record_to_fragment(whole, 0, source)]
    fragments = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AtfError(f"{source} line {lineno} is not valid JSON ({exc.msg}, column {exc.colno})") from exc
        fragments.append(_record_to_fragment(record, lineno - 1, source))
    return fragments


def _parse_plain_atf(text: str, source: str) -> list[Fragment]:
    """Plain ATF: '&' header lines (Oracc) start new fragments; without headers the file is one fragment."""
    fragments, current_id, current = [], None, []
    stem = Path(source).stem or "fragment"
    for line in text.splitlines():
        if line.startswith("&"):
            if current_id is not None or any(s.strip() for s in current):
                fragments.append(Fragment(current_id or f"{stem}-{len(fragments)}", "\n".join(current)))
            current_id = line[1:].split("=")[0].strip() or f"{stem}-{len(fragments)}"
            current = []
        else:
            current.append(line)
    if current_id is not None or any(s.strip() for s in current):
        fragments.append(Fragment(current_id or stem, "\n".join(current)))
    return fragments


def parse_corpus(data: bytes | str, source: str = "<upload>") -> list[Fragment]:
    """Parse bytes or text of any accepted format into fragments; refuses an empty corpus."""
    text = _decode(data, source) if isinstance(data, bytes) else unicodedata.normalize("NFC", data)
    stripped = text.lstrip()
    if not stripped:
        raise AtfError(f"{source} is empty: no fragments to read")
    if stripped[0] in "[{":
        fragments = _parse_json_records(text, source)
    else:
        fragments = _parse_plain_atf(text, source)
    check_not_empty(fragments, source)
    return fragments


def check_not_empty(fragments: Sequence[Fragment], source: str) -> None:
    if not fragments:
        raise AtfError(f"{source} holds no fragments")
    if not any(text_lines(f.atf) for f in fragments):
        raise AtfError(f"{source} holds {len(fragments)} fragments but no ATF text lines "
                       f"(text lines start with a line number such as \"1.\" or \"1'.\")")


def load_fragments(path: str | Path) -> list[Fragment]:
    path = Path(path)
    if not path.is_file():
        raise AtfError(f"file not found: {path}")
    return parse_corpus(path.read_bytes(), str(path))


def dedupe_ids(fragments: Iterable[Fragment]) -> list[Fragment]:
    """Make fragment ids unique (a repeated id gets '~2', '~3'): splits are by id."""
    seen: dict[str, int] = {}
    out = []
    for frag in fragments:
        n = seen.get(frag.fragment_id, 0) + 1
        seen[frag.fragment_id] = n
        out.append(frag if n == 1 else Fragment(f"{frag.fragment_id}~{n}", frag.atf))
    return out

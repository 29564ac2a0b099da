"""Clean eBL-ATF text lines into model text, keeping track of what has no ground truth.

Cleaning runs in two passes. `annotate` scans the content of a text line once and gives every raw
character a *role* (sign content, damage flag, bracket, determinative brace, language shift, layout
mark, sign-name qualifier, gap) plus whether it sits in a broken/supplied span, in a determinative, or
in erased text. `render` then keeps or drops each role as `CleanOptions` says. The result is a
`CleanLine`: the cleaned text and a per-character *status* string of the same length:

    'c'  content read on the tablet              -> may be masked and predicted (the loss)
    'b'  broken: inside [ ] or supplied in < >   -> model input only: the editor's restoration, not
                                                     the tablet, so never a target
    'g'  gap: x (one lost sign), ... / …          -> encoded as the reserved GAP id, never a target
    'm'  kept markup (flags, brackets, line no.) -> model input only, never a target

eBL-ATF facts handled: flags ``# ? ! *`` and sign modifiers ``@v`` after signs; brackets ``[ ]``
(also inside words: ``A]N``), ``⸢ ⸣``, ``( )`` (perhaps-missing), ``< >`` and ``<( )>`` (supplied),
``<< >>`` (superfluous, but written on the tablet: content); determinatives ``{d}``, ``{ki}``,
phonetic glosses ``{+e}``, linguistic glosses ``{{...}}``; erasures ``°erased\\written°``; sign-name
qualifiers ``tum!(DU)``, ``1(diš)``, ``tunbarₓ(|KA×SA.BAR|)``; language shifts ``%es``, ``%sux``;
commentary protocols ``!bs``; the blank-space mark ``($___$)``; gaps ``x``, ``...``, ``…``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, fields

from fra_core.atf.parse import TEXT, Fragment, parse_atf
from fra_core.config import JobConfig

CONTENT, FLAG, BRACKET, ERASURE, BRACE, SHIFT, LAYOUT, SIGN_NAME, GAP = (
    "content", "flag", "bracket", "erasure", "brace", "shift", "layout", "sign_name", "gap")
FLAG_CHARS = "#?!*"
GAP_SIGN, GAP_RUN = "x", "…"     # what gaps="mark" writes for one lost sign / a gap of unknown length
_LETTER = re.compile(r"[^\W\d_]")  # any letter (Latin, accented, š ṣ ṭ ĝ ḫ, ...)
_SIGN_END = re.compile(r"[^\W_]|[₀-₉ₓ#?!*|]")  # what may precede a sign-name qualifier "("
_SHIFT_RE = re.compile(r"%[A-Za-z][A-Za-z0-9]*\s?")
_PROTOCOL_RE = re.compile(r"![a-z]{2,}\s?")
_MODIFIER_RE = re.compile(r"@[a-z0-9]+")
_BRACKETS = ("<<", ">>", "<(", ")>", "<", ">", "[", "]", "⸢", "⸣")


# the allowed values of each cleaning option (pages build their widgets from this)
CLEAN_CHOICES = {
    "flags": ("strip", "keep"), "brackets": ("strip", "keep"),
    "determinatives": ("keep", "strip_braces", "drop"), "line_numbers": ("strip", "keep"),
    "shifts": ("strip", "keep"), "layout": ("strip", "keep"), "sign_names": ("drop", "keep"),
    "erasures": ("written", "both"), "gaps": ("mark", "keep", "drop"),
}


@dataclass(frozen=True)
class CleanOptions(JobConfig):
    """What to keep of the ATF markup. Defaults give plain sign text for a restoration model."""

    flags: str = "strip"            # strip | keep      damage flags # ? ! * and sign modifiers @v
    brackets: str = "strip"         # strip | keep      [ ] ⸢ ⸣ ( ) < > << >> <( )>
    determinatives: str = "keep"    # keep | strip_braces | drop   {d}, {ki}, {+e}, {{...}}
    line_numbers: str = "strip"     # strip | keep      1'. a+1.
    shifts: str = "strip"           # strip | keep      %es %sux %akk ...
    layout: str = "strip"           # strip | keep      ($___$), commentary protocols !bs !cm
    sign_names: str = "drop"        # drop | keep       the "(DU)" of tum!(DU), the "(diš)" of 1(diš)
    erasures: str = "written"       # written | both    °erased\\written°: keep only what stands (both:
    #                                                   both texts, the ° \\ marks kept with brackets=keep)
    gaps: str = "mark"              # mark | keep | drop  mark: x -> "x", ... -> "…"

    def __post_init__(self):
        for name, allowed in CLEAN_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"clean option {name}={getattr(self, name)!r}; choose one of {allowed}")

    def clean_options(self) -> "CleanOptions":
        """The cleaning options alone (subclasses such as the dataset config add their own fields)."""
        return CleanOptions(**{f.name: getattr(self, f.name) for f in fields(CleanOptions)})


@dataclass(frozen=True)
class CleanLine:
    text: str
    status: str  # one of c b g m per character of `text`

    def __post_init__(self):
        if len(self.text) != len(self.status):
            raise ValueError(f"text has {len(self.text)} characters but status has {len(self.status)}")


@dataclass(frozen=True)
class Annotated:
    char: str
    role: str
    broken: bool = False     # inside [ ] or a supplied < > / <( )>
    in_brace: bool = False   # inside a determinative / gloss
    erased: bool = False     # before the "\" of an erasure °...\...°


class _Scanner:
    """One pass over the content of a text line; see `annotate`."""

    def __init__(self, content: str):
        self.s = content
        self.out: list[Annotated] = []
        self.broken = self.supplied = False
        self.brace_depth = 0
        self.erasure = 0  # 0 outside, 1 erased part, 2 written part

    def emit(self, text: str, role: str) -> None:
        for ch in text:
            self.out.append(Annotated(ch, role, self.broken or self.supplied, self.brace_depth > 0,
                                      self.erasure == 1))

    def prev_char(self) -> str:
        return self.out[-1].char if self.out else ""

    def run(self) -> list[Annotated]:
        i, s = 0, self.s
        while i < len(s):
            i = self._step(i, s)
        return self.out

    def _step(self, i: int, s: str) -> int:
        """Annotate the symbol at s[i]; returns the index after it."""
        for handler in (self._layout_or_shift, self._bracket, self._erasure, self._brace, self._paren,
                        self._flag_or_gap):
            end = handler(i, s)
            if end:
                return end
        self.emit(s[i], CONTENT)
        return i + 1

    def _layout_or_shift(self, i: int, s: str) -> int:
        if s.startswith("($___$)", i):
            self.emit("($___$)", LAYOUT)
            return i + 7
        if i == 0 or s[i - 1].isspace():  # %es, !bs only start a token; "|UR%UR|" is a compound sign
            for regex, role in ((_SHIFT_RE, SHIFT), (_PROTOCOL_RE, LAYOUT)):
                match = regex.match(s, i)
                if match:
                    self.emit(match.group(0), role)
                    return match.end()
        return 0

    def _bracket(self, i: int, s: str) -> int:
        token = next((t for t in _BRACKETS if s.startswith(t, i)), None)
        if token is None:
            return 0
        # "[" opens a break ("]" also closes one opened on an earlier alternative: "š]e/t]u");
        # "<" and "<(" open text the editor supplies; "<< >>" and "⸢ ⸣" wrap signs that are on the tablet
        if token == "[":
            self.broken = True
        elif token in ("<", "<("):
            self.supplied = True
        self.emit(token, BRACKET)
        if token == "]":
            self.broken = False
        elif token in (">", ")>"):
            self.supplied = False
        return i + len(token)

    def _erasure(self, i: int, s: str) -> int:
        if s[i] == "°":
            self.emit("°", ERASURE)
            self.erasure = 1 if self.erasure == 0 else 0
            return i + 1
        if s[i] == "\\" and self.erasure == 1:  # erased signs before the backslash, written ones after
            self.emit("\\", ERASURE)
            self.erasure = 2
            return i + 1
        return 0

    def _brace(self, i: int, s: str) -> int:
        token = next((t for t in ("{{", "}}", "{+", "{", "}") if s.startswith(t, i)), None)
        if token is None:
            return 0
        if token[0] == "{":
            self.brace_depth += 1
            self.emit(token, BRACE)
        else:
            self.emit(token, BRACE)
            self.brace_depth = max(0, self.brace_depth - 1)
        return i + len(token)

    def _paren(self, i: int, s: str) -> int:
        if s[i] not in "()":
            return 0
        prev = s[i - 1] if i else ""
        if s[i] == "(" and prev and _SIGN_END.match(prev):  # "tum!(DU)", "1(diš)": a sign-name qualifier
            end = _matching_paren(s, i)
            self.emit(s[i:end], SIGN_NAME)
            return end
        self.emit(s[i], BRACKET)  # "[(x)]", "ra-(hat)": perhaps-missing signs
        return i + 1

    def _flag_or_gap(self, i: int, s: str) -> int:
        ch = s[i]
        if ch in FLAG_CHARS:
            self.emit(ch, FLAG)
            return i + 1
        match = _MODIFIER_RE.match(s, i)
        if match:
            self.emit(match.group(0), FLAG)
            return match.end()
        if s.startswith("...", i):
            self.emit("...", GAP)
            return i + 3
        if ch == "…" or (ch == "x" and not _is_letter(s[i - 1] if i else "") and not _is_letter(s[i + 1:i + 2])):
            self.emit(ch, GAP)  # a lone x is a lost sign (Akkadian transliteration has no letter x)
            return i + 1
        return 0


def _is_letter(ch: str) -> bool:
    return bool(ch) and bool(_LETTER.match(ch))


def _matching_paren(s: str, start: int) -> int:
    """Index just past the ")" closing the "(" at `start` (nesting allowed; end of line if unclosed)."""
    depth = 0
    for j in range(start, len(s)):
        depth += {"(": 1, ")": -1}.get(s[j], 0)
        if depth == 0:
            return j + 1
    return len(s)


def annotate(content: str) -> list[Annotated]:
    """Give every character of a text line's content (line number removed) its ATF role."""
    content = unicodedata.normalize("NFC", content).replace("\u00a0", " ").replace("\t", " ")
    return _Scanner(content).run()


_KEEP_ROLE = {FLAG: "flags", BRACKET: "brackets", SHIFT: "shifts", LAYOUT: "layout", SIGN_NAME: "sign_names"}


def render(annotated: list[Annotated], options: CleanOptions = CleanOptions()) -> CleanLine:
    """Apply the options to an annotated line: keep/drop each role, map gaps, normalise spaces."""
    chars: list[str] = []
    status: list[str] = []
    for a in annotated:
        if a.erased and options.erasures == "written":
            continue
        if a.in_brace and options.determinatives == "drop":
            continue
        if a.role == ERASURE:  # the marks mean nothing once the erased signs are gone
            if options.erasures == "both" and options.brackets == "keep":
                chars.append(a.char)
                status.append("m")
            continue
        if a.role == BRACE:
            if options.determinatives == "keep":
                chars.append(a.char)
                status.append("m")
            continue
        if a.role in _KEEP_ROLE:
            if getattr(options, _KEEP_ROLE[a.role]) == "keep":
                chars.append(a.char)
                status.append("m")
            continue
        if a.role == GAP:
            _render_gap(a, chars, status, options)
            continue
        chars.append(a.char)
        status.append("b" if a.broken else "c")
    return _normalise_spaces("".join(chars), "".join(status))


def _render_gap(a: Annotated, chars: list[str], status: list[str], options: CleanOptions) -> None:
    if options.gaps == "drop":
        return
    if options.gaps == "keep":
        chars.append(a.char)
        status.append("g")
        return
    if a.char == "x":
        chars.append(GAP_SIGN)
        status.append("g")
    elif a.char == "…" or not (chars and chars[-1] == GAP_RUN and status[-1] == "g"):
        chars.append(GAP_RUN)  # "..." is three raw dots: write one "…" for the first of them
        status.append("g")


def _normalise_spaces(text: str, status: str) -> CleanLine:
    """Collapse runs of spaces (markup removal leaves doubles) and trim; keeps status aligned."""
    out_c, out_s = [], []
    for ch, st in zip(text, status):
        if ch.isspace():
            if not out_c or out_c[-1] == " ":
                continue
            ch = " "
        out_c.append(ch)
        out_s.append(st)
    while out_c and out_c[-1] == " ":
        out_c.pop()
        out_s.pop()
    return CleanLine("".join(out_c), "".join(out_s))


def clean_text_line(number: str, content: str, options: CleanOptions = CleanOptions()) -> CleanLine:
    """Clean one text line given its number and content (as `parse.classify_line` splits them)."""
    line = render(annotate(content), options)
    if options.line_numbers == "keep" and number:
        prefix = f"{number}. "
        return CleanLine(prefix + line.text, "m" * len(prefix) + line.status)
    return line


def clean_fragment(fragment: Fragment, options: CleanOptions = CleanOptions()) -> list[CleanLine]:
    """The cleaned text lines of a fragment, in order; lines that clean to nothing are dropped."""
    out = []
    for line in parse_atf(fragment.atf):
        if line.kind != TEXT:
            continue
        cleaned = clean_text_line(line.number, line.content, options)
        if cleaned.text:
            out.append(cleaned)
    return out

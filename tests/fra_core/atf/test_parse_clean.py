"""ATF parsing, line classification and cleaning: unit cases and invariants on the real eBL sample."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from fra_core.atf import (
    AtfError,
    CleanOptions,
    Fragment,
    classify_line,
    clean_fragment,
    clean_text_line,
    load_fragments,
    parse_corpus,
    sample_path,
    text_lines,
)

ALL_STRIP = CleanOptions(flags="strip", brackets="strip", determinatives="drop", line_numbers="strip",
                         shifts="strip", layout="strip", sign_names="drop", erasures="written", gaps="mark")


@pytest.fixture(scope="module")
def ebl(ebl_sample):
    return load_fragments(ebl_sample)


@pytest.mark.parametrize("line, kind, number", [
    ("1'. [...] x", "text", "1'"), ("a+1. x [...]", "text", "a+1"), ("A+2'. [x]", "text", "A+2'"),
    ("6'a. [...-r]e-e", "text", "6'a"), ("1'-2'. u₂-[ka]", "text", "1'-2'"), ("0. [2 SUHUR]", "text", "0"),
    ("@obverse", "structure", ""), ("@column 3", "structure", ""), ("$ single ruling", "state", ""),
    ("#note: read u₅?", "note", ""), ("#tr.en: […] night", "translation", ""), ("#loan", "comment", ""),
    ("// (U₂ URU.AN.NA III 1)", "parallel", ""), ("", "blank", ""), ("&P123 = X", "other", ""),
])
def test_classify_line(line, kind, number):
    got = classify_line(line)
    assert got.kind == kind and got.number == number


@pytest.mark.parametrize("content, text, status", [
    ("[DIŠ] U₄#.14.KA[M₂ ...]", "DIŠ U₄.14.KAM₂ …", "bbbcccccccccbbbg"),
    ("($___$) BE-ma x [...]", "BE-ma x …", "ccccccgcg"),
    ("%es [...]-ke₄?#", "…-ke₄", "gcccc"),
    ("PEŠ.GAL {m}{d}PA#-[x x x]", "PEŠ.GAL PA-x x x", "cccccccccccgbgbg"),
    ("ta-pašₓ(ṬU)-šiṭ E{ki}", "ta-pašₓ-šiṭ E", "ccccccccccccc"),
    ("1(diš#) HA#", "1 HA", "cccc"),
    ("EN.°\\LIL₂#{ki#}°-a#-a#", "EN.LIL₂-a-a", "ccccccccccc"),
    ("ši-<si?>-it!?# <<DIŠ>> UZU", "ši-si-it DIŠ UZU", "cccbbcccccccccccc"[:16]),
    ("!bs PEŠ !cm : ra-pa-šu₂", "PEŠ : ra-pa-šu₂", "ccccccccccccccc"),
    ("|UR%UR| @v", "|UR%UR|", "ccccccc"),
])
def test_clean_examples(content, text, status):
    got = clean_text_line("1", content, ALL_STRIP)
    assert (got.text, got.status) == (text, status)


def test_clean_keep_options_keep_markup():
    keep = CleanOptions(flags="keep", brackets="keep", determinatives="keep", line_numbers="keep", shifts="keep",
                        layout="keep", sign_names="keep", gaps="keep")
    got = clean_text_line("2'", "%es [...]-x {d}UTU# tum!(DU)", keep)
    assert got.text == "2'. %es [...]-x {d}UTU# tum!(DU)"
    # kept markup is 'm', the gap keeps its spelling but is 'g'
    assert got.status.startswith("mmmm" + "mmmm" + "m" + "ggg" + "m")
    assert got.status[got.text.index("x")] == "g"
    assert got.status[got.text.index("U")] == "c"


def test_determinative_options():
    strip = CleanOptions(determinatives="strip_braces")
    assert clean_text_line("1", "{d}UTU {uru}kal-hi", strip).text == "dUTU urukal-hi"
    assert clean_text_line("1", "{d}UTU {+mu}GIN", CleanOptions(determinatives="drop")).text == "UTU GIN"
    assert clean_text_line("1", "udu-{{su#-lu}}-SUD", CleanOptions(determinatives="drop")).text == "udu--SUD"


def _leftover_markup(text: str) -> list[str]:
    """ATF markup that ALL_STRIP must have removed from a cleaned line."""
    found = [ch for ch in "#?!*[]⸢⸣()<>{}°\\$" if ch in text]
    found += re.findall(r"(?:^|\s)%[a-z]+", text)          # language shifts (not |UR%UR| compounds)
    found += re.findall(r"@[a-z0-9]+", text)               # sign modifiers
    found += re.findall(r"(?:^|\s)![a-z]{2,}", text)       # commentary protocols
    found += re.findall(r"\.\.\.", text)                   # gaps are marked, not spelled
    if re.match(r"^(?:[A-Za-z]\+)?\d+'*[a-z]?\.\s", text):
        found.append("line number")
    return found


def test_cleaning_real_sample_leaves_no_removed_markup(ebl):
    for frag in ebl:
        for line in clean_fragment(frag, ALL_STRIP):
            assert not _leftover_markup(line.text), (frag.fragment_id, line.text)
            assert set(line.status) <= set("cbg")  # nothing kept as markup


@pytest.mark.parametrize("option", ["flags", "brackets", "shifts", "layout"])
def test_each_strip_option_alone_removes_its_markup(ebl, option):
    """Strip one kind of markup, keep all others: only that kind disappears."""
    keep_all = dict(flags="keep", brackets="keep", determinatives="keep", line_numbers="keep", shifts="keep",
                    layout="keep", sign_names="keep", gaps="keep")
    opts = CleanOptions(**{**keep_all, option: "strip"})
    probes = {"flags": r"[#?*]|@[a-z]", "brackets": r"[\[\]⸢⸣<>]", "shifts": r"(?:^|\s)%[a-z]", "layout": r"\(\$"}
    for frag in ebl[:300]:
        for line in clean_fragment(frag, opts):
            body = re.sub(r"\([^()]*\)", "", line.text)  # sign names are kept verbatim (flags and all)
            assert not re.search(probes[option], body), (option, line.text)


def test_status_is_consistent_on_real_sample(ebl):
    for frag in ebl[:400]:
        for line in clean_fragment(frag):
            for ch, st in zip(line.text, line.status):
                if st == "g":
                    assert ch in "x…"
                if ch == "…":
                    assert st == "g"


def test_gap_modes():
    assert clean_text_line("1", "a [...] x b", CleanOptions(gaps="mark")).text == "a … x b"
    assert clean_text_line("1", "a [...] x b", CleanOptions(gaps="keep")).text == "a ... x b"
    assert clean_text_line("1", "a [...] x b", CleanOptions(gaps="drop")).text == "a b"


def test_bad_option_value():
    with pytest.raises(ValueError, match="flags"):
        CleanOptions(flags="maybe")


# ----------------------------------------------------------------------------- reading files
def test_json_list_jsonl_and_plain_atf(tmp_path):
    recs = [{"_id": "A", "atf": "1. a-na"}, {"_id": "B", "atf": "@obverse\n1'. be-li₂"}]
    (tmp_path / "l.json").write_text(json.dumps(recs), encoding="utf-8")
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in recs), encoding="utf-8")
    (tmp_path / "p.atf").write_text("&X1 = one\n1. a-na\n&X2 = two\n1. be-li₂\n", encoding="utf-8")
    assert [f.fragment_id for f in load_fragments(tmp_path / "l.json")] == ["A", "B"]
    assert [f.fragment_id for f in load_fragments(tmp_path / "r.jsonl")] == ["A", "B"]
    assert [f.fragment_id for f in load_fragments(tmp_path / "p.atf")] == ["X1", "X2"]


@pytest.mark.parametrize("data, message", [
    (b'[{"_id": "A", "atf": "1. a"', "not valid JSON"),
    (b'[{"_id": "A", "text": "1. a"}]', "has no 'atf'"),
    (b'[{"_id": "A", "atf": 5}]', "non-text 'atf'"),
    (b'{"atf": "1. a"}\n{oops}\n', "line 2 is not valid JSON"),
    (b"\xff\xfe1. a-na \xe9", "not UTF-8"),
    (b"   \n", "empty"),
    (b"[]", "no fragments"),
    (b'[{"_id": "A", "atf": "@obverse\\n$ broken"}]', "no ATF text lines"),
])
def test_bad_input_is_a_clear_error(data, message):
    with pytest.raises(AtfError, match=re.escape(message)) as info:
        parse_corpus(data, "upload.json")
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(AtfError, match="not found"):
        load_fragments(tmp_path / "nope.json")


def test_shipped_sample_is_usable():
    frags = load_fragments(sample_path())
    assert len(frags) >= 8
    lines = list(itertools.chain.from_iterable(clean_fragment(f) for f in frags))
    assert sum(len(line.text) for line in lines) > 1500
    assert all(text_lines(f.atf) for f in frags)
    assert isinstance(frags[0], Fragment)

"""Character audit and the character vocabulary (reserved ids, round trips, HF tokenizer agreement)."""

from __future__ import annotations

import pytest

from fra_core.atf import (
    GAP_ID,
    SPECIALS,
    UNK_ID,
    CharVocab,
    CleanLine,
    VocabError,
    audit_fragments,
    build_vocab,
    clean_fragment,
    load_fragments,
    parse_corpus,
)


@pytest.fixture(scope="module")
def ebl_lines(ebl_sample):
    frags = load_fragments(ebl_sample)
    return frags, [line for f in frags for line in clean_fragment(f)]


def test_audit_real_sample(ebl_lines):
    frags, _ = ebl_lines
    report = audit_fragments(frags, max_len=768)
    summary = report.summary()
    assert summary["fragments"] == len(frags) == len(report.fragments)
    assert summary["text_lines"] > 10_000
    assert 50 < summary["distinct_chars"] < 300          # real characters, not a code-point range
    assert 0 < summary["fragments_over_max_len"] < len(frags)
    assert 0.05 < summary["lost_share"] < 0.6
    assert all(not row["known"] for row in report.chars if row["char"] in report.unknown)


def test_audit_flags_unknown_characters():
    frags = parse_corpus('[{"_id": "Q", "atf": "1. ta-la-áš ½ ša₂"}]', "t.json")
    report = audit_fragments(frags)
    assert set(report.unknown) == {"á", "½"}
    assert report.unknown_examples["á"] == "Q"


def test_vocab_reserved_ids_and_real_chars(ebl_lines):
    _, lines = ebl_lines
    vocab = build_vocab(lines)
    assert vocab.token(0) == "<pad>" and vocab.token(1) == "<mask>" and vocab.token(GAP_ID) == "<gap>"
    assert len(vocab) == len(SPECIALS) + len(vocab.chars)
    assert len(vocab) < 300  # not ord(max char) + 1
    assert "[" not in vocab.chars and "#" not in vocab.chars  # stripped markup is not in the vocabulary
    assert " " in vocab.chars and "\n" in vocab.chars


def test_vocab_ids_round_trip_on_real_sample(ebl_lines, tmp_path):
    _, lines = ebl_lines
    vocab = build_vocab(lines)
    loaded = CharVocab.load(vocab.save(tmp_path / "vocab.json"))
    assert loaded == vocab
    for line in lines[:3000]:
        ids = loaded.encode(line.text, line.status)
        assert UNK_ID not in ids
        assert [i == GAP_ID for i in ids] == [st == "g" for st in line.status]
        # every non-gap character decodes back to itself
        back = loaded.decode(ids, gap="\0")
        assert all(b == c for b, c, st in zip(back, line.text, line.status) if st != "g")
        assert len(back) == len(line.text)


def test_tokenizer_has_the_same_ids(ebl_lines):
    _, lines = ebl_lines
    vocab = build_vocab(lines)
    tok = vocab.to_tokenizer()
    text = "\n".join(line.text for line in lines[:50] if "g" not in line.status)
    ids = tok(text)["input_ids"]
    assert ids[0] == 4  # <bos>
    assert ids[1:] == vocab.encode(text)
    assert tok.convert_ids_to_tokens(1) == "<mask>"


def test_unknown_char_maps_to_unk_and_bad_vocab_files(tmp_path):
    vocab = build_vocab([CleanLine("ab", "cc")])
    assert vocab.encode("z") == [UNK_ID]
    (tmp_path / "v.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(VocabError):
        CharVocab.load(tmp_path / "v.json")
    with pytest.raises(VocabError):
        CharVocab(("ab",))
    with pytest.raises(VocabError, match="empty"):
        build_vocab([], extra=())

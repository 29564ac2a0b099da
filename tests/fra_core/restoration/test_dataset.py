"""Restoration dataset on the real eBL sample: masks only on read characters, reserved ids, chunking by
line, splits by fragment, save/load round trip, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from fra_core.atf import (
    BOS_ID,
    GAP_ID,
    LINE_SEP,
    MASK_ID,
    SPECIALS,
    AtfError,
    CleanLine,
    clean_fragment,
    load_fragments,
    parse_corpus,
)
from fra_core.restoration.dataset import (
    IGNORE_INDEX,
    BuildDatasetConfig,
    DatasetBuildError,
    build_examples,
    build_restoration_dataset,
    chunk_lines,
    load_restoration_dataset,
    maskable_positions,
    sample_mask,
)

MARKUP = set("#?!*[]⸢⸣<>(){}°\\$")  # "%" is content inside compounds (|UR%UR|); shifts checked below


@pytest.fixture(scope="module")
def ebl_fragments(ebl_sample):
    return load_fragments(ebl_sample)


@pytest.fixture(scope="module")
def built(ebl_fragments):
    cfg = BuildDatasetConfig(max_len=256, mask_rate=0.2, flags="keep", brackets="keep")  # markup present
    return cfg, *build_examples(ebl_fragments, cfg)


def _rows(examples):
    return [r for rows in examples.values() for r in rows]


def _check_masked_positions(row, masked_positions):
    for i in masked_positions:
        assert i > 0, "never mask <bos>"
        ch, st = row["text"][i - 1], row["status"][i - 1]
        assert st == "c", (ch, st, row["text"])
        assert row["input_ids"][i] not in (GAP_ID, MASK_ID) and row["input_ids"][i] >= len(SPECIALS)
        assert ch not in MARKUP and ch not in ("x", "…", LINE_SEP)
        if ch == "%":  # a compound-sign operator, never a language shift (%es at a word start)
            assert i >= 2 and not row["text"][i - 2].isspace()


def test_no_masked_position_is_a_gap_or_marker(built):
    _, examples, _ = built
    n_masked = 0
    for row in _rows(examples):
        positions = [i for i, t in enumerate(row["masked_ids"]) if t == MASK_ID]
        _check_masked_positions(row, positions)
        n_masked += len(positions)
    assert n_masked > 10_000


def test_dynamic_masks_respect_the_same_rule(built):
    cfg, examples, _ = built
    rng = np.random.default_rng(1)
    for row in examples["train"][:300]:
        mask = sample_mask(np.asarray(row["maskable"], dtype=bool), rng, 0.3, 0.7, cfg.max_span)
        _check_masked_positions(row, np.flatnonzero(mask))


def test_masks_use_reserved_ids_and_labels_hold_the_truth(built):
    _, examples, vocab = built
    assert MASK_ID < len(SPECIALS) and vocab.token(MASK_ID) == "<mask>"
    assert "-" in vocab.chars and "#" in vocab.chars  # ATF joiner and flag are ordinary characters here
    for row in _rows(examples)[:500]:
        ids, masked, labels = map(np.asarray, (row["input_ids"], row["masked_ids"], row["labels"]))
        assert MASK_ID not in ids and ids[0] == BOS_ID
        is_masked = masked == MASK_ID
        assert (labels[is_masked] == ids[is_masked]).all() and (labels[~is_masked] == IGNORE_INDEX).all()
        assert (masked[~is_masked] == ids[~is_masked]).all()


def test_spans_and_single_characters_are_both_masked(built):
    from fra_core.restoration.evaluate import gap_runs

    _, examples, _ = built
    lengths = [e - s for r in examples["train"][:300] for s, e in gap_runs(np.asarray(r["masked_ids"]) == MASK_ID)]
    assert 1 in lengths and max(lengths) >= 4


def test_no_fragment_in_two_splits(built):
    _, examples, _ = built
    owners = {}
    for split, rows in examples.items():
        for row in rows:
            assert owners.setdefault(row["fragment_id"], split) == split
    counts = {split: len({r["fragment_id"] for r in rows}) for split, rows in examples.items()}
    assert counts["validation"] > 0 and counts["test"] > 0 and counts["train"] > 5 * counts["test"]


def test_chunks_fit_and_are_whole_lines(built, ebl_fragments):
    cfg, examples, _ = built
    by_id = {f.fragment_id: f for f in ebl_fragments}
    n_multi = 0
    for row in examples["train"][:200]:
        assert len(row["input_ids"]) <= cfg.max_len
        lines = [line.text for line in clean_fragment(by_id[row["fragment_id"]], cfg.clean_options())]
        for piece in row["text"].split(LINE_SEP):
            assert any(piece in line for line in lines)
        n_multi += row["chunk"] > 0
    assert n_multi > 0  # long fragments were chunked


def test_long_line_is_cut_at_a_space():
    line = CleanLine("ab cd ef gh ij", "c" * 14)
    chunks = chunk_lines([line, CleanLine("kl", "cc")], max_chars=6)
    assert [c.text for c in chunks] == ["ab cd", "ef gh", "ij\nkl"]
    assert all(len(c.text) == len(c.status) for c in chunks)
    assert maskable_positions(chunks[-1]).tolist() == [False, True, True, False, True, True]


def test_save_and_load_round_trip(workspace, ebl_fragments):
    cfg = BuildDatasetConfig(name="ebl-small", max_len=128)
    folder = build_restoration_dataset(cfg, workspace, fragments=ebl_fragments[:60])
    dsd, vocab, settings = load_restoration_dataset("ebl-small", workspace)
    assert set(dsd) == {"train", "validation", "test"}
    assert settings["config"] == cfg.to_dict() and settings["config_hash"] == cfg.config_hash()
    assert BuildDatasetConfig.from_dict(settings["config"]) == cfg
    row = dsd["train"][0]
    assert vocab.decode(row["input_ids"], gap="x").replace("…", "x") == row["text"].replace("…", "x")
    with pytest.raises(DatasetBuildError, match="already exists"):
        build_restoration_dataset(cfg, workspace, fragments=ebl_fragments[:5])
    assert sorted(p.name for p in workspace.datasets.iterdir()) == ["ebl-small"]  # no temp folders left
    assert folder == workspace.datasets / "ebl-small"


def test_bad_corpora_write_nothing(workspace, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    with pytest.raises(AtfError, match="no fragments"):
        build_restoration_dataset(BuildDatasetConfig(source=str(empty), name="e"), workspace)
    only_gaps = parse_corpus('[{"_id": "G", "atf": "1. [...]\\n2. %es"}]', "g.json")
    with pytest.raises(DatasetBuildError, match="nothing to build"):
        build_restoration_dataset(BuildDatasetConfig(name="g", gaps="drop"), workspace, fragments=only_gaps)
    assert list(workspace.datasets.iterdir()) == []
    with pytest.raises(ValueError, match="mask"):
        BuildDatasetConfig(mask_rate=0)

"""Text sources: local files, saved HF datasets, streamed HF (offline: fails fast), demo text."""

import json
import time

import pytest

from fra_core import hub
from fra_core.datasets import DatasetError, open_texts


def test_txt_lines_and_paragraphs(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("first text\nsecond text\nthird text\n")
    assert list(open_texts(str(lines)).texts()) == ["first text", "second text", "third text"]
    spaced = tmp_path / "spaced.txt"  # stray blank lines between one-line texts: still one text per line
    spaced.write_text("first text\n\nsecond text\n\n\nthird text\n")
    assert list(open_texts(str(spaced)).texts()) == ["first text", "second text", "third text"]
    paras = tmp_path / "paras.txt"
    paras.write_text("a b\nc d\n\ne f\ng\n")
    assert list(open_texts(str(paras)).texts()) == ["a b c d", "e f g"]
    assert list(open_texts(str(lines)).texts(limit=2)) == ["first text", "second text"]


def test_jsonl_and_missing_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "id": i}) for i in range(5)))
    assert list(open_texts(str(path)).texts(3)) == ["t0", "t1", "t2"]
    with pytest.raises(DatasetError, match=r"text column 'body' not in .*keys \['id', 'text'\]"):
        open_texts(str(path), text_column="body")


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        open_texts(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DatasetError, match="empty"):
        open_texts(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n")
    with pytest.raises(DatasetError, match="no text"):
        open_texts(str(blank))
    with pytest.raises(DatasetError, match="no dataset"):
        open_texts("  ")
    with pytest.raises(DatasetError, match="not found"):
        open_texts(f"disk:{tmp_path / 'nothing'}")


def test_workspace_relative_path(workspace):
    (workspace.datasets / "mine.txt").write_text("hello world\n")
    assert list(open_texts("mine.txt").texts()) == ["hello world"]


def test_saved_hf_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(600)], "n": list(range(600))})
    ds.save_to_disk(str(tmp_path / "ds"))
    src = open_texts(f"disk:{tmp_path / 'ds'}")
    assert src.size == 600
    texts = list(src.texts())
    assert texts[0] == "row 0" and texts[-1] == "row 599" and len(texts) == 600
    assert list(src.texts(3)) == ["row 0", "row 1", "row 2"]
    with pytest.raises(DatasetError, match=r"text column 'content' not in .*columns: \['text', 'n'\]"):
        open_texts(f"disk:{tmp_path / 'ds'}", text_column="content")
    datasets.Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="empty"):
        open_texts(f"disk:{tmp_path / 'empty'}")
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DatasetError, match=r"split 'train' not in .*\['validation'\]"):
        open_texts(f"disk:{tmp_path / 'dd'}")
    assert list(open_texts(f"disk:{tmp_path / 'dd'}", split="validation").texts(1)) == ["row 0"]


def test_streamed_dataset_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(DatasetError, match="cannot stream 'Elriggs/openwebtext-100k': HF_HUB_OFFLINE"):
        open_texts("hf:Elriggs/openwebtext-100k")
    assert time.time() - t0 < 5


def test_demo_texts_are_prefix_stable():
    a = list(open_texts("demo", seed=3).texts(5))
    b = list(open_texts("demo", seed=3).texts(8))
    assert a == b[:5] and len(set(b)) == 8


def test_streamed_dataset_fails_fast_when_hub_unreachable(monkeypatch):

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(DatasetError, match="Hub is unreachable.*disk:<folder>"):
        open_texts("hf:Elriggs/openwebtext-100k")
    with pytest.raises(DatasetError, match="expected hf:<dataset name>"):
        open_texts("hf:")

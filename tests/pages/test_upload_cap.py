"""The upload size cap (`FRA_UPLOAD_MAX_MB`) on the pages that take uploads: an over-size file is refused
with a message naming its size and the limit, and nothing is written; a file under the cap goes through."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
CAP_MB = 0.01  # 10 KiB: the tests need no large buffers


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / name), default_timeout=120)
    at.run()
    return at


def test_convert_page_refuses_an_oversize_checkpoint_and_writes_nothing(workspace, monkeypatch):
    monkeypatch.setenv("FRA_UPLOAD_MAX_MB", str(CAP_MB))
    before = _files(workspace.root)
    at = _page("restoration_convert.py")
    assert at.radio[0].value == "Upload"  # no trained run in this workspace
    at.get("file_uploader")[0].upload("big.pt", b"\0" * 20_000).run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert errors == ["Upload refused: upload 'big.pt' is 0.0191 MB (20,000 bytes); the limit is 0.01 MB "
                      "(FRA_UPLOAD_MAX_MB): nothing was stored"]
    assert _files(workspace.root) == before  # nothing stored, not even a temp file
    assert not (workspace.root / "uploads").exists() or not _files(workspace.root / "uploads")
    assert all(b.disabled for b in at.button)  # no checkpoint to verify or save

    # the same page path with a file under the cap stores it, per user, under a generated name
    at.get("file_uploader")[0].upload("small.pt", b"\0" * 1_000).run()
    assert not at.exception, at.exception
    assert not any("Upload refused" in e.value for e in at.error)
    stored = _files(workspace.root / "uploads")
    assert len(stored) == 1 and stored[0].suffix == ".pt" and stored[0].name != "small.pt"
    assert stored[0].read_bytes() == b"\0" * 1_000


def test_data_page_refuses_an_oversize_upload(workspace, monkeypatch):
    monkeypatch.setenv("FRA_UPLOAD_MAX_MB", str(CAP_MB))
    before = _files(workspace.root)
    at = _page("restoration_data.py")
    at.radio[0].set_value("Upload").run()
    big = ("1. a b c\n" * 3_000).encode()  # ~27 KB of ATF
    at.get("file_uploader")[0].upload("big.atf", big, "text/plain").run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "upload 'big.atf' is 0.0257 MB (27,000 bytes); the limit is 0.01 MB" in errors[0], errors
    assert not at.tabs  # the page stopped: no audit of the refused file
    assert _files(workspace.root) == before

    at.get("file_uploader")[0].upload("small.atf", ("1. a b c\n" * 100).encode(), "text/plain").run()
    assert not at.exception, at.exception
    assert not any("the limit is" in e.value for e in at.error) and at.tabs  # under the cap: audited

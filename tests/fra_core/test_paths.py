"""Server mode confines every typed path to the workspace: `..`, absolute paths and symlink escapes are
refused at each place a path is typed (datasets, models, SAEs, restoration data and datasets, the
converter's checkpoint / verification text / output); local mode keeps paths as typed; uploads are
size-capped and stored per user under generated names."""

from __future__ import annotations

import os

import pytest

from fra_core.datasets import DatasetError, open_texts
from fra_core.paths import PathError, confine, save_upload, user_path

OUTSIDE = ["../../../../../etc/passwd", "/etc/passwd", "~/x.txt", "datasets/../../outside.txt", "..\\..\\x"]


@pytest.fixture
def server(workspace, monkeypatch, tmp_path):
    """Server mode, a workspace with one dataset file, a secret outside, and a symlink pointing at it."""
    monkeypatch.setenv("FRA_SERVER_MODE", "1")
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret line\n")
    workspace.datasets.mkdir(parents=True, exist_ok=True)
    (workspace.datasets / "ok.txt").write_text("hello world\nsecond text\n")
    os.symlink(secret, workspace.datasets / "escape.txt")
    os.symlink(tmp_path, workspace.root / "escape-dir")
    os.symlink(tmp_path, workspace.models / "evil")
    os.symlink(tmp_path, workspace.saes / "evil")
    return workspace


def _refused(fn, *args, **kwargs):
    with pytest.raises(PathError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)  # one line, naming the field and the value
    return str(info.value)


def test_confine_rules(tmp_path):
    root = tmp_path / "ws"
    (root / "a").mkdir(parents=True)
    assert confine("a/b.txt", root) == (root / "a" / "b.txt").resolve()
    assert confine("b.txt", root, base=root / "a") == (root / "a" / "b.txt").resolve()
    assert "absolute" in _refused(confine, "/etc/passwd", root, what="dataset path")
    assert "'..'" in _refused(confine, "a/../../x", root)
    assert "absolute" in _refused(confine, "~/x", root)
    assert "empty" in _refused(confine, "  ", root)
    os.symlink(tmp_path, root / "link")
    message = _refused(confine, "link/x", root, what="model")
    assert message.startswith("model 'link/x'") and "outside the workspace" in message


def test_datasets_are_confined(server):
    assert list(open_texts("ok.txt").texts()) == ["hello world", "second text"]
    for spec in OUTSIDE + ["escape.txt", "escape-dir/secret.txt", "disk:../../x", "disk:/etc"]:
        _refused(open_texts, spec)


def test_local_mode_keeps_typed_paths(workspace, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("a local user may read their own files\n")
    assert list(open_texts(str(outside)).texts()) == ["a local user may read their own files"]
    assert user_path("~/x") == user_path("~/x").expanduser()


def test_models_and_saes_are_confined(server):
    from fra_core.models import load_model
    from fra_core.sae import load_sae

    for ref in ["../../etc", "/etc", "evil", "escape-dir/x"]:
        _refused(load_model, ref, "cpu")
    for ref in ["../../etc", "/tmp", "evil", "escape-dir/x", "ckkissane:/etc/passwd.pt", "ckkissane:../x.pt",
                "ckkissane:escape-dir/x.pt"]:
        _refused(load_sae, ref, "cpu")


def test_restoration_paths_are_confined(server):
    from fra_core.restoration.convert import convert_checkpoint, out_folder
    from fra_core.restoration.dataset import resolve_dataset

    for ref in ["../../x", "/etc", "escape-dir"]:
        _refused(resolve_dataset, ref, server)
    for path in ["/etc/passwd", "../../x.pt", "escape-dir/secret.txt"]:
        _refused(convert_checkpoint, path, None)
    (server.root / "ok.pt").write_bytes(b"")
    for data in ["/etc/passwd", "../x.json", "escape-dir/secret.txt", f"{server.root}/../secret.txt"]:
        _refused(convert_checkpoint, "ok.pt", None, data=data)
    # an absolute path the app made inside the workspace (a stored upload) passes confinement
    with pytest.raises(ValueError) as info:
        convert_checkpoint(str(server.root / "ok.pt"), None)
    assert not isinstance(info.value, PathError)
    for out in ["/tmp/model", "../model", "evil/model", "evil"]:
        _refused(out_folder, out)
    assert out_folder("restorer") == (server.models / "restorer").resolve()


def test_uploads_are_stored_per_user_under_generated_names(server, monkeypatch):
    path = save_upload(server, "alice@example.org", "../../etc/passwd.pt", b"weights", (".pt",))
    assert path.parent == server.root / "uploads" / "alice_example.org"
    assert path.suffix == ".pt" and "passwd" not in path.name and path.read_bytes() == b"weights"
    other = save_upload(server, "../../bob", "model.pt", b"other", (".pt",))
    assert other.parent.parent == server.root / "uploads" and other != path
    assert "expected a .pt file" in _refused(save_upload, server, "alice", "x.sh", b"#!", (".pt",))
    monkeypatch.setenv("FRA_UPLOAD_MAX_MB", "0.001")
    assert "limit is" in _refused(save_upload, server, "alice", "big.pt", b"x" * 2048, (".pt",))


def test_dataset_error_types_still_raise_for_missing_files(server):
    with pytest.raises(DatasetError, match="not found"):
        open_texts("missing.txt")

"""Folder overwrite never loses both: kill -9 at each step of a replace leaves the old or the new folder."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from fra_core import atomic
from fra_core.atomic import atomic_folder, recover_aside
from tests.conftest import REPO_ROOT

# the child replaces <folder> by a folder holding new.txt, and kills itself at step <where>
CHILD = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from fra_core import atomic
    folder, where, swap = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "swap"
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if not swap:
        atomic.exchange = lambda a, b: False
    real_replace, real_rmtree = os.replace, shutil.rmtree
    calls = {"replace": 0}
    def replace(a, b):
        calls["replace"] += 1
        if where == "between-renames" and calls["replace"] == 2:
            die()
        return real_replace(a, b)
    os.replace = replace
    if where == "before-delete-old":
        atomic.shutil.rmtree = lambda p, ignore_errors=False: die() if ".aside-" in str(p) or swap else real_rmtree(p)
    with atomic.atomic_folder(folder, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        if where == "while-writing":
            die()
""")


def _old(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    return folder


@pytest.mark.parametrize("swap", ["swap", "aside"])
@pytest.mark.parametrize("where", ["while-writing", "between-renames", "before-delete-old", "never"])
def test_kill_during_overwrite_leaves_old_or_new(tmp_path, where, swap):
    if swap == "swap" and atomic._LIBC is None:
        pytest.skip("no renameat2 here")
    if swap == "swap" and where == "between-renames":
        pytest.skip("an exchange is one call: there is no moment between two renames")
    folder = _old(tmp_path)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), where, swap], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == (0 if where == "never" else -signal.SIGKILL), proc.stderr
    recover_aside(folder)  # what the next atomic_folder on this name does first
    names = sorted(p.name for p in folder.iterdir())
    assert names in (["old.txt"], ["new.txt"])
    if where in ("while-writing", "between-renames"):
        assert names == ["old.txt"]
    else:
        assert names == ["new.txt"]
    assert not list(tmp_path.glob(".model.aside-*"))


def test_refuses_existing_without_overwrite_and_cleans_up_on_error(tmp_path):
    folder = _old(tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_folder(folder):
            pass
    with pytest.raises(RuntimeError):
        with atomic_folder(folder, overwrite=True) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("job failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (folder / "old.txt").read_text() == "old"


def test_overwrite_replaces_contents(tmp_path):
    folder = _old(tmp_path)
    with atomic_folder(folder, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

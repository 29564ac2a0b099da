"""Write a folder all at once: fill a temp folder beside it, then rename it into place.

A reader (the app, another job) either sees the previous folder or the complete new one, never half a
model/SAE/dataset; a failure or a cancelled job leaves nothing behind.

Replacing an existing folder never deletes it first. On Linux the new folder and the old one swap names
in one `renameat2(RENAME_EXCHANGE)` call; elsewhere the old folder is renamed aside (`.<name>.aside-*`)
before the new one takes its name, and `recover_aside` (run by every `atomic_folder` on that name) puts it
back if a crash came between the two renames. Either way a crash leaves the old or the new folder.
The old folder is deleted only once the new one is in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return lib if hasattr(lib, "renameat2") else None
    except OSError:
        return None


_LIBC = _libc()


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names of two existing paths; False where the system cannot."""
    if _LIBC is None:
        return False
    rc = _LIBC.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: the file system cannot swap
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _asides(folder: Path) -> list[Path]:
    return sorted(folder.parent.glob(f".{folder.name}.aside-*"))


def recover_aside(folder: str | Path) -> bool:
    """Put back the old folder a crash left renamed aside (only while `folder` itself is missing); the
    asides of a completed replace are deleted. True if one was restored."""
    folder = Path(folder)
    asides = _asides(folder)
    restored = False
    if asides and not folder.exists():
        os.replace(asides.pop(), folder)
        restored = True
    for aside in asides if folder.exists() else []:
        shutil.rmtree(aside, ignore_errors=True)
    return restored


def replace_folder(new: Path, folder: Path) -> None:
    """Make `new` become `folder`; the old `folder` (if any) is deleted only after the switch."""
    if not folder.exists():
        os.replace(new, folder)
        return
    if exchange(new, folder):
        shutil.rmtree(new, ignore_errors=True)  # `new` now names the old folder
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.aside-", dir=folder.parent))
    os.rmdir(aside)
    os.replace(folder, aside)
    os.replace(new, folder)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_folder(folder: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder; on success it becomes `folder` (replacing it only if `overwrite`).

    Raises FileExistsError — before any work when `folder` exists already, or at the end when another
    process created it meanwhile — unless `overwrite` is set.
    """
    folder = Path(folder)
    recover_aside(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists (choose another name)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        if folder.exists() and not overwrite:
            raise FileExistsError(f"{folder} appeared while it was being written; not overwriting it")
        replace_folder(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

"""Write a folder all at once: fill a temp folder beside it, then rename it into place.

A reader (the app, another job) either sees the previous folder or the complete new one, never half a
model/SAE/dataset; a failure or a cancelled job leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_folder(folder: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder; on success it becomes `folder` (replacing it only if `overwrite`).

    Raises FileExistsError — before any work when `folder` exists already, or at the end when another
    process created it meanwhile — unless `overwrite` is set.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists (choose another name)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        if folder.exists():
            if not overwrite:
                raise FileExistsError(f"{folder} appeared while it was being written; not overwriting it")
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

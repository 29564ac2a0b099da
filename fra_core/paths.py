"""Paths typed or uploaded by users, confined to the workspace in server mode.

In local single-user mode (the default) a typed path means what it says, as in a terminal. In server mode
(`fra_core.server.server_mode()`) every path a user types — a dataset, an SAE or model folder, a
checkpoint, verification text, restoration data, a "Save as" target — goes through `confine`: it must be
relative, contain no `..`, and resolve (symlinks followed) to a place inside the workspace folder; anything
else is refused with a one-line `PathError` naming the field and the value. Uploads are stored by
`save_upload`: size-capped, per user, under a generated name (the user's file name is never a path).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path, PurePosixPath, PureWindowsPath

from fra_core.errors import FRAStudioError
from fra_core.server import server_mode
from fra_core.workspace import Workspace

DEFAULT_UPLOAD_MAX_MB = 200.0
_SUFFIX_RE = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


class PathError(FRAStudioError):
    """A typed or uploaded path that is not allowed (outside the workspace, too large, ...)."""


def confine(text: str | Path, root: str | Path, base: str | Path | None = None, what: str = "path",
            app_path: bool = False) -> Path:
    """`text` resolved under `base` (default `root`), refused unless it stays inside `root`.
    `app_path=True` also accepts an absolute path inside `root` (one the app made itself, e.g. a stored
    upload or a trained checkpoint, handed to the library); what users type is always relative."""
    raw = str(text).strip()
    if not raw:
        raise PathError(f"{what}: empty path")
    if "\x00" in raw:
        raise PathError(f"{what} {raw!r}: contains a NUL character")
    if app_path and PurePosixPath(raw).is_absolute() and ".." not in PurePosixPath(raw).parts:
        return _inside(Path(raw).resolve(), Path(root).resolve(), raw, what)
    if raw.startswith("~") or PurePosixPath(raw).is_absolute() or PureWindowsPath(raw).is_absolute() \
            or PureWindowsPath(raw).drive:
        raise PathError(f"{what} {raw!r}: absolute paths are not allowed on this server; give a path inside "
                        "the workspace")
    if ".." in PurePosixPath(raw.replace("\\", "/")).parts:
        raise PathError(f"{what} {raw!r}: '..' is not allowed on this server")
    root_real = Path(root).resolve()
    base_real = Path(base).resolve() if base is not None else root_real
    return _inside((base_real / raw).resolve(), root_real, raw, what)


def _inside(target: Path, root_real: Path, raw: str, what: str) -> Path:
    if target != root_real and root_real not in target.parents:
        raise PathError(f"{what} {raw!r}: resolves to {target}, outside the workspace (a symlink?)")
    return target


def user_path(text: str | Path, workspace: Workspace | None = None, base: str | Path | None = None,
              what: str = "path") -> Path:
    """A path a user typed: confined to the workspace in server mode, as typed (~ expanded) otherwise."""
    if not server_mode():
        return Path(str(text).strip()).expanduser()
    workspace = workspace or Workspace.from_env()
    return confine(text, workspace.root, base, what)


def upload_max_bytes() -> int:
    text = os.environ.get("FRA_UPLOAD_MAX_MB", "").strip()
    try:
        mb = float(text) if text else DEFAULT_UPLOAD_MAX_MB
    except ValueError:
        raise PathError(f"FRA_UPLOAD_MAX_MB={text!r} is not a number") from None
    return int(mb * 1024 * 1024)


def check_upload_size(data: bytes, name: str = "upload") -> bytes:
    limit = upload_max_bytes()
    if len(data) > limit:
        raise PathError(f"upload {name!r} is {len(data) / 2**20:.3g} MB ({len(data):,} bytes); the limit is "
                        f"{limit / 2**20:.3g} MB (FRA_UPLOAD_MAX_MB): nothing was stored")
    return data


def _user_folder(user: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", user or "local").strip("._-")[:64]
    return slug or "user"


def save_upload(workspace: Workspace, user: str, file_name: str, data: bytes,
                allowed_suffixes: tuple[str, ...] | None = None) -> Path:
    """Store an upload as `uploads/<user>/<random>.<suffix>` (written atomically) and return its path."""
    check_upload_size(data, file_name)
    suffix = Path(file_name or "").suffix.lower()
    if not _SUFFIX_RE.match(suffix):
        suffix = ""
    if allowed_suffixes is not None and suffix not in allowed_suffixes:
        raise PathError(f"upload {file_name!r}: expected a {' / '.join(allowed_suffixes)} file")
    folder = workspace.root / "uploads" / _user_folder(user)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}{suffix}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path

"""Server mode: configuration for a shared internal server (login, roles, limits). No streamlit here.

Local single-user mode is the default and needs no configuration. Server mode is on when
`FRA_SERVER_CONFIG` names a TOML file (or `FRA_SERVER_MODE=1` for the path and role rules alone)::

    # server.toml
    auth = "oidc"                  # "oidc" (st.login; provider in .streamlit/secrets.toml [auth]) or "password"
    default_role = "viewer"        # role of a signed-in user not listed below ("none": refused)
    gpu_jobs = 1                   # concurrent jobs per device (queue beyond)
    cpu_jobs = 2

    [roles]
    admin = ["alice@example.org"]
    researcher = ["bob@example.org", "carol@example.org"]
    viewer = ["*@example.org"]     # a "*@domain" pattern matches every address of that domain

    [passwords]                    # auth = "password": user = "pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>"
    bob = "pbkdf2_sha256$200000$…$…"   # make one with: python -m fra_core hash-password

Roles: admin (everything, any user's jobs), researcher (runs jobs, labels; own jobs only), viewer (reads
runs and pair tables, nothing else).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fra_core.errors import FRAStudioError

ROLES = ("admin", "researcher", "viewer")
CONFIG_ENV, MODE_ENV = "FRA_SERVER_CONFIG", "FRA_SERVER_MODE"
PBKDF2_ITERATIONS = 200_000


class ServerConfigError(FRAStudioError):
    """A server configuration that cannot be used (bad TOML, unknown role, ...)."""


def server_mode() -> bool:
    return bool(os.environ.get(CONFIG_ENV, "").strip()) or \
        os.environ.get(MODE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ServerConfig:
    auth: str = "oidc"
    default_role: str = "viewer"
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    gpu_jobs: int = 1
    cpu_jobs: int = 2

    @classmethod
    def load(cls) -> "ServerConfig | None":
        """The configuration of this process (None in local mode)."""
        if not server_mode():
            return None
        path = os.environ.get(CONFIG_ENV, "").strip()
        if not path:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ServerConfigError(f"{CONFIG_ENV}={path}: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "ServerConfig":
        auth = data.get("auth", "oidc")
        if auth not in ("oidc", "password"):
            raise ServerConfigError(f"server config: auth = {auth!r}; use 'oidc' or 'password'")
        default = data.get("default_role", "viewer")
        if default not in (*ROLES, "none"):
            raise ServerConfigError(f"server config: default_role = {default!r}; use one of {ROLES} or 'none'")
        roles = data.get("roles", {}) or {}
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise ServerConfigError(f"server config: unknown roles {unknown}; roles are {list(ROLES)}")
        for key in ("gpu_jobs", "cpu_jobs"):
            value = data.get(key, 1 if key == "gpu_jobs" else 2)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ServerConfigError(f"server config: {key} = {value!r}; expected a whole number >= 1")
        return cls(auth=auth, default_role=default, roles={r: tuple(v) for r, v in roles.items()},
                   passwords=dict(data.get("passwords", {}) or {}), gpu_jobs=data.get("gpu_jobs", 1),
                   cpu_jobs=data.get("cpu_jobs", 2))

    def role_of(self, user: str | None) -> str | None:
        """The user's role (the highest that lists them), the default role, or None (refused)."""
        if not user:
            return None
        for role in ROLES:
            if any(fnmatch.fnmatchcase(user.lower(), p.lower()) for p in self.roles.get(role, ())):
                return role
        return None if self.default_role == "none" else self.default_role


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check of `password` against a `hash_password` string (False for a malformed one)."""
    try:
        scheme, iterations, salt, digest = (stored or "").split("$")
        if scheme != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), bytes.fromhex(salt), int(iterations))
        return hmac.compare_digest(got, bytes.fromhex(digest))
    except ValueError:
        return False


def cli_main(argv: list[str]) -> int:
    """`python -m fra_core hash-password`: read a password (twice, not echoed) and print its hash."""
    import getpass
    import sys

    if argv:
        print("usage: python -m fra_core hash-password   (asks for the password)", file=sys.stderr)
        return 2
    first = getpass.getpass("Password: ")
    if len(first) < 8:
        print("error: use at least 8 characters", file=sys.stderr)
        return 2
    if getpass.getpass("Again: ") != first:
        print("error: the two passwords differ", file=sys.stderr)
        return 2
    print(hash_password(first))
    return 0

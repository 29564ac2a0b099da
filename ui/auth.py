"""Who is using the app: the signed-in user and their role (server mode), or the local user (default).

Local single-user mode (no `FRA_SERVER_CONFIG`): the user is "local" with every right. Server mode
(`fra_core.server`): the user signs in through Streamlit's OIDC (`st.login`, provider in
`.streamlit/secrets.toml` `[auth]`) or through the password gate (hashed secrets in the server config,
constant-time compare); their role comes from the server config. Not a page itself.
"""

from __future__ import annotations

import os

import streamlit as st

from fra_core.errors import FRAStudioError
from fra_core.server import CONFIG_ENV, MODE_ENV, ServerConfig, verify_password

USER_KEY = "fra_user"  # password gate: the signed-in user name
LOCAL_USER = "local"


@st.cache_resource(show_spinner=False, ttl=30, max_entries=4)
def _load_config(path: str, mode: str, stamp: float) -> ServerConfig | None:
    return ServerConfig.load()


def server_config() -> ServerConfig | None:
    """This server's configuration (None in local mode), reread when its file changes."""
    path = os.environ.get(CONFIG_ENV, "").strip()
    stamp = os.stat(path).st_mtime if path and os.path.exists(path) else 0.0
    return _load_config(path, os.environ.get(MODE_ENV, ""), stamp)


def _oidc_user() -> str | None:
    try:
        if st.user.is_logged_in:
            return str(st.user.get("email") or st.user.get("sub") or "")
    except (AttributeError, KeyError):
        return None
    return None


def current_user() -> str:
    """The signed-in user ("local" in local mode; "" when nobody is signed in on a server)."""
    cfg = server_config()
    if cfg is None:
        return LOCAL_USER
    if cfg.auth == "password":
        return st.session_state.get(USER_KEY, "")
    return _oidc_user() or ""


def current_role() -> str | None:
    """admin / researcher / viewer, or None (not signed in, or not allowed on this server)."""
    cfg = server_config()
    if cfg is None:
        return "admin"
    return cfg.role_of(current_user())


def can(action: str) -> bool:
    """Whether the current user may do `action` ('read', 'run', 'label', 'admin')."""
    role = current_role()
    allowed = {"admin": {"read", "run", "label", "admin"}, "researcher": {"read", "run", "label"},
               "viewer": {"read"}}
    return action in allowed.get(role or "", set())


def require(action: str) -> None:
    """Stop the page with a one-line error unless the current user may do `action` (checked on every run:
    hiding a page is not enough, a crafted request reaches the script too)."""
    if not can(action):
        st.error(f"Your role ({current_role() or 'not signed in'}) does not allow this ({action}).",
                 icon=":material/lock:")
        st.stop()


def password_login(cfg: ServerConfig) -> None:
    """The password gate's form; sets the session's user on a correct password."""
    with st.form("fra_login"):
        user = st.text_input("User")
        password = st.text_input("Password", type="password")
        go = st.form_submit_button("Sign in", type="primary")
    if go:
        if verify_password(password, cfg.passwords.get(user.strip())):
            st.session_state[USER_KEY] = user.strip()
            st.rerun()
        st.error("Wrong user or password.")


def login_screen() -> None:
    """What a session that is not signed in sees (and nothing else)."""
    cfg = server_config()
    st.title("FRA Studio")
    if cfg.auth == "password":
        password_login(cfg)
    elif _oidc_user():
        st.error(f"{_oidc_user()} has no role on this server; ask an admin.")
        st.button("Sign out", on_click=st.logout)
    else:
        st.write("Sign in to continue.")
        st.button("Sign in", type="primary", on_click=st.login)


def logout() -> None:
    if server_config() is not None and server_config().auth == "password":
        st.session_state.pop(USER_KEY, None)
    else:
        st.logout()


class AccessDenied(FRAStudioError):
    """The current user's role does not allow this action."""


def launcher() -> str:
    """The owner to record for a job the current user launches; AccessDenied unless they may run jobs."""
    if not can("run"):
        raise AccessDenied(f"your role ({current_role() or 'not signed in'}) cannot launch jobs")
    return current_user()


def allowed(owner: str | None, action: str, what: str) -> bool:
    """Whether the current user may `action` (cancel, resume, delete) `what`, owned by `owner`: admins
    anything, researchers their own; shows a one-line error otherwise."""
    role, user = current_role(), current_user()
    if role == "admin" or (role == "researcher" and owner is not None and owner == user):
        return True
    st.error(f"You ({user or 'not signed in'}, {role or 'no role'}) may not {action} {what}: it belongs to "
             f"{owner or 'nobody recorded'}; only its owner or an admin may.", icon=":material/lock:")
    return False


def allowed_on_job(job_dir, action: str) -> bool:
    from fra_core.jobqueue import job_owner

    return allowed(job_owner(job_dir), action, f"job {job_dir.name}")


def sidebar_user() -> None:
    """Who is signed in, their role and a sign-out button (server mode only)."""
    if server_config() is None:
        return
    with st.sidebar:
        st.caption(f"Signed in as **{current_user()}** ({current_role()})")
        st.button("Sign out", on_click=logout, key="fra_logout")


# the pages each role is routed to (app.py builds st.navigation from this); None = every page
ROLE_PAGES: dict[str, set[str] | None] = {"admin": None, "researcher": None, "viewer": {"pair_tables.py", "feature.py"}}


def may_open(role: str | None, page_file: str) -> bool:
    if role not in ROLE_PAGES:
        return False
    pages = ROLE_PAGES[role]
    return pages is None or os.path.basename(page_file) in pages


def page_gate(page_file: str) -> None:
    """First statement of every page: stop unless the session is signed in with a role that may open this
    page. The router already routes each role to its pages only; this holds also where a page runs without
    it (Streamlit runs a `pages/` file directly on a deep link before the router has run once)."""
    role = current_role()
    if not may_open(role, page_file):
        if role is None:
            login_screen()
        else:
            st.error(f"Your role ({role}) cannot open this page.", icon=":material/lock:")
        st.stop()

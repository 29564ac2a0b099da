"""Server mode by configuration: the password gate (hashed, constant-time), roles from the config, each
role's navigation, and the viewer refused at the page actions themselves (a crafted request calls the
action directly, not through a hidden button). Local mode needs no configuration (the other page tests)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from fra_core import jobs
from fra_core.server import ServerConfig, ServerConfigError, hash_password, verify_password
from tests.conftest import REPO_ROOT
from tests.fra_core.sleep_job import SleepConfig
from tests.fra_core.sleep_job import register as register_sleep
from tests.store.fake_jobs import make_job

KIND = register_sleep()  # the test-only job kind

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22", "vera": "vera-secret-333"}


@pytest.fixture
def server(workspace, tmp_path, monkeypatch):
    hashes = "\n".join(f'{user} = "{hash_password(pw, iterations=1000)}"' for user, pw in PASSWORDS.items())
    config = tmp_path / "server.toml"
    config.write_text(f'auth = "password"\ndefault_role = "none"\n\n[roles]\nadmin = ["alice"]\n'
                      f'researcher = ["bob"]\nviewer = ["vera"]\n\n[passwords]\n{hashes}\n')
    monkeypatch.setenv("FRA_SERVER_CONFIG", str(config))
    make_job(workspace.jobs, "accumulate-a", n_shards=2, seed=0)
    return workspace


def _app(user: str | None = None, page: str | None = "pages/pair_tables.py") -> AppTest:
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
    if user:
        at.session_state["fra_user"] = user
    if page:
        at.switch_page(page)
    return at.run()


def _nav_titles(at: AppTest) -> set[str]:
    return {t.value for t in at.title}


def test_passwords_are_hashed_and_checked_in_constant_time():
    stored = hash_password("correct horse", iterations=1000)
    assert "correct horse" not in stored and stored.startswith("pbkdf2_sha256$1000$")
    assert verify_password("correct horse", stored) and not verify_password("wrong", stored)
    assert not verify_password("x", "garbage") and not verify_password("x", None)


def test_roles_from_configuration():
    cfg = ServerConfig.from_dict({"roles": {"admin": ["root@x.org"], "viewer": ["*@x.org"]},
                                  "default_role": "none"})
    assert cfg.role_of("root@x.org") == "admin" and cfg.role_of("ann@x.org") == "viewer"
    assert cfg.role_of("eve@evil.org") is None and cfg.role_of("") is None
    with pytest.raises(ServerConfigError, match="unknown roles \\['owner'\\]"):
        ServerConfig.from_dict({"roles": {"owner": ["x"]}})
    with pytest.raises(ServerConfigError, match="gpu_jobs = 0"):
        ServerConfig.from_dict({"gpu_jobs": 0})


def test_unauthenticated_sessions_see_only_the_sign_in(server):
    for page in ("pages/pair_tables.py", "pages/fra_accumulate.py", None):
        at = _app(page=page)
        assert not at.exception
        assert _nav_titles(at) == {"FRA Studio"}
        assert not at.dataframe and not at.metric
        assert [t.label for t in at.text_input] == ["User", "Password"]


def test_password_login(server):
    at = _app(page=None)
    at.text_input[0].set_value("vera")
    at.text_input[1].set_value("wrong")
    at.button[0].click().run()
    assert any("Wrong user or password" in e.value for e in at.error)
    at.text_input[0].set_value("vera")
    at.text_input[1].set_value(PASSWORDS["vera"])
    at.button[0].click().run()
    assert not at.exception
    assert at.session_state["fra_user"] == "vera"
    assert "Pair tables" in _nav_titles(at)  # the viewer's only page


def test_viewer_reads_pair_tables_and_nothing_else(server):
    at = _app("vera")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Pair tables" in _nav_titles(at) and len(at.dataframe[0].value) > 0
    for page in ("pages/fra_accumulate.py", "pages/sae.py", "pages/restoration_train.py", "pages/models.py"):
        other = _app("vera", page)
        assert not other.exception
        assert _nav_titles(other) <= {"Pair tables"}, page  # never the page itself
        # routed: the viewer lands on their page; run directly (Streamlit's pages/ fallback): refused
        assert "Pair tables" in _nav_titles(other) or any("cannot open this page" in e.value for e in other.error)
    at.radio(key="pt_view").set_value("Feature").run()
    assert not at.exception
    assert not [b for b in at.button if b.key and "save" in b.key]  # no label editor
    assert not [b for b in at.button if b.key == "pt_open"]  # no jump to a page the viewer lacks


def test_researcher_and_admin_see_the_job_pages(server):
    for user in ("bob", "alice"):
        at = _app(user, "pages/fra_accumulate.py")
        assert not at.exception, [e.value for e in at.exception]
        assert "Dataset accumulation" in _nav_titles(at), user


def _crafted_action(user: str, action: str) -> None:
    """AppTest script: one page action in `user`'s session, as a crafted request would run it (the
    action itself, no button)."""
    import streamlit as st

    from fra_core.workspace import Workspace
    from ui import auth as ui_auth
    from ui import store as ui_store

    st.session_state["fra_user"] = user
    job_dir = next(p for p in Workspace.from_env().jobs.iterdir() if p.name.startswith("test-sleep"))
    if action == "launch":
        try:
            ui_auth.launcher()
            st.write("allowed")
        except ui_auth.AccessDenied as exc:
            st.error(str(exc))
    elif action == "cancel":
        st.write("allowed" if ui_auth.allowed_on_job(job_dir, "cancel") else "refused")
    elif action == "label":
        st.session_state["lbl"] = "=evil"
        ui_store._save_label("demo-l1-ln1", 1, "lbl")
        st.write(st.session_state.get("pt_label_error", "allowed"))


def _crafted(user: str, action: str) -> AppTest:
    at = AppTest.from_function(_crafted_action, default_timeout=60, args=(user, action))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_actions_refuse_the_wrong_role_even_when_called_directly(server):
    jobs.new_job_dir(server.jobs, KIND, SleepConfig(steps=1), owner="bob")
    viewer_launch = _crafted("vera", "launch")
    assert any("cannot launch jobs" in e.value for e in viewer_launch.error)
    assert any(m.value == "allowed" for m in _crafted("bob", "launch").markdown)
    assert any("may not cancel" in e.value for e in _crafted("vera", "cancel").error)
    assert any(m.value == "allowed" for m in _crafted("bob", "cancel").markdown)  # his own job
    assert any(m.value == "allowed" for m in _crafted("alice", "cancel").markdown)  # an admin
    assert any("cannot label" in m.value for m in _crafted("vera", "label").markdown)


def _typed(at: AppTest, label: str, value: str) -> AppTest:
    next(t for t in at.text_input if t.label == label).set_value(value)
    return at.run()


@pytest.mark.parametrize("typed", ["../../../../../etc/passwd", "/etc/passwd", "escape/secret.json"])
def test_typed_paths_are_refused_on_the_pages(server, tmp_path, typed):
    import os

    secret = tmp_path / "secret.json"
    secret.write_text('[{"atf": "1. a-na"}]')
    os.symlink(tmp_path, server.root / "escape")
    at = _app("bob", "pages/restoration_data.py")
    at.radio[0].set_value("File on this machine").run()
    _typed(at, "Path", typed)
    assert not at.exception
    assert any("not allowed" in e.value or "outside the workspace" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert not at.dataframe  # nothing was read
    at = _app("bob", "pages/restoration_convert.py")
    at.radio[0].set_value("File on this machine").run()
    _typed(at, "Path", typed.replace(".json", ".pt"))
    assert not at.exception
    assert any("not allowed" in e.value or "outside the workspace" in e.value for e in at.error), \
        [e.value for e in at.error]


def test_viewer_reads_the_feature_page_without_running_anything(server):
    at = _app("vera", "pages/feature.py")
    assert not at.exception, [e.value for e in at.exception]
    assert not any("cannot open this page" in e.value for e in at.error)
    assert _nav_titles(at) == {"Feature"}  # the Feature page (read-only) is among a viewer's pages
    assert not [b for b in at.button if b.key and ("save" in b.key or b.key in ("fp_open", "fp_weights"))]

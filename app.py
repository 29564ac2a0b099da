"""FRA Studio: router and shared sidebar. Run with `streamlit run app.py`."""

from __future__ import annotations

import streamlit as st

from fra_core.server import ServerConfigError
from ui import auth as ui_auth
from ui.common import render_sidebar

st.set_page_config(page_title="FRA Studio", page_icon="🔍", layout="wide")

# (file, title, icon) in menu order, grouped into sections. Each page file is a thin script.
SECTIONS: dict[str, list[tuple[str, str, str]]] = {
    "Models": [
        ("pages/models.py", "Models", ":material/memory:"),
    ],
    "Explore": [
        ("pages/fra_text.py", "Single text FRA", ":material/grid_on:"),
        ("pages/fra_weights.py", "Data-independent view", ":material/schema:"),
        ("pages/fra_validation.py", "Validation", ":material/fact_check:"),
        ("pages/fra_accumulate.py", "Dataset accumulation", ":material/dataset:"),
        ("pages/pair_tables.py", "Pair tables", ":material/table_chart:"),
        ("pages/feature.py", "Feature dashboard", ":material/neurology:"),
    ],
    "Build": [
        ("pages/sae.py", "SAEs", ":material/hub:"),
        ("pages/restoration_data.py", "Restoration data", ":material/text_snippet:"),
        ("pages/restoration_train.py", "Restoration model", ":material/model_training:"),
        ("pages/restoration_convert.py", "Convert to TL", ":material/transform:"),
    ],
}


def build_navigation(role: str):
    """Each role's pages only (`ui_auth.ROLE_PAGES`: a viewer reads runs and pair tables, nothing else)."""
    nav = {}
    for section, pages in SECTIONS.items():
        entries = [st.Page(path, title=title, icon=icon) for path, title, icon in pages
                   if ui_auth.may_open(role, path)]
        if entries:
            nav[section] = entries
    return st.navigation(nav)


try:
    role = ui_auth.current_role()
except ServerConfigError as exc:
    st.error(f"Server configuration: {exc}")
    st.stop()
if ui_auth.server_config() is not None and not st.get_option("global.appTest"):
    st.set_option("client.showErrorDetails", "none")  # a server never shows tracebacks (they go to the log)
if role is None:  # server mode, not signed in (or no role): the sign-in page is the only page there is
    st.navigation([st.Page(ui_auth.login_screen, title="Sign in", icon=":material/login:")]).run()
    st.stop()
page = build_navigation(role)
render_sidebar()
ui_auth.sidebar_user()
page.run()

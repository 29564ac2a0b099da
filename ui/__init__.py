"""Streamlit helpers shared by the pages (sidebar, cached loading, pickers, store views, charts).

pages/ holds only pages; they import this package first. That is also where one Streamlit quirk is
handled. Streamlit decides before a server's very first script run whether the app uses its legacy multipage
mode, where every `pages/*.py` beside the main script is a page of its own (`PagesManager.
uses_pages_directory`: true while a folder named pages/ exists and `st.navigation` has not run yet).
A deep link (say /fra_text) as that first request then runs the page file alone, without app.py's
sidebar, under Streamlit's automatic menu. (Moving the helpers out of pages/ only shortened that menu: the
page still ran alone, measured with tests/e2e/test_deep_link.py.) So here, at a page's first import, that
mode is switched off and the run restarted: it goes through app.py, whose `st.navigation` resolves the same
URL to the same page.
"""

from __future__ import annotations


def _leave_legacy_multipage_mode() -> None:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if PagesManager.uses_pages_directory and get_script_run_ctx() is not None:
        import streamlit as st

        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_legacy_multipage_mode()

"""Every widget of the Dataset accumulation form (and its jobs panel) and of the Pair tables page (every
view) carries a non-empty help text."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.store.fake_jobs import make_job

REPO = Path(__file__).resolve().parents[2]
KINDS = ("selectbox", "multiselect", "text_input", "number_input", "checkbox", "radio", "button", "text_area",
         "toggle", "slider", "select_slider", "date_input", "color_picker", "download_button")


def _open(page: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _widgets(at: AppTest) -> dict[str, str]:
    """{widget key or label: its help} of every widget rendered (main area and sidebar)."""
    out = {}
    for kind in KINDS:
        for w in at.get(kind):
            proto = w.proto
            name = getattr(proto, "id", "") or getattr(proto, "label", "")
            key = name.split("-", 2)[-1] if name.startswith("$$ID-") else name  # $$ID-<hash>-<user key>
            out[f"{kind}:{getattr(proto, 'label', '')}:{key}"] = getattr(proto, "help", "")
    return out


def _missing(widgets: dict[str, str]) -> list[str]:
    return [name for name, text in widgets.items() if not str(text).strip()]


def test_accumulation_form_widgets_all_have_help(workspace):
    make_job(workspace.jobs, "accumulate-a", n_shards=1)
    make_job(workspace.jobs, "accumulate-b", n_shards=1, state="failed")
    at = _open("pages/fra_accumulate.py")
    seen = _widgets(at)
    at.selectbox(key="acc_source").set_value("Local file (.txt / .jsonl)").run()
    seen |= _widgets(at)
    at.selectbox(key="acc_model").set_value("other…").run()
    seen |= _widgets(at)
    at.selectbox(key="acc_job").set_value("accumulate-b").run()  # a failed job: Resume and Delete appear
    seen |= _widgets(at)
    assert len(seen) >= 30, sorted(seen)
    keys = {k.split(":")[-1] for k in seen}
    assert {"acc_location", "acc_model_name", "acc_resume", "acc_delete", "acc_launch"} <= keys, sorted(keys)
    assert not _missing(seen), _missing(seen)


def test_pair_tables_widgets_all_have_help(workspace):
    make_job(workspace.jobs, "accumulate-a", n_shards=2, seed=0)
    make_job(workspace.jobs, "accumulate-b", n_shards=2, seed=1)
    at = _open("pages/pair_tables.py")
    seen = _widgets(at)
    at.selectbox(key="pt_head").set_value("L1H0").run()
    for view in ("Feature", "Heatmap", "Heads", "Token search", "Charts", "Compare", "Export", "SQL"):
        at.radio(key="pt_view").set_value(view).run()
        assert not at.exception, [e.value for e in at.exception]
        seen |= _widgets(at)
    at.radio(key="pt_view").set_value("Compare").run()
    at.radio(key="pt_cmp_mode").set_value("two runs").run()
    seen |= _widgets(at)
    keys = {k.split(":")[-1] for k in seen}
    assert {"pt_metric", "pt_feature_view", "pt_open", "pt_cmp_run", "pt_export_limit", "pt_sql_run", "pt_map_n",
            "pt_grid_stat", "pt_token", "pt_token_side"} <= keys, keys
    assert not _missing(seen), _missing(seen)

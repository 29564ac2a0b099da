"""Helpers for the FRA explorer page tests: the demo SAEs (built once per test process) and AppTest."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_SAES = ("demo-l1-ln1", "demo-l0-hook-z", "demo-l0-ln1")


@functools.lru_cache(maxsize=1)
def demo_sae_source() -> Path:
    """A folder holding the demo SAEs: the shipped assets, else trained once per test process."""
    from fra_core.sae.demo import ASSET_DIR, ensure_demo_saes
    from fra_core.workspace import Workspace

    if all((ASSET_DIR / n / "sae_weights.safetensors").is_file() for n in DEMO_SAES):
        return ASSET_DIR
    ws = Workspace(Path(tempfile.mkdtemp(prefix="fra-demo-saes-")) / "ws")
    got = ensure_demo_saes(ws)
    assert set(DEMO_SAES) <= set(got), got
    return ws.saes


def install_demo_saes(workspace) -> None:
    src = demo_sae_source()
    for name in DEMO_SAES:
        if not (workspace.saes / name).exists():
            shutil.copytree(src / name, workspace.saes / name)


def open_page(page: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.switch_page(page)  # straight to the page: the default Models page computes head scores
    at.run()
    return at


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def frame_with(at, column: str):
    """The first st.dataframe whose value has `column`."""
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no dataframe with column {column!r}: {[list(d.value.columns) for d in at.dataframe]}")


@functools.lru_cache(maxsize=1)
def induction_head() -> int:
    """The demo model's strongest layer-1 induction head."""
    from fra_core.models.demo import load_demo_model
    from fra_core.models.head_scores import head_scores

    scores = head_scores(load_demo_model(), n_seq=8, half_len=20)
    return int(scores["induction"][1].argmax())


def assert_clean(at) -> None:
    """No exception and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]

"""Shared fixtures: seeded RNGs (autouse), an isolated workspace, tiny random models, the eBL sample."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
EBL_SAMPLE = SHARED_DATA / "ebl" / "ebl_fragments_800.json"


@pytest.fixture(autouse=True)
def _seeded():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:  # store tests run without torch imported
        return
    torch.manual_seed(0)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty FRA workspace in a temp folder, exported as $FRA_WORKSPACE."""
    from fra_core.workspace import Workspace

    root = tmp_path / "workspace"
    monkeypatch.setenv("FRA_WORKSPACE", str(root))
    return Workspace(root)


@pytest.fixture(scope="session")
def ebl_sample() -> Path:
    if not EBL_SAMPLE.is_file():
        # In CI (CI=true) missing shared data is a failure: a green run must not hide skipped tests.
        message = f"eBL sample not found at {EBL_SAMPLE} (the project's ../shared/data folder)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return EBL_SAMPLE


@pytest.fixture
def tiny_model():
    """A 2-layer random HookedTransformer (d_model 32, 4 heads, LayerNorm, MLPs), float32, CPU."""
    from fra_core.models.tiny import make_tiny_model

    return make_tiny_model()


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: tiny tensors gain nothing from intra-op threads, and on a shared
    2-core machine those threads only add scheduling stalls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache (hub layout) holding a tiny `gpt2` and the kk SAE repo (tests/fixtures/hf_cache)."""
    from tests.fixtures.hf_cache import build_hub_cache

    return build_hub_cache(tmp_path_factory.mktemp("hf_home"))


@pytest.fixture(scope="session")
def dict_hub_cache(tmp_path_factory):
    """`hub_cache` plus every other GPT-2 Small dictionary release and a transcoder release."""
    from tests.fixtures.hf_cache import build_hub_cache

    return build_hub_cache(tmp_path_factory.mktemp("hf_home_dicts"), dictionaries=True)


@pytest.fixture
def offline_dict_hub(dict_hub_cache, monkeypatch):
    """`dict_hub_cache` offline, as `offline_hub` does it."""
    return _offline(dict_hub_cache, monkeypatch)


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    """`hub_cache` as this test's HF_HOME / HF_HUB_CACHE, with HF_HUB_OFFLINE=1 (the HF clients read these at
    import time, so their constants are patched too)."""
    return _offline(hub_cache, monkeypatch)


def _offline(hub_cache, monkeypatch):
    import huggingface_hub.constants as hf_constants

    for name, value in (("HF_HOME", hub_cache.root), ("HF_HUB_CACHE", hub_cache.hub), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hub_cache.root))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache.hub))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return hub_cache

"""Shared fixtures of the fra_core tests."""

import pytest

from tests.fra_core.accumulate_helpers import tiny_demo_model, tiny_sae


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(model, sae): the tiny demo-language model and an SAE on its layer-1 head input, once per module."""
    model = tiny_demo_model(tmp_path_factory.mktemp("parts"))
    return model, tiny_sae(model)

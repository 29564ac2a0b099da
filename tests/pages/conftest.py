"""Fixtures for the page tests."""

import pytest

from tests.pages.fra_helpers import install_demo_saes


@pytest.fixture
def fra_ws(workspace):
    """An isolated workspace holding the shipped demo SAEs."""
    install_demo_saes(workspace)
    return workspace

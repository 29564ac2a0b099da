"""Shared store-test fixtures."""

import pytest

from store import Store


@pytest.fixture
def store(tmp_path):
    """A Store on a fresh database file in the test's temp folder."""
    s = Store(tmp_path / "fra.duckdb")
    yield s
    s.close()

"""The store's error types (a leaf module: every other store module may import it)."""

from __future__ import annotations

from fra_core.contracts import FRAStudioError


class StoreError(FRAStudioError):
    """Bad input to the store (unknown run, refused SQL, ...): a one-line message for the user."""


class StoreBusy(FRAStudioError, RuntimeError):
    """Another process kept the database locked for longer than the timeout."""

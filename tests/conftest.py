"""Shared fixtures. Real datasets come from $SEQTWINS_DATA (CI sets it to ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir(name: str) -> Path:
    """Folder ``name`` inside $SEQTWINS_DATA.

    Skipped, with the reason shown, when the variable is unset; a loud failure when it is
    set and the data is missing (CI must never silently skip the real-data tests).
    """
    root = os.environ.get("SEQTWINS_DATA")
    if not root:
        pytest.skip("SEQTWINS_DATA is not set; real-data tests need ../shared/data")
    path = Path(root) / name
    if not path.is_dir():
        pytest.fail(f"SEQTWINS_DATA={root} is set but {path} is missing")
    return path


@pytest.fixture
def shared_data():  # type: ignore[no-untyped-def]
    return shared_data_dir


@pytest.fixture(autouse=True)
def _no_pseudonym_key_from_the_shell(monkeypatch):  # type: ignore[no-untyped-def]
    """A key exported in the developer's shell must not change what tests see."""
    monkeypatch.delenv("SEQTWINS_PSEUDONYM_KEY", raising=False)

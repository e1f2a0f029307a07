"""Shared fixtures for the native kernel tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tokenfactory.kernels import _build, q4_linear, skinny


@pytest.fixture
def fresh_skinny(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The skinny_linear library as freshly imported, whatever the environment says."""
    monkeypatch.delenv(_build.DISABLE_ENV, raising=False)
    skinny._reset()
    q4_linear._reset()
    yield
    skinny._reset()
    q4_linear._reset()

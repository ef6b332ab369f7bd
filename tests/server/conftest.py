"""Server tests run WebRTC peers on loopback only."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _loopback_ice(loopback_ice: None) -> None:
    """Every test here uses ``loopback_ice`` (tests/conftest.py)."""

"""Fixtures shared by every test part.  Part-specific fixtures live in tests/<part>/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.common import TINY_TRAIN


@pytest.fixture
def tiny_train() -> Path:
    """Path of the tiny sd-scripts-shaped accelerate trainer."""
    return TINY_TRAIN

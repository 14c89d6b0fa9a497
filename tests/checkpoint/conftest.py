"""Fixtures for the checkpoint doctor's tests: real accelerate checkpoints, made on the CPU."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.checkpoints import make_accelerate_checkpoint

OLD = time.time() - 3600.0  # long dead: incomplete folders are invalid, not writing


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """One whole sd-scripts-shaped checkpoint at step 40, written an hour ago."""
    return make_accelerate_checkpoint(tmp_path / "out" / "last-step00000040-state", 40,
                                      mtime=OLD)

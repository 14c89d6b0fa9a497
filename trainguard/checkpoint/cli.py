"""`trainguard checkpoint list|inspect|latest` (placeholder until the doctor lands)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry


def register(registry: CommandRegistry) -> None:
    """Add the read-only checkpoint sub-commands."""

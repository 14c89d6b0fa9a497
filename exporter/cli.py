"""`trainguard exporter` (placeholder)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry


def register(registry: CommandRegistry) -> None:
    """Plug this side's sub-commands into the front door."""

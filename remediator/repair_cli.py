"""`trainguard checkpoint repair` (placeholder until repair lands)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry


def register(registry: CommandRegistry) -> None:
    """Add `checkpoint repair` under the front door's checkpoint command."""

"""`trainguard remediator` (placeholder) and `trainguard checkpoint repair`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from remediator import repair_cli

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry


def register(registry: CommandRegistry) -> None:
    """Plug this side's sub-commands into the front door."""
    repair_cli.register(registry)

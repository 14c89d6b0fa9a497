"""The ``trainguard`` command: one front door, sub-commands plugged in by their owners.

``trainguard`` must not import ``exporter`` or ``remediator`` (imports go one way), yet
``trainguard exporter`` and ``trainguard remediator`` are its sub-commands.  Each side
therefore registers its own sub-commands through the ``trainguard.commands`` entry-point
group (see pyproject.toml), the same way pytest finds its plugins.

Exit codes (DESIGN.md §2): 0 ok/valid, 1 invalid or nothing usable, 2 usage or config
error.  Errors are one line on stderr, never a traceback (set ``TRAINGUARD_DEBUG=1`` to
see one).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points

from trainguard import __version__
from trainguard.config import ConfigError

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A problem with how the command was called; exit code 2."""


@dataclass
class CommandRegistry:
    """Where plug-ins add sub-commands.

    ``commands`` holds the top-level sub-commands (``trainguard X``), ``checkpoint`` the
    ones under ``trainguard checkpoint``.  A sub-command sets ``handler`` with
    ``parser.set_defaults(handler=fn)``; ``fn(args)`` returns the exit code.
    """

    commands: argparse._SubParsersAction[argparse.ArgumentParser]
    checkpoint: argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainguard",
        description="Keep long GPU training runs alive: watch, alert, repair, resume.",
    )
    parser.add_argument("--version", action="version", version=f"trainguard {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    ckpt = commands.add_parser(
        "checkpoint", help="list, inspect, pick or repair training checkpoints",
        description="The checkpoint doctor: which checkpoint is whole, what step it holds, "
                    "and whether accelerate will load it.")
    ckpt_sub = ckpt.add_subparsers(dest="checkpoint_command", metavar="ACTION")
    ckpt_sub.required = True
    registry = CommandRegistry(commands=commands, checkpoint=ckpt_sub)

    from trainguard import alertmanager, fleet, init
    from trainguard.checkpoint import cli as checkpoint_cli  # the read-only core

    checkpoint_cli.register(registry)
    init.register(registry)
    alertmanager.register(registry)
    fleet.register(registry)
    for ep in sorted(entry_points(group="trainguard.commands"), key=lambda e: e.name):
        ep.load()(registry)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"trainguard: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"trainguard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one readable line, no traceback
        if os.environ.get("TRAINGUARD_DEBUG"):
            traceback.print_exc()
        print(f"trainguard: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())

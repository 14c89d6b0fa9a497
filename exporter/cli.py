"""``trainguard exporter --config FILE [--listen HOST:PORT]``.

The listen address comes from ``--listen``, else the config's ``exporter.listen``, else
127.0.0.1:9842: loopback by default, since metrics name the user's jobs and paths.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from trainguard.config import load_config, parse_listen

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry


def register(registry: CommandRegistry) -> None:
    """Plug this side's sub-commands into the front door."""
    p = registry.commands.add_parser(
        "exporter", help="serve Prometheus metrics about the configured training jobs",
        description="Serve /metrics (GPU, process, log progress and checkpoint metrics "
                    "for every configured job) and /healthz.")
    p.add_argument("--config", required=True, metavar="FILE", help="trainguard YAML config")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address to serve on (default: exporter.listen from the config, "
                        "else 127.0.0.1:9842)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from trainguard.cli import UsageError

    config = load_config(args.config)
    listen = config.exporter.listen
    if args.listen is not None:
        try:
            listen = parse_listen(args.listen)
        except ValueError as exc:
            raise UsageError(f"--listen: {exc}") from None
    from exporter.server import serve  # keeps `trainguard --help` free of pynvml imports

    return serve(config, listen)

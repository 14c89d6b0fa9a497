"""``trainguard remediator`` (serve the webhook, reset a job) and ``checkpoint repair``.

Forms (DESIGN.md §2 keeps the first exactly):

* ``trainguard remediator --config FILE [--listen HOST:PORT]`` serves (``serve`` may be
  spelled out: ``trainguard remediator serve --config FILE``);
* ``trainguard remediator reset JOB --config FILE`` re-arms a job that gave up, by
  writing to the same state file the server reads (the server needs no restart).

Refusing to start is exit 2 with one line: no token file, unreadable state file, a
listen address in use.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

from remediator import repair_cli
from trainguard.config import Config, Listen, load_config, parse_listen

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry

log = logging.getLogger("remediator")


class _Stop(SystemExit):
    """Raised by the SIGTERM handler; a SystemExit so waitress's loop lets it through."""


def register(registry: CommandRegistry) -> None:
    """Plug this side's sub-commands into the front door."""
    repair_cli.register(registry)
    p = registry.commands.add_parser(
        "remediator", help="serve the Alertmanager webhook that repairs and resumes runs",
        description="Serve the Alertmanager webhook: validate, dedupe, kill the stuck run's "
                    "own processes, repair the newest usable checkpoint and resume from it.")
    _common(p, required=False)
    p.set_defaults(handler=_serve)
    sub = p.add_subparsers(dest="remediator_command", metavar="ACTION")
    serve = sub.add_parser("serve", help="serve the webhook (the default)")
    _common(serve, required=False, suppress=True)
    serve.set_defaults(handler=_serve)
    reset = sub.add_parser("reset", help="re-arm a job whose restart budget was spent")
    reset.add_argument("job", metavar="JOB", help="the job's name (training_job label)")
    _common(reset, required=False, suppress=True, listen=False)
    reset.set_defaults(handler=_reset)


def _common(p: argparse.ArgumentParser, *, required: bool, suppress: bool = False,
            listen: bool = True) -> None:
    default = argparse.SUPPRESS if suppress else None
    p.add_argument("--config", metavar="FILE", default=default, required=required,
                   help="trainguard YAML config (default: $TRAINGUARD_CONFIG, else "
                        "./trainguard.yaml)")
    if listen:
        p.add_argument("--listen", metavar="HOST:PORT", default=default,
                       help="address to listen on (default: remediator.listen, else "
                            "127.0.0.1:9843)")


def _load(args: argparse.Namespace) -> Config:
    from trainguard.cli import UsageError
    from trainguard.default_config import NoConfigError, find_config

    try:
        return load_config(find_config(getattr(args, "config", None)))
    except NoConfigError as exc:
        raise UsageError(f"remediator: {exc}") from None


def _serve(args: argparse.Namespace) -> int:
    from trainguard.cli import UsageError

    config = _load(args)
    listen: Listen = config.remediator.listen
    if getattr(args, "listen", None):
        try:
            listen = parse_listen(args.listen)
        except ValueError as exc:
            raise UsageError(f"--listen: {exc}") from None
    import waitress

    from .app import TokenError, create_app
    from .store import StoreError

    try:
        app = create_app(config)
    except (TokenError, StoreError) as exc:
        raise UsageError(f"remediator: {exc}") from None
    try:
        server = waitress.create_server(app, host=listen.host, port=listen.port, threads=8,
                                        ident="trainguard-remediator")
    except OSError as exc:
        raise UsageError(f"remediator: cannot listen on {listen}: {exc.strerror or exc}") \
            from None

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    mode = " (DRY RUN: nothing will be touched)" if config.remediator.dry_run else ""
    log.info("remediator listening on http://%s for %d job(s)%s; state in %s", listen,
             len(config.jobs), mode, config.remediator.state_path)
    print(f"trainguard remediator listening on http://{listen}", file=sys.stderr, flush=True)
    try:
        server.run()
    except (_Stop, KeyboardInterrupt) as exc:
        log.info("remediator stopping (%s)", exc or "interrupt")
    finally:
        server.close()
    return 0


def _reset(args: argparse.Namespace) -> int:
    from trainguard.cli import UsageError

    from .store import Store, StoreError

    config = _load(args)
    if config.job(args.job) is None:
        names = ", ".join(j.name for j in config.jobs)
        raise UsageError(f"remediator reset: no job named {args.job!r} in {config.path} "
                         f"(configured: {names})")
    assert config.remediator.state_path is not None
    try:
        store = Store(config.remediator.state_path)
        before = store.job_state(args.job)
        store.reset_job(args.job)
        store.record(args.job, None, "reset", "ok", "re-armed from the command line")
        store.close()
    except StoreError as exc:
        raise UsageError(f"remediator reset: {exc}") from None
    was = "had given up" if before.gave_up else "was armed already"
    print(f"{args.job}: re-armed ({was}); the restart budget starts afresh")
    return 0

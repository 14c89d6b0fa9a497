"""``trainguard remediator`` (serve the webhook, reset a job) and ``checkpoint repair``.

Forms (DESIGN.md §2 keeps the first exactly):

* ``trainguard remediator --config FILE [--listen HOST:PORT]`` serves (``serve`` may be
  spelled out: ``trainguard remediator serve --config FILE``);
* ``trainguard remediator reset JOB --config FILE`` re-arms a job that gave up, by
  writing to the same state file the server reads (the server needs no restart);
* ``trainguard pause JOB --config FILE [--reason TEXT]`` / ``trainguard unpause JOB
  --config FILE``: while a job is paused no alert acts on it and TrainingProcessDown stays
  quiet (the remediator publishes ``trainguard_job_paused``), so a run a person stops on
  purpose stays stopped.  Same state file, no restart.

Refusing to start is exit 2 with one line: no token file, unreadable state file, a
listen address in use.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from remediator import repair_cli, resume_args
from trainguard.config import LAUNCH_VIA, Config, Listen, load_config, parse_listen

from .store import Store, StoreError

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry

log = logging.getLogger("remediator")


# waitress: a connection that sends nothing for channel_timeout seconds is closed, checked
# every cleanup_interval seconds (defaults: 120 and 30), so clients that connect and stall
# (half-open, slowloris) cannot hold every connection slot for minutes.  Alertmanager
# sends its whole request at once.
SERVER_OPTIONS: dict[str, Any] = {"threads": 8, "ident": "trainguard-remediator",
                                  "channel_timeout": 10, "cleanup_interval": 2,
                                  "connection_limit": 100,
                                  "max_request_header_size": 64 * 1024}


class _Stop(SystemExit):
    """Raised by the SIGTERM handler; a SystemExit so waitress's loop lets it through."""


def register(registry: CommandRegistry) -> None:
    """Plug this side's sub-commands into the front door."""
    repair_cli.register(registry)
    resume_args.register(registry)
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
    for name, doc in (("pause", "stop trainguard acting on a job (a run stopped on purpose "
                                "stays stopped)"),
                      ("unpause", "let alerts act on a paused job again")):
        sp = registry.commands.add_parser(name, help=doc, description=doc[0].upper() + doc[1:])
        sp.add_argument("job", metavar="JOB", help="the job's name (training_job label)")
        sp.add_argument("--config", metavar="FILE", default=None, help="trainguard YAML config")
        if name == "pause":
            sp.add_argument("--reason", default=None, help="shown on the status page")
        sp.set_defaults(handler=_pause, pause=name == "pause")


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
        p.add_argument("--launch-via", choices=LAUNCH_VIA, default=default,
                       help="how resumed runs are started (default: remediator.launch_via, "
                            "else direct); the systemd unit uses systemd-run")


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
    if getattr(args, "launch_via", None):
        config = dataclasses.replace(config, remediator=dataclasses.replace(
            config.remediator, launch_via=args.launch_via))
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
        server = waitress.create_server(app, host=listen.host, port=listen.port,
                                        **SERVER_OPTIONS)
    except OSError as exc:
        raise UsageError(f"remediator: cannot listen on {listen}: {exc.strerror or exc}") \
            from None

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    mode = " (DRY RUN: nothing will be touched)" if config.remediator.dry_run else ""
    log.info("remediator listening on http://%s for %d job(s) on host %s%s; state in %s",
             listen, len(config.jobs), config.host, mode, config.remediator.state_path)
    print(f"trainguard remediator listening on http://{listen}", file=sys.stderr, flush=True)
    try:
        server.run()
    except (_Stop, KeyboardInterrupt) as exc:
        log.info("remediator stopping (%s)", exc or "interrupt")
    finally:
        server.close()
    return 0


@contextmanager
def _job_store(args: argparse.Namespace, command: str) -> Iterator[tuple[Config, Store]]:
    """The config and the state file for a command about one configured job (reset,
    pause, unpause): the same file the server reads, so it needs no restart."""
    from trainguard.cli import UsageError

    config = _load(args)
    if config.job(args.job) is None:
        names = ", ".join(j.name for j in config.jobs)
        raise UsageError(f"{command}: no job named {args.job!r} in {config.path} "
                         f"(configured: {names})")
    assert config.remediator.state_path is not None
    try:
        store = Store(config.remediator.state_path)
    except StoreError as exc:
        raise UsageError(f"{command}: {exc}") from None
    try:
        yield config, store
    except StoreError as exc:
        raise UsageError(f"{command}: {exc}") from None
    finally:
        store.close()


def _reset(args: argparse.Namespace) -> int:
    with _job_store(args, "remediator reset") as (_config, store):
        before = store.job_state(args.job)
        store.reset_job(args.job)
        store.record(args.job, None, "reset", "ok", "re-armed from the command line")
    was = "had given up" if before.gave_up else "was armed already"
    print(f"{args.job}: re-armed ({was}); the restart budget starts afresh")
    return 0


def _pause(args: argparse.Namespace) -> int:
    command = "pause" if args.pause else "unpause"
    reason = getattr(args, "reason", None) or "paused from the command line"
    with _job_store(args, command) as (config, store):
        before = store.job_state(args.job).paused
        store.set_paused(args.job, args.pause, reason)
        store.record(args.job, None, command, "ok", reason if args.pause else
                     "unpaused from the command line")
    if args.pause:
        print(f"{args.job}: paused{' (it was already)' if before else ''}; no alert acts on "
              f"it until `trainguard unpause {args.job} --config {config.path}`")
    else:
        print(f"{args.job}: unpaused{'' if before else ' (it was not paused)'}; alerts act "
              "on it again")
    return 0

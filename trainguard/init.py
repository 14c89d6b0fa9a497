"""``trainguard init FLUXGYM_OUTPUT_DIR``: a working config for an existing FluxGym run.

Why: writing the config by hand is where seed 003's mistake lives (paths relative to
wherever the monitor was started).  FluxGym keeps each run in ``outputs/<name>/`` with
its generated ``train.sh`` (``train.bat`` on Windows) and runs ``bash
outputs/<name>/train.sh`` from its own root, so everything trainguard needs follows from
that folder: the job name, output_dir, the launch script and the workdir (two levels
up, where ``sd-scripts/`` must be).

Decisions:

* FluxGym streams the run's output to its web UI and writes no log file, so the config
  names ``outputs/<name>/train.log`` and init prints the command that tees the run into
  it; the remediator appends resumed runs to the same file.
* The config goes beside FluxGym's root (``trainguard.yaml``), never inside the output
  folder: a ``--config`` argument pointing into output_dir would make trainguard's own
  processes look like part of the job (see trainguard.process).
* Paths are written relative to the config file's folder when they lie below it, so the
  whole tree can move; the loader anchors them there (never at the cwd).
* An existing config is never overwritten (exit 2); an existing token file is kept.
* The last lines say what comes next: ``deploy/run-stack.sh --config ...`` (the exporter
  alone watches but never rescues), a warning when the script lacks ``--save_state``
  (without saved state every rescue restarts at step 0), and how long the shipped
  thresholds take to act, since nobody expects a hung run to sit for ten minutes.
* ``--notify KIND=SECRET_FILE[,key=value...]`` (repeatable) writes the ``notify:``
  section: the secret stays in its file (checked now: mode 0600, the shape of a webhook
  URL or a bot token), the config only names the file.  Telegram needs ``chat_id=``,
  e-mail ``to=``, ``from=`` and ``smarthost=HOST:PORT`` (``username=`` optional): one
  command, no file to edit afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from trainguard.config import JOB_NAME_RE, NOTIFY_KINDS, Receiver, load_config
from trainguard.default_config import DEFAULT_NAME as CONFIG_NAME
from trainguard.script import ScriptError, flag_value, has_flag, read_script

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry

log = logging.getLogger(__name__)

TOKEN_PATH = Path("secrets") / "trainguard-webhook-token"
LOG_NAME = "train.log"

# The shipped thresholds (deploy/prometheus/rules/tunables.yml) and the fixed delays after
# them: the remediating alerts' `for:` (rules/trainguard.rules.yml) and the remediator
# route's group_wait (deploy/alertmanager/alertmanager.yml).  deploy/ is not installed with
# the package, so init carries the figures; tests/core/test_init.py checks them against
# those files, and the README's sentence against :func:`detection_summary`.
SHIPPED_TUNABLES = {"startup_grace_seconds": 600, "gpu_idle_seconds": 600,
                    "gpu_spin_seconds": 300, "stall_seconds": 1200, "process_down_seconds": 60,
                    "stall_min_seconds": 90, "stall_step_factor": 4, "stall_phase_factor": 2}
RULE_FOR_SECONDS = 15
GROUP_WAIT_SECONDS = 10
# Where run-stack.sh is when trainguard runs from its checkout (pip install -e, or .venv).
_RUN_STACK = Path(__file__).resolve().parent.parent / "deploy" / "run-stack.sh"


class InitError(Exception):
    """Why no config was written; phrased for the person who ran the command."""


def register(registry: CommandRegistry) -> None:
    """Add ``trainguard init`` to the front door."""
    p = registry.commands.add_parser(
        "init", help="write a config for an existing FluxGym output folder",
        description="Write a trainguard config for a FluxGym run folder "
                    "(outputs/<name>/ holding train.sh).")
    p.add_argument("output_dir", metavar="FLUXGYM_OUTPUT_DIR",
                   help="the run's folder, e.g. /workspace/fluxgym/outputs/my-lora")
    p.add_argument("--out", metavar="FILE", default=None,
                   help=f"where to write the config (default: FluxGym root/{CONFIG_NAME})")
    p.add_argument("--notify", metavar="KIND=SECRET_FILE", action="append", default=[],
                   help=f"tell people through KIND ({', '.join(NOTIFY_KINDS)}); SECRET_FILE "
                        "holds the webhook URL, bot token or SMTP password (mode 0600). "
                        "telegram needs ,chat_id=ID; email ,to=ADDR,from=ADDR,"
                        "smarthost=HOST:PORT[,username=USER]")
    p.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    try:
        notify = [parse_notify(text) for text in args.notify]
        for line in init_config(Path(args.output_dir), None if args.out is None
                                else Path(args.out), notify=notify):
            print(line)
    except InitError as exc:
        print(f"trainguard: init: {exc}", file=sys.stderr)
        return 2
    return 0


def _find_script(output_dir: Path) -> Path:
    for name in ("train.sh", "train.bat"):
        if (output_dir / name).is_file():
            return output_dir / name
    raise InitError(f"{output_dir}: no train.sh or train.bat here; expected a FluxGym run "
                    "folder such as fluxgym/outputs/<name>/")


def _script_output_dir(script: Path, workdir: Path) -> Path | None:
    """The ``--output_dir`` the script really writes to, resolved as FluxGym would run it
    (read by the one script reader, so quotes and continuations are the shell's)."""
    try:
        value = flag_value(read_script(script).command, "--output_dir")
    except ScriptError:
        return None
    return (workdir / value).resolve() if value else None


def _script_saves_state(script: Path) -> bool:
    """Whether the script's training command passes sd-scripts' ``--save_state``
    (resumable state folders; ``--save_state_on_train_end`` saves only at the end and
    does not count).  Read by the one script reader; a script it cannot read says no."""
    try:
        return has_flag(read_script(script).command, "--save_state")
    except ScriptError:
        return False


def _minutes(seconds: float) -> str:
    """A duration as a person would say it: whole minutes, half minutes under five."""
    minutes = seconds / 60
    return f"{round(minutes) if minutes >= 5 else round(minutes * 2) / 2:g} min"


def detection_summary() -> str:
    """How long the shipped thresholds let a hung run sit before the remediator acts: the
    tunable, then the rules' `for:` and Alertmanager's group_wait (plus up to one scrape
    and one evaluation interval, 15 s each, which the rounding absorbs)."""
    t = SHIPPED_TUNABLES

    def after(name: str) -> str:
        return "about " + _minutes(t[name] + RULE_FOR_SECONDS + GROUP_WAIT_SECONDS)

    return (f"With the shipped thresholds a hung run whose log trainguard follows is rescued "
            f"{after('stall_min_seconds')} after its last step when it steps every few "
            f"seconds (no progress for {t['stall_step_factor']:g} times its longest gap "
            f"between steps, at least {_minutes(t['stall_min_seconds'])}; inside sampling, "
            f"caching, saving or validation {t['stall_phase_factor']:g} times that phase's "
            f"longest earlier length; never later than {after('stall_seconds')}); any run is "
            f"rescued {after('gpu_idle_seconds')} after its GPU goes idle, "
            f"{after('gpu_spin_seconds')} after it starts spinning (GPU busy at idle power) "
            f"and {after('process_down_seconds')} after its process dies. The start-up grace "
            f"({_minutes(t['startup_grace_seconds'])}) ends at the first step.")


def _run_stack_command(config: Path) -> str:
    if _RUN_STACK.is_file():
        return f"{shlex.quote(str(_RUN_STACK))} --config {shlex.quote(str(config))}"
    return (f"deploy/run-stack.sh --config {shlex.quote(str(config))}   "
            "(run-stack.sh is in the trainguard checkout)")


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when below it (portable), else absolute."""
    try:
        return str(path.relative_to(base)) or "."
    except ValueError:
        return str(path)


def _write_token(path: Path) -> bool:
    """Create a fresh webhook token readable by the owner only; False if one exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return True


_NOTIFY_OPTIONS = {"telegram": {"chat_id"}, "email": {"to", "from", "smarthost", "username"},
                   "slack": {"channel"}, "discord": set(), "webhook": set()}
_NOTIFY_NEEDS = {"telegram": ("chat_id",), "email": ("to", "from", "smarthost")}


def parse_notify(text: str) -> dict[str, str]:
    """``KIND=SECRET_FILE[,key=value...]`` -> the receiver's keys (secret_file absolute).
    The secret file is read and checked here (trainguard.alertmanager.secret_of)."""
    from trainguard.alertmanager import NotifyError, secret_of

    head, *rest = text.split(",")
    kind, sep, file = head.partition("=")
    if not sep or kind not in NOTIFY_KINDS or not file:
        raise InitError(f"--notify {text!r}: expected KIND=SECRET_FILE with KIND one of "
                        f"{', '.join(NOTIFY_KINDS)}")
    out = {"kind": kind, "secret_file": str(Path(file).expanduser().absolute())}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key not in _NOTIFY_OPTIONS[kind] or not value:
            allowed = ", ".join(sorted(_NOTIFY_OPTIONS[kind])) or "none"
            raise InitError(f"--notify {text!r}: {item!r} is not an option of {kind} "
                            f"(options: {allowed}); the secret goes in the file, never here")
        out[key] = value
    missing = [k for k in _NOTIFY_NEEDS.get(kind, ()) if k not in out]
    if missing:
        raise InitError(f"--notify {text!r}: {kind} needs "
                        f"{', '.join(k + '=...' for k in missing)}")
    if kind == "telegram" and not re.fullmatch(r"-?\d+", out["chat_id"]):
        raise InitError(f"--notify {text!r}: chat_id must be a number, got {out['chat_id']!r}")
    try:
        secret_of(Receiver(kind=kind, secret_file=Path(out["secret_file"])), "--notify")
    except NotifyError as exc:
        raise InitError(str(exc)) from None
    return out


def _notify_section(notify: list[dict[str, str]], rel: Callable[[Path], str]) -> str:
    if not notify:
        return ""
    lines = ["notify:",
             "  # Who hears about alerts and about what trainguard decided and why.  Run",
             "  # Alertmanager on `trainguard alertmanager-config --config THIS_FILE` output",
             "  # (deploy/run-stack.sh does).  Secrets stay in their files (mode 0600).",
             "  receivers:"]
    for n in notify:
        lines.append(f"    - kind: {n['kind']}")
        lines.append(f"      secret_file: {rel(Path(n['secret_file']))}")
        for key in ("channel", "to", "from", "smarthost", "username"):
            if key in n:
                lines.append(f"      {key}: {json.dumps(n[key])}")
        if "chat_id" in n:
            lines.append(f"      chat_id: {int(n['chat_id'])}")
    return "\n".join(lines) + "\n"


def init_config(output_dir: Path, out: Path | None = None, *,
                notify: list[dict[str, str]] | None = None) -> list[str]:
    """Write the config; return the lines to show the user.  Raises :class:`InitError`."""
    output_dir = output_dir.expanduser().resolve()
    if not output_dir.is_dir():
        raise InitError(f"{output_dir}: not a folder")
    script = _find_script(output_dir)
    root = output_dir.parent.parent
    notes: list[str] = []
    if not (root / "sd-scripts").is_dir():
        notes.append(f"warning: {root} has no sd-scripts/ folder; FluxGym runs train.sh from "
                     "its root, so check launch.workdir in the config")
    name = output_dir.name
    if not JOB_NAME_RE.match(name):
        name = re.sub(r"[^a-zA-Z0-9_.-]+", "-", name).strip("-") or "job"
        notes.append(f"note: job name {output_dir.name!r} has characters a Prometheus label "
                     f"value should not carry; using {name!r}")
    if not _script_saves_state(script):
        notes.append(f"warning: {script.name} does not pass --save_state, so sd-scripts saves "
                     "no training state and a rescue can only restart the run from step 0; "
                     "tick save_state in FluxGym's Advanced options (sd-scripts' "
                     "--save_state) before you start the run")
    writes_to = _script_output_dir(script, root)
    if writes_to is not None and writes_to != output_dir:
        notes.append(f"warning: {script.name} writes to --output_dir {writes_to}, not to "
                     f"{output_dir}; trainguard watches {output_dir}")
    out = (out.expanduser() if out is not None else root / CONFIG_NAME).absolute()
    if out.exists():
        raise InitError(f"{out}: already exists; not overwriting it (use --out FILE, or add "
                        "the job to it by hand)")
    base = out.parent.resolve()
    if base == output_dir or output_dir in base.parents:
        raise InitError(f"{out}: keep the config outside the run folder {output_dir}")
    log_file = output_dir / LOG_NAME
    token = base / TOKEN_PATH

    def q(path: Path) -> str:
        return json.dumps(_rel(path, base))  # a JSON string is a valid YAML scalar

    text = (
        f"# Written by `trainguard init {output_dir}`.\n"
        "# Relative paths resolve against this file's folder.\n"
        "jobs:\n"
        f"  - name: {json.dumps(name)}\n"
        f"    output_dir: {q(output_dir)}\n"
        "    launch:\n"
        f"      script: {q(script)}   # run as FluxGym does; never modified\n"
        f"      workdir: {q(root)}    # the FluxGym root\n"
        "      resume_flag: --resume\n"
        f"    log_file: {q(log_file)}\n"
        "exporter:\n"
        "  listen: 127.0.0.1:9842\n"
        "remediator:\n"
        "  listen: 127.0.0.1:9843\n"
        f"  token_file: {q(token)}\n"
    ) + _notify_section(notify or [], q)
    base.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        load_config(tmp)  # never leave a config the loader would refuse
        os.link(tmp, out)  # fails if someone created it meanwhile: still no overwrite
    except FileExistsError:
        raise InitError(f"{out}: already exists; not overwriting it") from None
    finally:
        tmp.unlink(missing_ok=True)
    made_token = _write_token(token)
    lines = [*notes, f"wrote {out}",
             f"{'created' if made_token else 'kept existing'} webhook token {token} (mode 0600)"]
    rel_script, rel_log = _rel(script, root), _rel(log_file, root)
    if script.suffix == ".sh":
        start = (f"cd {shlex.quote(str(root))} && bash {shlex.quote(rel_script)} 2>&1 "
                 f"| tee -a {shlex.quote(rel_log)}")
    else:
        start = f'cd /d "{root}" && call "{rel_script}" >> "{rel_log}" 2>&1'
    if notify:
        lines.append(f"people hear through: {', '.join(n['kind'] for n in notify)} (the "
                     "secrets stay in their files)")
    lines += ["FluxGym writes no log file; start the run with its output kept where "
              "trainguard reads progress:", f"  {start}",
              "then start the watch-and-rescue stack (Prometheus, Alertmanager, exporter, "
              "remediator; no Docker needed):", f"  {_run_stack_command(out)}",
              detection_summary(),
              "To change them, give run-stack.sh a copy of "
              "deploy/prometheus/rules/tunables.yml with other values: --tunables FILE "
              "(deploy/README.md, \"Tuning thresholds\")."]
    return lines

"""The Python half of deploy/run-stack.sh: everything checked and written before anything
starts, so that a mistake costs one line and exit 2, never a traceback or half a stack.

    python deploy/run_stack.py prepare --config FILE --state DIR [--tunables FILE]
                               [--prometheus-port N] [--alertmanager-port N]
                               [--no-remediator] [--check-only]
    python deploy/run_stack.py check-tunables FILE

``prepare`` loads the trainguard config, checks the webhook token, checks a tunables file
against the records the rules read, checks that every port is free, and only then writes
``STATE/prometheus/prometheus.yml`` (the shipped file with this stack's ports) and
``STATE/alertmanager/alertmanager.yml`` (``trainguard alertmanager-config``'s output,
0600: it may hold secrets) and prints ``NAME=VALUE`` lines for the script.
``check-tunables`` is the tunables check alone, for a tunables file used elsewhere
(compose's ``TRAINGUARD_TUNABLES``, your own prometheus.yml).

It runs under the Python trainguard is installed in (run-stack.sh takes it from the
``trainguard`` console script), for ``trainguard.config`` and ``yaml``.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # imported where used: check-tunables needs only yaml
    from trainguard.config import Config, Listen

HERE = Path(__file__).resolve().parent
PROMETHEUS_YML = HERE / "prometheus" / "prometheus.yml"
RULES_DIR = HERE / "prometheus" / "rules"
SHIPPED_TUNABLES = RULES_DIR / "tunables.yml"
TUNABLE = re.compile(r"\btrainguard:tunable:([A-Za-z_][A-Za-z0-9_]*)")
_RECORD_PREFIX = "trainguard:tunable:"


class Refusal(Exception):
    """Why the stack will not start; each line of the message is one problem."""


# --------------------------------------------------------------------------- tunables
def _rules_of(path: Path) -> list[dict[str, Any]]:
    """The rules of a Prometheus rule file; Refusal naming the file when it is not one."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise Refusal(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise Refusal(f"{path}: not valid YAML{where}") from None
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list):
        raise Refusal(f"{path}: not a Prometheus rule file (no `groups:` list)")
    rules: list[dict[str, Any]] = []
    for group in groups:
        for rule in (group or {}).get("rules") or []:
            if isinstance(rule, dict):
                rules.append(rule)
    return rules


def tunables_read_by_rules(rule_files: Iterable[Path]) -> dict[str, list[str]]:
    """Each ``trainguard:tunable:NAME`` the rules' expressions read -> the alerts and
    records that read it."""
    readers: dict[str, list[str]] = {}
    for path in rule_files:
        for rule in _rules_of(path):
            who = rule.get("alert") or rule.get("record") or "?"
            for name in TUNABLE.findall(str(rule.get("expr", ""))):
                if who not in readers.setdefault(name, []):
                    readers[name].append(str(who))
    return readers


def default_rule_files() -> list[Path]:
    """The shipped rule files that read tunables: every one but tunables.yml itself."""
    return sorted(p for p in RULES_DIR.glob("*.yml") if p.name != SHIPPED_TUNABLES.name)


def tunables_problems(tunables: Path, rule_files: Sequence[Path] | None = None) -> list[str]:
    """What is wrong with ``tunables`` as a replacement for rules/tunables.yml, one line
    each: a record the rules read but the file lacks (those alerts would never fire:
    scalar() of nothing is NaN, and every comparison with NaN is false), a record no rule
    reads (a misspelling, with the nearest real name), a record defined twice."""
    read = tunables_read_by_rules(default_rule_files() if rule_files is None else rule_files)
    defined: dict[str, int] = {}
    problems: list[str] = []
    for rule in _rules_of(tunables):
        record = rule.get("record")
        if not isinstance(record, str):
            continue
        defined[record] = defined.get(record, 0) + 1
    for record, count in sorted(defined.items()):
        name = record[len(_RECORD_PREFIX):] if record.startswith(_RECORD_PREFIX) else None
        if count > 1:
            problems.append(f"{tunables}: record {record} is defined {count} times")
        if name is None or name not in read:
            wanted = [_RECORD_PREFIX + n for n in sorted(read)]
            near = difflib.get_close_matches(record, wanted, n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            problems.append(f"{tunables}: record {record} is read by no rule{hint}")
    for name in sorted(read):
        if _RECORD_PREFIX + name not in defined:
            problems.append(f"{tunables}: no record {_RECORD_PREFIX}{name}, which "
                            f"{', '.join(read[name])} read(s): without it they never fire")
    return problems


def promtool_problems(path: Path) -> list[str]:
    """``promtool check rules`` on ``path`` when promtool is installed (it ships with
    Debian's prometheus package): a file Prometheus would refuse is found here."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return []
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    if proc.returncode == 0:
        return []
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines()
             if line.strip() and not line.startswith("Checking ")]
    return [f"{path}: promtool check rules: {'; '.join(lines[-3:]) or 'failed'}"]


# --------------------------------------------------------------------------- ports
@dataclass(frozen=True)
class Port:
    what: str        # "Prometheus", "the exporter", ...
    listen: Listen
    change: str      # how to pick another one


def _target(listen: Listen) -> str:
    """Where a client on this host reaches ``listen`` (a wildcard address via loopback)."""
    from trainguard.config import Listen

    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen.host, listen.host)
    return str(Listen(host, listen.port))


def port_problems(ports: Sequence[Port]) -> list[str]:
    """A line for each port that two components share or that something already holds.

    The test binds the way the servers do (SO_REUSEADDR, as Go's and waitress' listeners
    set it), so a port left in TIME_WAIT by a stack that just stopped is not called busy.
    """
    problems: list[str] = []
    seen: dict[int, Port] = {}
    for port in ports:
        if port.listen.port in seen:
            other = seen[port.listen.port]
            problems.append(f"port {port.listen.port} is set for both {other.what} and "
                            f"{port.what}: {port.change}")
            continue
        seen[port.listen.port] = port
        family = socket.AF_INET6 if ":" in port.listen.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((port.listen.host, port.listen.port))
            except OSError as exc:
                why = ("is in use (another run-stack.sh, or another program?)"
                       if exc.errno == errno.EADDRINUSE else
                       f"cannot be opened: {exc.strerror or exc}")
                problems.append(f"port {port.listen.port} on {port.listen.host} for "
                                f"{port.what} {why}: {port.change}")
    return problems


# --------------------------------------------------------------------------- files
def write_prometheus_config(dst: Path, *, exporter: str, remediator: str,
                            alertmanager: str, tunables: Path | None) -> None:
    """The shipped prometheus.yml with this stack's targets, its rule files made absolute
    and, with ``tunables``, that file in place of rules/tunables.yml."""
    doc = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    files = []
    for rel in doc["rule_files"]:
        path = PROMETHEUS_YML.parent / rel
        files.append(str(tunables if tunables and path.name == SHIPPED_TUNABLES.name
                         else path))
    doc["rule_files"] = files
    doc["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    targets = {"trainguard-exporter": exporter, "trainguard-remediator": remediator}
    for scrape in doc["scrape_configs"]:
        scrape["static_configs"] = [{"targets": [targets.pop(scrape["job_name"])]}]
    if targets:
        raise Refusal(f"{PROMETHEUS_YML}: no scrape job {', '.join(targets)}")
    dst.write_text("# Written by deploy/run-stack.sh from deploy/prometheus/prometheus.yml "
                   "(edit that one).\n" + yaml.safe_dump(doc, sort_keys=False),
                   encoding="utf-8")


def alertmanager_config(config: Config, *, remediator_url: str, remediator: bool,
                        alertmanager: str) -> str:
    """Alertmanager's config for this stack, the one place run-stack.sh makes it: exactly
    `trainguard alertmanager-config`'s output (trainguard.alertmanager: the remediator
    route plus the receivers of the config's notify: section), with the webhook pointed
    at this stack's remediator.  Its secrets are checked here (mode 0600, shape), before
    anything starts; the remediator's reports must reach this stack's Alertmanager."""
    from trainguard.alertmanager import NotifyError, render

    problems = []
    if config.notify is not None and \
            config.notify.alertmanager_url.rstrip("/") != f"http://{alertmanager}":
        problems.append(f"{config.path}: notify.alertmanager_url is "
                        f"{config.notify.alertmanager_url}, but this stack's Alertmanager "
                        f"listens on {alertmanager}: set notify.alertmanager_url: "
                        f"http://{alertmanager} (the remediator sends its reports there)")
    try:
        text = render(config, url=remediator_url, remediator=remediator)
    except NotifyError as exc:
        problems.append(str(exc))
    if problems:
        raise Refusal("\n".join(problems))
    return text


# --------------------------------------------------------------------------- commands
def prepare(args: argparse.Namespace) -> list[str]:
    """Check everything, then write the files; the ``NAME=VALUE`` lines for the script."""
    from trainguard.alertmanager import write_private
    from trainguard.config import ConfigError, Listen, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise Refusal(f"config error: {exc}") from None
    except OSError as exc:
        raise Refusal(f"{args.config}: cannot read it: {exc.strerror or exc}") from None
    token = config.remediator.token_file
    if not args.no_remediator and (token is None or not token.is_file()):
        raise Refusal(f"{config.path}: remediator.token_file is not set or missing "
                      f"({token or 'unset'}); trainguard init writes one")
    problems: list[str] = []
    tunables = Path(args.tunables).absolute() if args.tunables else None
    if tunables is not None:
        problems += tunables_problems(tunables) or promtool_problems(tunables)
    exporter, remediator = config.exporter.listen, config.remediator.listen
    where = config.path
    ports = [Port("Prometheus", Listen("127.0.0.1", args.prometheus_port),
                  "pick another with --prometheus-port N"),
             Port("Alertmanager", Listen("127.0.0.1", args.alertmanager_port),
                  "pick another with --alertmanager-port N"),
             Port("the exporter", exporter, f"set exporter.listen in {where}")]
    if not args.no_remediator:
        ports.append(Port("the remediator", remediator, f"set remediator.listen in {where}"))
    problems += port_problems(ports)
    alertmanager = str(Listen("127.0.0.1", args.alertmanager_port))
    try:
        am_text = alertmanager_config(config, remediator_url=f"http://{_target(remediator)}"
                                      "/alerts", remediator=not args.no_remediator,
                                      alertmanager=alertmanager)
    except Refusal as exc:
        problems.append(str(exc))
    if problems:
        raise Refusal("\n".join(problems))
    if not args.check_only:
        state = Path(args.state)
        (state / "prometheus").mkdir(parents=True, exist_ok=True)
        write_prometheus_config(state / "prometheus" / "prometheus.yml",
                                exporter=_target(exporter), remediator=_target(remediator),
                                alertmanager=alertmanager, tunables=tunables)
        write_private(state / "alertmanager" / "alertmanager.yml", am_text)
    return [f"EXPORTER={_target(exporter)}", f"REMEDIATOR={_target(remediator)}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_stack.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--config", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--tunables")
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--alertmanager-port", type=int, default=9093)
    p.add_argument("--no-remediator", action="store_true")
    p.add_argument("--check-only", action="store_true")
    c = sub.add_parser("check-tunables", help="check a tunables file against the rules")
    c.add_argument("tunables")
    args = parser.parse_args(argv)
    prog = "run-stack.sh" if args.command == "prepare" else "check-tunables"
    try:
        if args.command == "prepare":
            for line in prepare(args):
                print(line)
        else:
            problems = tunables_problems(Path(args.tunables).absolute())
            if problems:
                raise Refusal("\n".join(problems))
            print(f"{args.tunables}: every record the rules read is there, and nothing else")
    except Refusal as exc:
        for line in str(exc).splitlines():
            print(f"{prog}: {line}", file=sys.stderr)
        return 2
    except Exception as exc:  # the last line of defence: one readable line, no traceback
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

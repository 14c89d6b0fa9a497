"""A fleet of hosts: where each host's remediator listens, and the Alertmanager routes that
send each host's alerts to it (``trainguard fleet-routes --fleet FILE``).

Why routes and not one webhook with a templated URL: Alertmanager 0.25 (Debian's) cannot
template a webhook URL, and even where a later one can, letting an alert's label choose
where the bearer token is sent would let whoever writes labels collect tokens ("nothing
from an alert becomes a URL", DESIGN.md §3).  So each host gets one route matching
``host="NAME"`` (the Prometheus target label, DESIGN.md §2) with its own receiver, URL
and token file, all written by a person in the fleet file.

An alert without a ``host`` label matches no host's route: in a fleet it reaches people
(the ``notify`` route) and no remediator, since nobody can tell which machine it is
about.  (A single-host stack labels nothing and keeps deploy/alertmanager/alertmanager.yml,
whose one remediator takes host-less alerts as its own.)

The fleet file, validated as strictly as the trainguard config (unknown keys are errors,
every error names the file and key path, relative paths resolve against the file's
folder)::

    hosts:
      - name: gpu-a                                  # the `host` label of its targets
        remediator_url: http://10.0.0.11:9843/alerts # that host's remediator webhook
        token_file: secrets/gpu-a-webhook-token      # the token that remediator checks

Composition: :func:`remediator_routes` returns only the per-host routes and receivers,
for a generator of the whole alertmanager.yml (``trainguard alertmanager-config``, with
the people's receivers of the config's ``notify:`` section) to put first under
``route.routes`` and beside its receivers; its top-level ``group_by`` must include
``host`` (:data:`GROUP_BY`).  :func:`alertmanager_config` is the complete file with the
shipped placeholder ``notify`` receiver.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from trainguard.config import HOST_NAME_RE, _join, _Reader, read_yaml

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry

# As deploy/alertmanager/alertmanager.yml (tests/deploy/test_fleet.py keeps them equal):
# one group per host, job and alert name, so every alert is its own incident at its host's
# remediator and one host's alerts never wait on another's.
GROUP_BY = ["host", "training_job", "alertname"]
TOP_TIMING = {"group_wait": "10s", "group_interval": "1m", "repeat_interval": "4h"}
# The remediator deduplicates and re-checks the job itself, so a repeat costs one HTTP
# call; repeating every group interval keeps a restarted Alertmanager's notification log
# from holding the next hang's alert back (deploy/alertmanager/alertmanager.yml says how).
REMEDIATOR_TIMING = {"group_wait": "10s", "group_interval": "1m", "repeat_interval": "1m"}
NOTIFY = "notify"
MIN_TOKEN = 16


@dataclass(frozen=True)
class FleetHost:
    name: str               # the `host` label value
    remediator_url: str     # its webhook, e.g. http://10.0.0.11:9843/alerts
    token_file: Path        # absolute


@dataclass(frozen=True)
class Fleet:
    path: Path
    hosts: tuple[FleetHost, ...]


@dataclass(frozen=True)
class Routes:
    """The remediator part of an alertmanager.yml."""

    routes: list[dict[str, Any]]      # child routes, to go first under route.routes
    receivers: list[dict[str, Any]]   # one webhook receiver per host


def receiver_name(host: str) -> str:
    return f"trainguard-remediator-{host}"


# --------------------------------------------------------------------------- loading


def _url(r: _Reader, value: Any, kp: str) -> str:
    text = r.string(value, kp)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.fail(kp, f"expected an http:// or https:// URL such as "
                         f"http://10.0.0.11:9843/alerts, got {text!r}")
    if parts.username is not None or parts.password is not None:
        raise r.fail(kp, "a URL must not carry credentials; the bearer token goes in "
                         "token_file")
    if parts.query or parts.fragment:
        raise r.fail(kp, f"expected no ?query or #fragment, got {text!r}")
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise r.fail(kp, f"{exc}: {text!r}") from None
    return text


def _token_file(r: _Reader, value: Any, kp: str) -> Path:
    """The token file must exist, be readable here, be one line of at least 16 non-space
    characters (what the remediator accepts), and not be readable by everyone.  Group
    read is allowed: Debian's Alertmanager runs as its own user and reads the file
    through its group (chmod 640, chgrp prometheus)."""
    path = r.path(value, kp)
    try:
        st = path.stat()
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise r.fail(kp, f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise r.fail(kp, f"cannot read {path}: {exc.__class__.__name__}") from None
    if not stat.S_ISREG(st.st_mode):
        raise r.fail(kp, f"{path} is not a regular file")
    if st.st_mode & 0o007:
        raise r.fail(kp, f"{path} is readable by every user (mode {st.st_mode & 0o777:o}); "
                         f"run `chmod o-rwx {path}`")
    if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
        raise r.fail(kp, f"{path}: the token must be one line of at least {MIN_TOKEN} "
                         "non-space characters (as the remediator requires)")
    return path


def parse_fleet(data: Any, file: Path) -> Fleet:
    """Validate an already-parsed fleet document; ``file`` anchors relative paths."""
    file = Path(file).resolve()
    r = _Reader(file)
    top = r.mapping({} if data is None else data, "", {"hosts"})
    raw = top.get("hosts")
    if not isinstance(raw, list) or not raw:
        raise r.fail("hosts", "expected a non-empty list of hosts")
    hosts: list[FleetHost] = []
    names: dict[str, int] = {}
    urls: dict[str, int] = {}
    for i, item in enumerate(raw):
        kp = _join("hosts", i)
        d = r.mapping(item, kp, {"name", "remediator_url", "token_file"})
        for required in ("name", "remediator_url", "token_file"):
            if d.get(required) is None:
                raise r.fail(_join(kp, required), "required key is missing")
        name = r.string(d["name"], _join(kp, "name"))
        if not HOST_NAME_RE.match(name):
            raise r.fail(_join(kp, "name"), "expected a host name of letters, digits, '_', "
                                            f"'.', '-' (the `host` label), got {name!r}")
        if name in names:
            raise r.fail(_join(kp, "name"), f"duplicate host {name!r} (hosts[{names[name]}])")
        names[name] = i
        url = _url(r, d["remediator_url"], _join(kp, "remediator_url"))
        if url in urls:
            # One remediator serves one host: it ignores every other host's alerts.
            raise r.fail(_join(kp, "remediator_url"),
                         f"{url} is already hosts[{urls[url]}]'s remediator; a remediator "
                         "acts for one host only")
        urls[url] = i
        hosts.append(FleetHost(name, url, _token_file(r, d["token_file"],
                                                      _join(kp, "token_file"))))
    return Fleet(file, tuple(hosts))


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file; every failure is a :class:`ConfigError`."""
    file, data = read_yaml(path)
    return parse_fleet(data, file)


# --------------------------------------------------------------------------- generating


def remediator_routes(fleet: Fleet) -> Routes:
    """One route and one receiver per host: ``remediate="true"`` alerts whose ``host`` is
    that host go to its remediator, then on (``continue``) to the people's routes."""
    routes: list[dict[str, Any]] = []
    receivers: list[dict[str, Any]] = []
    for host in fleet.hosts:
        name = receiver_name(host.name)
        routes.append({"receiver": name,
                       "matchers": ['remediate="true"', f'host="{host.name}"'],
                       **REMEDIATOR_TIMING, "continue": True})
        receivers.append({"name": name, "webhook_configs": [{
            "url": host.remediator_url, "send_resolved": True,
            "http_config": {"authorization": {"type": "Bearer",
                                              "credentials_file": str(host.token_file)},
                            "follow_redirects": False}}]})
    return Routes(routes, receivers)


def alertmanager_config(fleet: Fleet) -> dict[str, Any]:
    """A complete alertmanager.yml: the per-host remediator routes, then everything to
    ``notify`` (a placeholder receiver, as in deploy/alertmanager/alertmanager.yml)."""
    parts = remediator_routes(fleet)
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {"receiver": NOTIFY, "group_by": list(GROUP_BY), **TOP_TIMING,
                  "routes": [*parts.routes, {"receiver": NOTIFY}]},
        "receivers": [*parts.receivers, {"name": NOTIFY}],
    }


HEADER = """\
# Generated by `trainguard fleet-routes --fleet {fleet}`: edit the fleet file, not this.
# Each host's remediate="true" alerts go to that host's remediator (matched on the
# `host` label Prometheus puts on its targets) and on to people; alerts without a host
# label reach people only.  `notify` is a placeholder: nothing is sent until you give it
# your channel (deploy/README.md "A fleet of hosts").
"""


def render(fleet: Fleet) -> str:
    return HEADER.format(fleet=fleet.path) + yaml.safe_dump(
        alertmanager_config(fleet), sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------- command


def register(registry: CommandRegistry) -> None:
    p = registry.commands.add_parser(
        "fleet-routes", help="print the Alertmanager config that routes each host's alerts "
                             "to its own remediator",
        description="Turn a fleet file (hosts, their remediator URLs and token files) into "
                    "an alertmanager.yml with one route per host matching host=\"NAME\".")
    p.add_argument("--fleet", metavar="FILE", required=True, help="the fleet file (YAML)")
    p.add_argument("--output", metavar="FILE", default=None,
                   help="write here (atomically) instead of printing")
    p.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    fleet = load_fleet(args.fleet)
    text = render(fleet)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        from trainguard.cli import UsageError

        raise UsageError(f"fleet-routes: cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out} ({len(fleet.hosts)} hosts)", file=sys.stderr)
    return 0

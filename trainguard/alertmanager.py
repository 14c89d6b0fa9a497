"""``trainguard alertmanager-config --config FILE``: the Alertmanager config a stack runs.

Why generated: the shipped deploy/alertmanager/alertmanager.yml has a placeholder
receiver, so a FluxGym user on a rented pod learned of a hang, a rescue or a give-up only
by looking.  Alertmanager speaks Discord, Slack, Telegram, e-mail and webhooks; the
config's ``notify:`` section names where to send, and this module writes exactly the
Alertmanager config for it: the remediator's route (the shipped file's, DESIGN.md §2;
tests/deploy/test_notify_config.py keeps the two equal) plus those receivers, with
messages written for a person woken at 3 a.m.  deploy/run-stack.sh and docker-compose.yml
run Alertmanager on this output and nothing else.

Secrets (DESIGN.md §4 "Alertmanager 0.25 secrets"): Alertmanager 0.25 reads a Slack URL
(``api_url_file``), an SMTP password (``auth_password_file``) and the webhook bearer token
(``credentials_file``) from files, so the output names those files; it has no file
variant for a Discord webhook URL, a generic webhook's URL or a Telegram bot token, so
those are written into the output itself.  Hence the output is a secret: ``--out FILE``
writes it 0600 (atomically), and it belongs in a state folder outside git, never in
deploy/.  ``--inline-secrets`` puts every secret in the output (one self-contained file
for a container that cannot see the host's secret files: docker-compose.yml).

What a message says comes from the alerts' annotations: the rules' ``summary`` and
``description``, and for the remediator's own reports (``TrainguardReport``, sent by
remediator.report when it decides) ``seen``, ``action``, ``checkpoint``, ``next`` and
``status_page``: what was seen, what trainguard did or refused to do and why, from which
checkpoint, and what to do next.  Reports go to ``notify-reports``, the same receivers
without "resolved" messages (a report is an event, not a state), each report its own
group, and while a report is fresh it mutes the rule alert saying the same thing in
fewer words (inhibit_rules), so a person gets one message with the reason, not two.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trainguard.config import Config, Receiver, load_config
from trainguard.secrets import SecretError, read_secret

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry

REMEDIATOR = "trainguard-remediator"
NOTIFY = "notify"
REPORTS = "notify-reports"
REPORT_ALERT = "TrainguardReport"
# The report's outcome label -> the rule alert that says the same in fewer words.
INHIBITS = {"failed_permanently": "TrainingFailedPermanently",
            "refused": "TrainingRemediationRefused",
            "gave_up": "TrainingRemediationGaveUp"}
SHIPPED_TOKEN_FILE = "secrets/webhook-token"  # noqa: S105 - a path, not a secret


class NotifyError(Exception):
    """The Alertmanager config cannot be made; the message names the file and the fix."""


# --------------------------------------------------------------------------- templates
# Go text/template, rendered by Alertmanager per notification (a group of alerts).
# Reports carry `action`; rule alerts carry `description` instead.


def _field(name: str, label: str, esc: bool) -> str:
    pipe = " | html" if esc else ""
    return (f'{{{{ if .Annotations.{name} }}}}{label}: {{{{ .Annotations.{name}{pipe} }}}}\n'
            f'{{{{ end }}}}')


def message(esc: bool = False) -> str:
    """The body: per alert, the summary, then what was seen, what trainguard did, from
    which checkpoint and what to do (reports), or the rule's description."""
    pipe = " | html" if esc else ""
    return (
        '{{ range .Alerts }}'
        '{{ if eq .Status "resolved" }}RESOLVED: {{ end }}'
        f'{{{{ .Annotations.summary{pipe} }}}}\n'
        '{{ if eq .Status "firing" }}'
        + _field("seen", "What was seen", esc)
        + _field("action", "What trainguard did", esc)
        + _field("checkpoint", "Checkpoint", esc)
        + _field("next", "What to do", esc)
        + f'{{{{ if not .Annotations.action }}}}{{{{ .Annotations.description{pipe} }}}}\n'
          '{{ end }}'
        + _field("status_page", "Status page", esc)
        + '{{ end }}\n{{ end }}')


TITLE = ('trainguard: {{ if eq .Status "resolved" }}resolved: {{ end }}'
         '{{ with index .Alerts 0 }}{{ .Annotations.summary }}{{ end }}'
         '{{ if gt (len .Alerts) 1 }} ({{ len .Alerts }} alerts){{ end }}')


def _telegram_message() -> str:
    title = TITLE.replace("{{ .Annotations.summary }}", "{{ .Annotations.summary | html }}")
    return f"<b>{title}</b>\n\n" + message(esc=True)


# --------------------------------------------------------------------------- secrets


_URL_RE = re.compile(r"^https?://[^\s/]+\S*$")
_TELEGRAM_TOKEN_RE = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
_WHAT = {"discord": "the Discord webhook URL", "slack": "the Slack incoming-webhook URL",
         "webhook": "the webhook URL", "telegram": "the Telegram bot token",
         "email": "the SMTP password"}


def secret_of(receiver: Receiver, where: str) -> str:
    """The receiver's secret, read and checked (mode 0600, one line, its shape)."""
    what = f"{_WHAT[receiver.kind]} ({where})"
    try:
        value = read_secret(receiver.secret_file, what)
    except SecretError as exc:
        raise NotifyError(str(exc)) from None
    if receiver.kind in ("discord", "slack", "webhook") and not _URL_RE.match(value):
        raise NotifyError(f"{receiver.secret_file}: {what} must be an http(s):// URL")
    if receiver.kind == "telegram" and not _TELEGRAM_TOKEN_RE.match(value):
        raise NotifyError(f"{receiver.secret_file}: {what} must look like 123456:ABC-def "
                          "(as @BotFather gives it)")
    return value


# --------------------------------------------------------------------------- the document


def _integration(r: Receiver, where: str, *, send_resolved: bool, inline: bool
                 ) -> tuple[str, dict[str, Any]]:
    # Always read, file-variant kinds too: a broken secret fails now, not at 3 a.m.
    secret = secret_of(r, f"{where}.secret_file")
    text = message()
    if r.kind == "discord":
        return "discord_configs", {"webhook_url": secret, "title": TITLE, "message": text,
                                   "send_resolved": send_resolved}
    if r.kind == "slack":
        cfg: dict[str, Any] = ({"api_url": secret} if inline
                               else {"api_url_file": str(r.secret_file)})
        if r.channel:
            cfg["channel"] = r.channel
        cfg.update(title=TITLE, text=text, send_resolved=send_resolved)
        return "slack_configs", cfg
    if r.kind == "webhook":
        return "webhook_configs", {"url": secret, "send_resolved": send_resolved,
                                   "max_alerts": 0}
    if r.kind == "telegram":
        cfg = {"bot_token": secret, "chat_id": r.chat_id, "parse_mode": "HTML",
               "message": _telegram_message(), "send_resolved": send_resolved}
        if r.api_url:
            cfg["api_url"] = r.api_url
        return "telegram_configs", cfg
    assert r.kind == "email"
    cfg = {"to": r.to, "from": r.sender, "smarthost": r.smarthost,
           "auth_username": r.username or r.sender}
    cfg.update({"auth_password": secret} if inline
               else {"auth_password_file": str(r.secret_file)})
    cfg.update(headers={"Subject": TITLE}, text=text,
               html="<pre>" + message(esc=True) + "</pre>", send_resolved=send_resolved)
    return "email_configs", cfg


def _receiver(name: str, config: Config, *, reports: bool, inline: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if config.notify is None:
        return out
    for i, r in enumerate(config.notify.receivers):
        key, cfg = _integration(r, f"notify.receivers[{i}]", inline=inline,
                                send_resolved=r.send_resolved and not reports)
        out.setdefault(key, []).append(cfg)
    return out


def remediator_url(config: Config) -> str:
    """The webhook URL of the configured remediator (a wildcard address -> loopback)."""
    listen = config.remediator.listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen.host,
                                                                        listen.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{listen.port}/alerts"


def document(config: Config, *, url: str | None = None, token_file: str | None = None,
             remediator: bool = True, inline_secrets: bool = False) -> dict[str, Any]:
    """The Alertmanager config as data (see the module doc).

    ``url``: the remediator's webhook (default: from the config); ``token_file``: what
    ``credentials_file`` names (default: remediator.token_file, absolute); without
    ``remediator`` there is no remediator route (a stack run without one).
    """
    routes: list[dict[str, Any]] = []
    receivers: list[dict[str, Any]] = []
    if remediator:
        http: dict[str, Any] = {"authorization": {"type": "Bearer"},
                                "follow_redirects": False}
        if inline_secrets:
            if config.remediator.token_file is None:
                raise NotifyError(f"{config.path}: remediator.token_file is not set")
            try:
                http["authorization"]["credentials"] = read_secret(
                    config.remediator.token_file,
                    "the webhook token file (remediator.token_file)")
            except SecretError as exc:
                raise NotifyError(str(exc)) from None
        else:
            if token_file is None:
                if config.remediator.token_file is None:
                    raise NotifyError(f"{config.path}: remediator.token_file is not set; the "
                                      "remediator's webhook needs its token (or pass "
                                      "--no-remediator for a stack without one)")
                token_file = str(config.remediator.token_file)
            http["authorization"]["credentials_file"] = token_file
        routes.append({
            "receiver": REMEDIATOR, "matchers": ['remediate="true"'],
            # As often as Alertmanager can: the remediator deduplicates per incident, and
            # a stale notification log must not hold the next hang for long (the shipped
            # file's comment says why).
            "group_wait": "10s", "group_interval": "1m", "repeat_interval": "1m",
            "continue": True})
        receivers.append({"name": REMEDIATOR, "webhook_configs": [{
            "url": url or remediator_url(config), "send_resolved": True,
            "http_config": http}]})
    routes.append({
        "receiver": REPORTS, "matchers": [f'alertname="{REPORT_ALERT}"'],
        "group_by": ["host", "training_job", "alertname", "incident"],
        "group_wait": "5s", "group_interval": "1m", "repeat_interval": "24h"})
    routes.append({"receiver": NOTIFY})
    receivers.append(_receiver(NOTIFY, config, reports=False, inline=inline_secrets))
    receivers.append(_receiver(REPORTS, config, reports=True, inline=inline_secrets))
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {"receiver": NOTIFY, "group_by": ["host", "training_job", "alertname"],
                  "group_wait": "10s", "group_interval": "1m", "repeat_interval": "4h",
                  "routes": routes},
        "inhibit_rules": [
            {"source_matchers": [f'alertname="{REPORT_ALERT}"', f'outcome="{outcome}"'],
             "target_matchers": [f'alertname="{target}"'], "equal": ["host", "training_job"]}
            for outcome, target in INHIBITS.items()],
        "receivers": receivers,
    }


HEADER = """\
# Alertmanager config written by `trainguard alertmanager-config --config {config}`.
# It holds secrets (webhook URLs, bot tokens Alertmanager 0.25 cannot read from a file):
# keep it mode 0600, outside git; make it again after changing the config's notify:.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the message templates) as literal blocks, readable as written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(config: Config, **kw: Any) -> str:
    """The Alertmanager config as YAML text, with a header saying where it came from."""
    return HEADER.format(config=config.path) + yaml.dump(
        document(config, **kw), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
        width=4096)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` mode 0600, atomically (a reader never sees half)."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# --------------------------------------------------------------------------- the command


def register(registry: CommandRegistry) -> None:
    p = registry.commands.add_parser(
        "alertmanager-config", help="print the Alertmanager config for this trainguard config",
        description="Print the effective alertmanager.yml: the remediator's route plus the "
                    "receivers of the config's notify: section.  It holds secrets: write it "
                    "with --out (mode 0600), outside git.")
    p.add_argument("--config", metavar="FILE", required=True, help="trainguard YAML config")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write it here (mode 0600, atomically) instead of stdout")
    p.add_argument("--remediator-url", metavar="URL", default=None,
                   help="the remediator's webhook (default: http://remediator.listen/alerts)")
    p.add_argument("--no-remediator", action="store_true",
                   help="no remediator route (a stack run without the remediator)")
    p.add_argument("--inline-secrets", action="store_true",
                   help="put every secret in the output, even where Alertmanager could read "
                        "a file (for a container that cannot see the secret files)")
    p.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    from trainguard.cli import UsageError

    config = load_config(args.config)
    if args.remediator_url is not None and not _URL_RE.match(args.remediator_url):
        raise UsageError(f"--remediator-url: expected an http(s):// URL, got "
                         f"{args.remediator_url!r}")
    try:
        text = render(config, url=args.remediator_url, remediator=not args.no_remediator,
                      inline_secrets=args.inline_secrets)
    except NotifyError as exc:
        raise UsageError(f"alertmanager-config: {exc}") from None
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        write_private(Path(args.out), text)
    except OSError as exc:
        raise UsageError(f"alertmanager-config: cannot write {args.out}: {exc}") from None
    kinds = ", ".join(r.kind for r in config.notify.receivers) if config.notify else "none"
    print(f"wrote {args.out} (mode 0600; receivers: {kinds})", file=sys.stderr)
    return 0

"""The remediator's HTTP side: the Alertmanager webhook, metrics, status, incidents API.

Routes and their answers (chosen with Alertmanager's retry rule in mind: it retries 5xx
and network errors only, DESIGN.md §4):

* ``POST /alerts`` — the webhook.  401 (with ``WWW-Authenticate``) without the right
  bearer token; 413 over ``max_body_bytes``; 400 naming the problem for non-JSON or a
  payload that is not Alertmanager's v4 shape (retrying a malformed body cannot help);
  **202** once every alert is recorded and, if new, queued.  Alerts for an unknown
  ``training_job``, or for another ``host`` than the config's, are recorded as
  ``ignored`` and still get 202: one notification may group alerts of several jobs, and
  a 4xx would make Alertmanager drop the known ones' delivery too.  Misrouting stays
  visible in the log and in ``/api/incidents``.  503 only
  when the state store cannot persist, so Alertmanager retries later.
* ``GET /metrics`` — this process's own registry (never the default one).
* ``GET /healthz`` — 200 ``ok`` while the store answers.
* ``GET /api/incidents`` — JSON, **token required**: incidents carry evidence (command
  lines, stacks) that may hold paths and arguments people do not want on a shared host.
* ``POST /api/jobs/<job>/reset`` — token required; re-arms a job that gave up.
* ``GET /`` — the HTML status page (remediator.status): each job's state, progress,
  newest checkpoint, what trainguard will do next and the commands, and the last
  incidents with their reasons; without the evidence (no token, since a browser cannot
  send one; the server listens on 127.0.0.1 by default).

Nothing from an alert becomes a path, a flag or a command: only the ``host`` and
``training_job`` labels are read, compared with the config's host and job names.  The
token is never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from flask import Flask, Response, jsonify, render_template_string, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from werkzeug.exceptions import HTTPException

from trainguard.config import Config
from trainguard.secrets import SecretError, read_secret

from .pipeline import Alert, Remediator, parse_time
from .status import PAGE, StatusPage
from .store import Store, StoreError, summarize

log = logging.getLogger("remediator.http")

EXTENSION = "trainguard_remediator"


class TokenError(Exception):
    """The webhook token is not configured or cannot be read; the server must not start."""


class PayloadError(ValueError):
    """The body is not an Alertmanager webhook payload; the message says where."""


def load_token(config: Config) -> str:
    """Read ``remediator.token_file``; refuse an absent, unreadable or empty one."""
    path = config.remediator.token_file
    if path is None:
        raise TokenError(f"{config.path}: remediator.token_file is not set; the webhook will "
                         "not run without a bearer token (create one, e.g. with `trainguard "
                         "init`)")
    try:
        token = read_secret(path, "the webhook token file (remediator.token_file)")
    except SecretError as exc:
        raise TokenError(str(exc)) from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise TokenError(f"{path}: the webhook token must be one line of at least 16 "
                         "non-space characters")
    return token


# --------------------------------------------------------------------------- payload


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: expected a JSON object")
    return value


def _text(value: str, where: str) -> str:
    """A string we keep: it must be valid Unicode (JSON allows lone surrogates, which
    neither SQLite nor a log line can encode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(f"{where}: not valid Unicode (a lone surrogate escape)") from None
    return value


def _labels(value: Any, where: str) -> dict[str, str]:
    labels = _obj(value, where)
    for k, v in labels.items():
        _text(k, f"{where} key")
        if not isinstance(v, str):
            raise PayloadError(f"{where}.{_safe(k)}: expected a string label value")
        _text(v, f"{where}.{_safe(k)}")
    return labels


def _safe(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")[:80]


def parse_payload(data: Any) -> list[Alert]:
    """Validate an Alertmanager v4 webhook body leniently; unknown fields are ignored."""
    body = _obj(data, "body")
    version = body.get("version")
    if version is not None and not isinstance(version, str):
        raise PayloadError("version: expected a string such as \"4\"")
    if version not in (None, "4"):
        log.warning("webhook payload version %r (expected \"4\"); reading it as v4", version)
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts: expected a list of alerts")
    out: list[Alert] = []
    for i, raw in enumerate(alerts):
        where = f"alerts[{i}]"
        alert = _obj(raw, where)
        status = alert.get("status")
        if status not in ("firing", "resolved"):
            raise PayloadError(f"{where}.status: expected \"firing\" or \"resolved\"")
        labels = _labels(alert.get("labels"), f"{where}.labels")
        starts = alert.get("startsAt")
        if not isinstance(starts, str):
            raise PayloadError(f"{where}.startsAt: expected an RFC 3339 time string")
        _text(starts, f"{where}.startsAt")
        try:
            starts_ts = parse_time(starts)
        except ValueError as exc:
            raise PayloadError(f"{where}.startsAt: {exc}") from None
        fp = alert.get("fingerprint")
        if isinstance(fp, str):
            _text(fp, f"{where}.fingerprint")
        out.append(Alert(job=labels.get("training_job", ""),
                         alertname=labels.get("alertname", "unnamed"),
                         status=status, starts_at=starts, starts_ts=starts_ts,
                         fingerprint=fp if isinstance(fp, str) else None,
                         host=labels.get("host") or None))
    return out


# --------------------------------------------------------------------------- metrics


class _StoreCollector(Collector):
    """Metrics read from the store at scrape time: they survive a remediator restart."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store

    def collect(self) -> Any:
        total = CounterMetricFamily("trainguard_remediations", "Remediation steps taken, by "
                                    "job, action and outcome (audit log rows)",
                                    labels=["training_job", "action", "outcome"])
        configured = {j.name for j in self.config.jobs}
        for (name, action, outcome), n in sorted(self.store.action_counts().items()):
            if name in configured:  # unknown names come from alerts: no label explosion
                total.add_metric([name, action, outcome], n)
        paused = GaugeMetricFamily("trainguard_job_paused",
                                   "1 while a person has paused the job: no alert acts on it "
                                   "and TrainingProcessDown stays quiet",
                                   labels=["training_job"])
        refused = GaugeMetricFamily("trainguard_remediator_refused",
                                    "1 while the job's latest incident was refused (nothing "
                                    "was signalled; the reason is on the status page)",
                                    labels=["training_job"])
        last = GaugeMetricFamily("trainguard_remediation_last_timestamp_seconds",
                                 "When the remediator last restarted the job (0: never)",
                                 labels=["training_job"])
        gave = GaugeMetricFamily("trainguard_remediator_gave_up",
                                 "1 while the job's restart budget is spent (reset re-arms)",
                                 labels=["training_job"])
        failed = GaugeMetricFamily(
            "trainguard_remediator_failed_permanently",
            "1 while the job's latest incident ended without a relaunch because the run's "
            "log shows a failure a restart repeats; class and cause name the row of "
            "remediator.failures (the error line is in the incident and the report); 0, "
            "without class and cause, otherwise",
            labels=["training_job", "class", "cause"])
        for job in self.config.jobs:
            js = self.store.job_state(job.name)
            last.add_metric([job.name], js.last_remediation or 0.0)
            gave.add_metric([job.name], 1.0 if js.gave_up else 0.0)
            paused.add_metric([job.name], 1.0 if js.paused else 0.0)
            latest = self.store.latest_decided(job.name)
            state = latest.state if latest is not None else None
            refused.add_metric([job.name], 1.0 if state == "refused" else 0.0)
            if latest is not None and state == "failed_permanently":
                failed.add_metric([job.name, latest.failure_class or "unknown",
                                   latest.failure_cause or "unknown"], 1.0)
            else:
                failed.add_metric([job.name, "", ""], 0.0)
        yield from (total, last, gave, paused, refused, failed)


# --------------------------------------------------------------------------- app

def create_app(config: Config, *, token: str | None = None, store: Store | None = None,
               start_workers: bool = True) -> Flask:
    """Build the remediator app.  Raises :class:`TokenError` / :class:`StoreError`.

    The pipeline lives in ``app.extensions["trainguard_remediator"]``; its worker threads
    start here unless ``start_workers`` is False (tests that only look at the receiver).
    """
    token = load_token(config) if token is None else token
    expected = token.encode("utf-8")
    if store is None:
        assert config.remediator.state_path is not None
        store = Store(config.remediator.state_path)
    remediator = Remediator(config, store)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_StoreCollector(config, store))

    app = Flask("remediator")
    app.config["MAX_CONTENT_LENGTH"] = config.remediator.max_body_bytes
    app.extensions[EXTENSION] = remediator

    def authorized() -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8"), expected)

    def unauthorized() -> Response:
        resp = jsonify(error="missing or wrong bearer token")
        resp.status_code = 401
        resp.headers["WWW-Authenticate"] = 'Bearer realm="trainguard"'
        return resp

    def error(status: int, message: str) -> Response:
        resp = jsonify(error=message)
        resp.status_code = status
        return resp

    def too_large() -> Response:
        return error(413, f"body larger than remediator.max_body_bytes "
                          f"({config.remediator.max_body_bytes} bytes)")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            return too_large()
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(StoreError)
    def store_error(exc: StoreError) -> Response:
        log.error("state store failed: %s; answering 503 so Alertmanager retries", exc)
        return error(503, "the state store cannot persist right now; retry later")

    @app.post("/alerts")
    def alerts() -> Response:
        if not authorized():
            log.warning("webhook call from %s without a valid bearer token: refused",
                        request.remote_addr)
            return unauthorized()
        if request.content_length is not None and \
                request.content_length > config.remediator.max_body_bytes:
            return too_large()
        raw = request.get_data(cache=False)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return error(400, "body: expected a JSON object (Alertmanager webhook v4)")
        except RecursionError:
            return error(400, "body: JSON nested too deeply for an Alertmanager payload")
        try:
            parsed = parse_payload(data)
        except PayloadError as exc:
            log.warning("webhook payload refused: %s", exc)
            return error(400, str(exc))
        decisions = [{"host": a.host, "training_job": a.job, "alertname": a.alertname,
                      "status": a.status, "decision": remediator.submit(a)} for a in parsed]
        return _json(202, {"accepted": len(parsed), "alerts": decisions})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")

    @app.get("/healthz")
    def healthz() -> Response:
        store.job_state(config.jobs[0].name)
        return Response("ok\n", mimetype="text/plain")

    @app.get("/api/incidents")
    def incidents() -> Response:
        if not authorized():
            return unauthorized()
        try:
            limit = max(1, min(1000, int(request.args.get("limit", "100"))))
        except ValueError:
            return error(400, "limit: expected an integer")
        job = request.args.get("job")
        items = [summarize(i, store.actions(incident_id=i.id))
                 for i in store.incidents(limit=limit, job=job)]
        return _json(200, {"incidents": items})

    @app.post("/api/jobs/<job>/reset")
    def reset(job: str) -> Response:
        if not authorized():
            return unauthorized()
        if config.job(job) is None:
            return error(404, f"no configured job is named {job!r}")
        store.reset_job(job)
        store.record(job, None, "reset", "ok", "re-armed through the API")
        log.info("%s: re-armed through the API (restart budget starts afresh)", job)
        return _json(200, {"training_job": job, "gave_up": False})

    def set_paused(job: str, paused: bool) -> Response:
        if not authorized():
            return unauthorized()
        if config.job(job) is None:
            return error(404, f"no configured job is named {job!r}")
        reason = "paused through the API" if paused else "unpaused through the API"
        store.set_paused(job, paused, reason)
        store.record(job, None, "pause" if paused else "unpause", "ok", reason)
        log.info("%s: %s", job, reason)
        return _json(200, {"training_job": job, "paused": paused})

    @app.post("/api/jobs/<job>/pause")
    def pause(job: str) -> Response:
        return set_paused(job, True)

    @app.post("/api/jobs/<job>/unpause")
    def unpause(job: str) -> Response:
        return set_paused(job, False)

    page = StatusPage(config, store, remediator)

    @app.get("/")
    def status() -> str:
        return render_template_string(PAGE, jobs=page.jobs(), incidents=page.incidents(),
                                      dry_run=config.remediator.dry_run, config=config.path,
                                      host=config.host,
                                      can_repair=remediator.can_repair)

    if start_workers:
        remediator.start()
    return app


def _json(status: int, body: Any) -> Response:
    resp = jsonify(body)
    resp.status_code = status
    return resp


def remediator_of(app: Flask) -> Remediator:
    """The pipeline behind an app made by :func:`create_app`."""
    rem: Remediator = app.extensions[EXTENSION]
    return rem

"""The remediator tells people what it decided and why, through Alertmanager.

Why the remediator and not a rule: a Prometheus rule knows what a gauge says (refused,
gave up, failed for good, and a class from a fixed list), never *why*: the reason is a
sentence ("the disk of /workspace/... has 120 MiB free, less than one more save needs",
"ModuleNotFoundError: No module named 'library'"), and free text must not become a label
(every new sentence would be a new series).  A status page on 127.0.0.1 of a rented pod
is out of reach of a phone at 3 a.m.  So when an incident is decided, the remediator
posts one alert, ``TrainguardReport``, to Alertmanager's API (``notify.alertmanager_url``)
with the words as annotations; Alertmanager sends it through the same receivers and
templates as every alert (trainguard.alertmanager), one message per decision, and mutes
the rule alert that says the same in fewer words while the report is fresh.

The report (annotations): ``summary`` (one line), ``seen`` (the alert in words, and the
dead run's error line when its log had one), ``action`` (what trainguard did or refused to
do, and why: the incident's reason), ``checkpoint`` (which one it resumed from),
``next`` (what a person should do), ``status_page``.  Labels: ``alertname``, ``host``
(the alert's, when it had one), ``training_job``, ``incident``, ``outcome``,
``severity``, ``remediate="false"``.

Sending never blocks a decision: a background thread posts with a short timeout and a
few retries, and a report that cannot be delivered is one log line.  Each incident is
reported once per outcome (a refused incident looked at again and refused for the same
reason is not reported again); what was reported is kept in the incident's evidence.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

from trainguard.config import Config, JobConfig

from .actions.launch import log_path
from .failures import RETRIES, pattern
from .store import Incident

log = logging.getLogger("remediator.report")

ALERTNAME = "TrainguardReport"   # trainguard.alertmanager.REPORT_ALERT
HOLD_SECONDS = 4 * 3600          # how long a report mutes its rule alert (endsAt)
REPORTED = ("done", "refused", "gave_up", "failed_permanently")
ATTEMPTS = (0.0, 2.0, 8.0)       # delays before each try
TIMEOUT = 5.0

SEEN = {
    "TrainingStalled": "no training progress: the step stopped advancing while the "
                       "process lived",
    "TrainingGPUIdle": "the job's GPUs sat idle while its process lived",
    "TrainingProcessDown": "the training process was gone and the run had not completed",
}
SUMMARY = {
    "resumed": "rescued: resumed from its newest usable checkpoint",
    "restarted": "restarted from scratch (no usable checkpoint)",
    "failed": "trainguard stopped the run but could not start it again",
    "dry_run": "dry run: trainguard would have acted",
    "refused": "trainguard refused to act; the run was left as it was",
    "gave_up": "trainguard gave up: restart budget spent",
    "failed_permanently": "the run failed and was not relaunched",
}
SEVERITY = {"resumed": "info", "restarted": "warning", "dry_run": "info", "refused": "critical",
            "gave_up": "critical", "failed_permanently": "critical", "failed": "critical"}


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."


def outcome_of(inc: Incident) -> str | None:
    """The report's outcome for a decided incident; None for those not reported."""
    if inc.state not in REPORTED:
        return None
    if inc.state == "done":
        return inc.outcome if inc.outcome in SUMMARY else "failed"
    return inc.state


def status_url(config: Config) -> str:
    if config.notify is not None and config.notify.status_url:
        return config.notify.status_url
    listen = config.remediator.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host
    return f"http://{host}:{listen.port}/"


def _checkpoint(inc: Incident) -> str | None:
    ev = inc.evidence or {}
    launched = ev.get("launched") if isinstance(ev.get("launched"), dict) else None
    plan = ev.get("plan") if isinstance(ev.get("plan"), dict) else None
    for src in (launched, plan):
        if src and src.get("checkpoint"):
            step = src.get("step")
            return f"{src['checkpoint']}" + (f" (step {step})" if step is not None else "")
    return None


def build(config: Config, job: JobConfig, inc: Incident, *, now: float | None = None
          ) -> dict[str, Any] | None:
    """The Alertmanager alert reporting ``inc`` (None when it is not reported)."""
    outcome = outcome_of(inc)
    if outcome is None:
        return None
    now = time.time() if now is None else now
    cfg = config.path
    seen = SEEN.get(inc.alertname, f"the alert {inc.alertname}")
    if inc.failure_line is not None:
        if inc.failure_line:
            seen += f"; the end of its log says: {inc.failure_line}"
        if inc.failure_cause:
            seen += f" ({pattern(inc.failure_cause).what})"
    summary = SUMMARY[outcome]
    if outcome == "failed_permanently" and inc.failure_line:
        summary = f"not relaunched: {inc.failure_line}"
    checkpoint = _checkpoint(inc) if outcome in ("resumed", "dry_run", "failed") else None
    reset = f"`trainguard remediator reset {job.name} --config {cfg}`"
    logfile = log_path(job)[0]
    budget = config.remediator.budget
    nxt = {
        "resumed": f"nothing; check that it makes progress. If it stops again trainguard acts "
                   f"again, up to {budget.max_restarts} restarts within "
                   f"{budget.window_seconds / 3600:g} h.",
        "restarted": "nothing; it starts over from step 0 (it saved no usable state: "
                     "--save_state lets trainguard resume instead).",
        "dry_run": "nothing (remediator.dry_run is on: nothing was touched).",
        "failed": f"start the run yourself after looking at {logfile}; {reset} re-arms "
                  "trainguard.",
        "refused": "fix what the reason says; trainguard looks again when the alert is "
                   "delivered again (every few minutes while it fires). Until then the run "
                   "is as it was.",
        "gave_up": f"look at {logfile}; once fixed, {reset} re-arms trainguard.",
        "failed_permanently": "",
    }[outcome]
    action = inc.reason or outcome
    if outcome == "failed_permanently":
        todo = pattern(inc.failure_cause).todo if inc.failure_cause else \
            f"look at the end of {logfile}"
        nxt = (f"{todo}; or, once it is fixed, run {reset} and trainguard resumes the run "
               "at the alert's next delivery.")
        once = RETRIES.get(inc.failure_class or "", None) == 0
        action = ("did not start it again: a restart would fail the same way" if once else
                  "did not start it again: the same failure came back after trainguard's "
                  "retry")
    page = status_url(config)
    annotations = {
        "summary": _clip(f"{job.name}: {summary}", 200),
        "seen": _clip(seen, 500),
        "action": _clip(action, 1200),
        "next": _clip(nxt, 600),
        "status_page": page,
    }
    if checkpoint:
        annotations["checkpoint"] = _clip(checkpoint, 300)
    return {
        # The alert's own host label, absent when it had none (a single-host stack), so
        # the inhibit rules' `equal: [host, training_job]` pair the report with it.
        "labels": {"alertname": ALERTNAME, **({"host": inc.host} if inc.host else {}),
                   "training_job": job.name, "incident": str(inc.id), "outcome": outcome,
                   "severity": SEVERITY[outcome], "remediate": "false"},
        "annotations": annotations,
        "startsAt": _rfc3339(now),
        "endsAt": _rfc3339(now + HOLD_SECONDS),
        "generatorURL": page,
    }


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def signature(inc: Incident) -> list[str | None]:
    """What makes a report new: the outcome and the reason."""
    return [outcome_of(inc), inc.reason]


class Reporter:
    """Posts reports to Alertmanager from one background thread."""

    def __init__(self, alertmanager_url: str) -> None:
        self.url = alertmanager_url.rstrip("/") + "/api/v2/alerts"
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def send(self, alert: dict[str, Any]) -> None:
        self._queue.put(alert)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            self._post(alert)

    def _post(self, alert: dict[str, Any]) -> None:
        body = json.dumps([alert]).encode()
        labels = alert["labels"]
        error = ""
        for delay in ATTEMPTS:
            time.sleep(delay)
            # The URL is the config's notify.alertmanager_url, validated as http(s).
            req = urllib.request.Request(  # noqa: S310
                self.url, data=body, method="POST",
                headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:  # noqa: S310
                    resp.read()
                self.sent += 1
                log.info("%s: incident %s reported to %s (%s)", labels["training_job"],
                         labels["incident"], self.url, labels["outcome"])
                return
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if exc.code < 500:
                    break      # Alertmanager refused the alert itself: retrying cannot help
            except (OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        self.failed += 1
        log.warning("%s: could not report incident %s to %s (%s); it is on the status page "
                    "and in /api/incidents", labels["training_job"], labels["incident"],
                    self.url, error)

"""The remediation pipeline (DESIGN.md §3): receive, gather facts, decide, then act.

Threads: the HTTP receiver only calls :meth:`Remediator.submit`, which decides in one
SQLite transaction whether the alert is new and, if so, puts the incident on its job's
queue.  Each configured job has one worker thread and one queue, so two jobs are handled
at the same time and one job is never handled twice at once.  One more thread samples
each job's running environment now and then (:mod:`remediator.runenv`).

A worker's round: gather :class:`~remediator.decide.Facts` (job state, launches, the
job's processes by the one job rule, completion, saves in progress, and the resume
*prepared* by :mod:`remediator.prepare`), :func:`~remediator.decide.decide`, then:

* ``Wait``: sleep (a resolved alert cancels the wait), then a new round;
* ``Skip`` / ``GiveUp`` / ``Refuse`` / ``FailPermanently``: record why, one log line,
  done.  A refusal signals nothing: the run is left as it is and a person is told
  (metric, status page, API, report); a run whose log shows a failure a restart would
  repeat (remediator.failures) is not relaunched;
* ``Act``: everything the resume needs was proven before this point.  Evidence, kill the
  job's own live processes, read the checkpoints again and confirm the choice, repair if
  the run's environment needs it, write the resumed copy, start it in the run's own
  environment, verify it lives and matches the job rule.

The side effects go through an executor (:mod:`remediator.execute`): the real one, or
the dry run's, which records what it would do.

Restart of the remediator: incidents left ``queued``/``waiting``/``acting`` are queued
again and go through the same decision.  One that had already launched a run is stale
(the launch recorded ``last_process_start`` before the crash); one that had killed but
not launched finds no process and resumes.  Nothing is done twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from trainguard import trainers
from trainguard.checkpoint import Status, inspect_checkpoint, list_checkpoints
from trainguard.checkpoint.names import AUTOMATIC_FOLDER, parse_name
from trainguard.config import Config, JobConfig
from trainguard.ledger import Resume, ResumeLedger
from trainguard.process import JobProcess, ProcessMatcher, alive, environment_of
from trainguard.progress import LogFollower, job_completed

from . import failures, report
from . import prepare as prep
from . import slurm as slurm_mod
from .decide import Act, Budget, Facts, FailPermanently, GiveUp, Refuse, Skip, Wait, decide
from .execute import Executor, executor_for, leftovers, slurm_executor_for
from .runenv import RunEnv, fallback, redacted
from .store import Incident, Store

log = logging.getLogger("remediator")

POLL = 0.5
# How often each job's running environment is looked for.  A run that dies within
# seconds of starting (a crash at its 12th step, an import error after accelerate's start)
# must have been seen alive, or it is resumed in the remediator's environment instead of
# its own; the pass is the incremental job match (trainguard.process) plus one
# /proc/PID/environ read when a job's root changed, so it is cheap.
ENV_SAMPLE_SECONDS = 5.0
# A worker waits for a burst of new deliveries to pause this long (at most SETTLE_MAX)
# before it handles an incident (Remediator._settle): a remediation starts at most a
# second later, and Alertmanager's deliveries are answered at the receiver's pace.
SETTLE_QUIET = 0.05
SETTLE_MAX = 1.0


@dataclass(frozen=True)
class Alert:
    """The part of one Alertmanager alert the remediator uses."""

    job: str
    alertname: str
    status: str          # "firing" | "resolved"
    starts_at: str       # as sent: part of the incident's identity
    starts_ts: float     # the same, as a Unix time
    fingerprint: str | None = None
    host: str | None = None   # the `host` label; None when the alert carries none


def parse_time(text: str) -> float:
    """RFC 3339 (Alertmanager sends nanoseconds and ``Z``) to a Unix time; ValueError if not."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text.strip())
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text[:60]!r}")
    frac = (m.group(2) or ".0")[:7]
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + frac + zone).timestamp()


class Cancelled(Exception):
    """The incident was cancelled (alert resolved) while waiting."""


class Remediator:
    """Owns the per-job workers; the Flask app hands it validated alerts."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.rc = config.remediator
        self.store = store
        self.matcher = ProcessMatcher(config.jobs)
        self.executor = executor_for(self.rc)
        self.can_repair = prep.repair_available()
        self._queues: dict[str, queue.Queue[int | None]] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._arrived = 0.0  # monotonic time of the last new incident (see _settle)
        self._busy: dict[str, int | None] = {j.name: None for j in config.jobs}
        # People hear of each decision through Alertmanager (remediator.report), when the
        # config says who they are.
        self.reporter = (report.Reporter(config.notify.alertmanager_url)
                         if config.notify is not None else None)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._announce()
        if self.reporter is not None:
            self.reporter.start()
        for job in self.config.jobs:
            q: queue.Queue[int | None] = queue.Queue()
            t = threading.Thread(target=self._worker, args=(job, q),
                                 name=f"remediate-{job.name}", daemon=True)
            self._queues[job.name] = q
            self._threads.append(t)
            t.start()
        sampler = threading.Thread(target=self._sample_envs, name="env-sampler", daemon=True)
        self._threads.append(sampler)
        sampler.start()
        for inc in self.store.unfinished():
            if inc.job not in self._queues:
                self.store.set_state(inc.id, "skipped", reason="the job is no longer configured")
                continue
            log.info("%s: incident %d (%s) was %s when the remediator stopped; re-checking it",
                     inc.job, inc.id, inc.alertname, inc.state)
            self.store.record(inc.job, inc.id, "recover", "requeued",
                              f"found in state {inc.state} at start-up; re-checking")
            self.store.set_state(inc.id, "queued")
            self._queues[inc.job].put(inc.id)

    def _announce(self) -> None:
        """Say at start-up what this remediator cannot do here, and clean our leftovers."""
        if not self.can_repair:
            log.warning("torch is not installed here: checkpoints that need a repair for "
                        "their run's environment cannot be repaired, and such a run is "
                        "refused rather than restarted from scratch (pip install "
                        "'trainguard[torch]')")
        for job in self.config.jobs:
            folders = [job.output_dir]
            if job.launch is not None and job.launch.script is not None:
                folders.append(job.launch.script.parent)
            for parent in (job.output_dir, job.output_dir / AUTOMATIC_FOLDER):
                with contextlib.suppress(OSError):
                    folders += [p for p in parent.iterdir()
                                if parse_name(p.name) is not None and p.is_dir()]
            for folder in dict.fromkeys(folders):
                for leftover in leftovers(folder):
                    try:
                        leftover.unlink()
                        log.info("%s: removed %s, left by an interrupted repair or copy",
                                 job.name, leftover)
                    except OSError as exc:
                        log.warning("%s: cannot remove leftover %s: %s", job.name, leftover, exc)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for q in self._queues.values():
            q.put(None)
        for t in self._threads:
            t.join(timeout)
        if self.reporter is not None:
            self.reporter.stop(timeout)

    def busy(self, job: str) -> int | None:
        """The incident a job's worker is handling now, if any."""
        return self._busy.get(job)

    def idle(self) -> bool:
        return all(q.unfinished_tasks == 0 for q in self._queues.values())

    def processes(self, job: JobConfig) -> list[JobProcess]:
        """The job's processes now, by the job rule judged over every configured job."""
        return self.matcher.match()[job.name]

    # ------------------------------------------------------------------ receiving

    def submit(self, alert: Alert) -> str:
        """Record one alert and queue it when it is new; returns what was decided.

        A job is ``(host, training_job)``: an alert for another host is recorded as
        ``ignored`` and answered 2xx like one for an unknown job (one notification may
        group several hosts' alerts; a 4xx would drop them all).  An alert without a
        ``host`` label is this host's: a single-host stack labels no target, and in a
        fleet the generated routes send host-less alerts to no remediator at all
        (trainguard.fleet).  An incident keeps the alert's own host label ('' for none,
        as rows from before the host was known): its report carries the same label, so
        Alertmanager pairs the two (remediator.report).

        One store transaction per firing alert of a configured job (Store.receive); the
        rest of the work is the worker's, which lets the receiver finish first.
        """
        host = self.config.host
        label = alert.host or ""
        if alert.host is not None and alert.host != host:
            other = alert.host[:200]
            name = alert.job[:200]
            inc, created = self.store.open_incident(
                name, alert.alertname[:200], alert.starts_at[:64], alert.starts_ts,
                alert.fingerprint, state="ignored", host=other,
                reason=f"the alert is for host {other!r}; this remediator serves host "
                       f"{host!r} (the config's `host`): check the Alertmanager routes")
            if created:
                log.warning("alert %s for training_job=%r is for host %r, not this host %r: "
                            "ignored (misrouted?)", alert.alertname, name, other, host)
                self.store.record(name, inc.id, "ignore", "skipped", f"host {other!r}")
            return "ignored"
        job = self.config.job(alert.job)
        if job is None:
            name = alert.job[:200]
            inc, created = self.store.open_incident(
                name, alert.alertname[:200], alert.starts_at[:64], alert.starts_ts,
                alert.fingerprint, state="ignored", host=label,
                reason=f"no configured job is named {name!r}")
            if created:
                log.warning("alert %s names training_job=%r, which is not configured: ignored",
                            alert.alertname, name)
                self.store.record(name, inc.id, "ignore", "skipped", "unknown job")
            return "ignored"
        if alert.status == "resolved":
            inc2 = self.store.cancel_open(job.name, alert.alertname, alert.starts_at, label)
            if inc2 is not None and inc2.state == "cancelled":
                log.info("%s: %s resolved; incident %d cancelled before acting", job.name,
                         alert.alertname, inc2.id)
                return "cancelled"
            return "resolved"
        inc, created, stale = self.store.receive(
            job.name, alert.alertname, alert.starts_at, alert.starts_ts, alert.fingerprint,
            lambda launched: f"stale: the alert started at {_fmt(alert.starts_ts)}, before "
                             f"the run trainguard started at {_fmt(launched)}", host=label)
        if stale:
            if created:
                log.info("%s: %s started %s, before the last remediation's run: stale, skipped",
                         job.name, alert.alertname, _fmt(alert.starts_ts))
            return "stale"
        if not created:
            if inc.state == "refused" and time.time() - inc.updated >= \
                    self.rc.refused_recheck_seconds and self.store.set_state(
                        inc.id, "queued", only_from=("refused",)):
                log.info("%s: %s delivered again; incident %d was refused %s, looking again",
                         job.name, alert.alertname, inc.id, _fmt(inc.updated))
                self._queues[job.name].put(inc.id)
                return "rechecking"
            # A person re-armed the job after the run failed for good: they say they
            # fixed the cause, so the next delivery is looked at again.
            if inc.state == "failed_permanently" and \
                    self.store.job_state(job.name).budget_since > inc.updated and \
                    self.store.set_state(inc.id, "queued", only_from=("failed_permanently",)):
                log.info("%s: %s delivered again after a reset; incident %d had failed for "
                         "good, looking again", job.name, alert.alertname, inc.id)
                self._queues[job.name].put(inc.id)
                return "rechecking"
            return "duplicate"
        self._arrived = time.monotonic()
        self._queues[job.name].put(inc.id)  # the worker logs it (no I/O on this path)
        return "queued"

    # ------------------------------------------------------------------ the worker

    def _worker(self, job: JobConfig, q: queue.Queue[int | None]) -> None:
        while not self._stop.is_set():
            item = q.get()
            try:
                if item is None:
                    return
                self._settle()
                self._busy[job.name] = item
                self._handle(job, item)
            except Exception as exc:  # one bad incident must not kill the job's worker
                log.exception("%s: incident %s failed unexpectedly", job.name, item)
                if item is not None:
                    self.store.record(job.name, item, "error", "failed",
                                      f"{type(exc).__name__}: {exc}")
                    self.store.set_state(item, "done", outcome="failed",
                                         reason=f"internal error: {type(exc).__name__}: {exc}")
            finally:
                self._busy[job.name] = None
                q.task_done()

    def _settle(self) -> None:
        """Let a burst of deliveries finish before handling the next incident.

        Gathering facts is CPU work in Python (the job match, the checkpoints, the log),
        and the request threads need the interpreter's lock to answer Alertmanager: a
        worker that runs while a burst is arriving slows every reply, and a slower burst
        leaves it more room (200 concurrent new deliveries, bench/bench_webhook.py: p99
        ~1.9x the bare Flask floor's with the worker running, ~1.3x with it waiting).
        So before each incident the worker waits until no new incident has arrived for
        :data:`SETTLE_QUIET` seconds, at most :data:`SETTLE_MAX`: an incident is
        handled at most a second later, and a job's worker still takes one a second
        under an endless stream of new alerts.
        """
        deadline = time.monotonic() + SETTLE_MAX
        while not self._stop.is_set():
            left = min(self._arrived + SETTLE_QUIET, deadline) - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(left)

    def _note(self, job: JobConfig, inc: Incident, action: str, outcome: str,
              detail: str) -> None:
        """One audit row and one log line per decision."""
        log.info("%s: incident %d: %s %s: %s", job.name, inc.id, action, outcome, detail)
        self.store.record(job.name, inc.id, action, outcome, detail)

    def _handle(self, job: JobConfig, incident_id: int) -> None:
        try:
            self._decide_and_act(job, incident_id)
        finally:
            self._report(job, incident_id)

    def _report(self, job: JobConfig, incident_id: int) -> None:
        """Tell people what was decided (once per outcome and reason)."""
        if self.reporter is None:
            return
        inc = self.store.get_incident(incident_id)
        if inc is None:
            return
        alert = report.build(self.config, job, inc)
        sig = report.signature(inc)
        if alert is None or (inc.evidence or {}).get("reported") == sig:
            return
        self.store.add_evidence(inc.id, "reported", sig)
        self.reporter.send(alert)

    def _decide_and_act(self, job: JobConfig, incident_id: int) -> None:
        inc = self.store.get_incident(incident_id)
        if inc is None or inc.state not in ("queued", "waiting", "acting"):
            return
        log.info("%s: incident %d for %s (started %s, received %s, %d deliveries): handling",
                 job.name, inc.id, inc.alertname, _fmt(inc.starts_ts), _fmt(inc.created),
                 inc.deliveries)
        saving_since: float | None = None
        noted: set[str] = set()
        while True:
            cur = self.store.get_incident(inc.id) or inc
            facts = self.facts(job, cur, saving_since)
            self._classified(job, cur, facts.failure)
            d = decide(facts)
            if isinstance(d, Wait):
                if d.kind == "saving" and saving_since is None:
                    saving_since = facts.now
                if d.kind not in noted:
                    noted.add(d.kind)
                    self.store.set_state(inc.id, "waiting", reason=d.reason)
                    self._note(job, inc, "wait", d.kind,
                               f"{d.reason}: re-deciding by {_fmt(d.until)}")
                until = None
                if d.kind == "saving":
                    def until() -> bool:
                        return not self._writing(job)
                try:
                    self._wait(inc, max(0.0, d.until - time.time()), until)
                except Cancelled as exc:
                    if str(exc) != "remediator stopping":
                        self._note(job, inc, "cancel", "skipped", str(exc))
                    return
                continue
            if isinstance(d, Skip):
                self._note(job, inc, "skip", "skipped", d.reason)
                if d.state != "cancelled":
                    self.store.set_state(inc.id, d.state, reason=d.reason)
            elif isinstance(d, GiveUp):
                self.store.update_job(job.name, gave_up=1, gave_up_reason=d.reason)
                self._note(job, inc, "give_up", "gave_up",
                           f"{d.reason}; no more actions until `trainguard remediator reset "
                           f"{job.name} --config {self.config.path}`")
                self.store.set_state(inc.id, "gave_up", reason=d.reason)
            elif isinstance(d, Refuse):
                self._note(job, inc, "refuse", "refused",
                           f"{d.reason}; nothing was signalled, the run is as it was")
                self.store.set_state(inc.id, "refused", outcome="refused", reason=d.reason)
            elif isinstance(d, FailPermanently):
                self._note(job, inc, "stop", "failed_permanently", d.reason)
                self.store.set_state(inc.id, "failed_permanently",
                                     outcome="failed_permanently", reason=d.reason)
            else:
                self._act(job, inc, d)
            return

    def _classified(self, job: JobConfig, inc: Incident,
                    failure: failures.Failure | None) -> None:
        """Record how the incident's run ended, once per change (audit row, log line)."""
        if failure is None or (inc.failure_class, inc.failure_cause, inc.failure_line) == \
                (failure.cls, failure.cause, failure.line):
            return
        self.store.set_failure(inc.id, failure.cls, failure.cause, failure.line)
        self._note(job, inc, "classify", failure.cls,
                   f"the run is gone and {failure.describe()} (read from the end of "
                   f"{failure.log})")

    def facts(self, job: JobConfig, inc: Incident, saving_since: float | None) -> Facts:
        """Everything :func:`decide` looks at, read now."""
        rc = self.rc
        now = time.time()
        js = self.store.job_state(job.name)
        since = max(now - rc.budget.window_seconds, js.budget_since)
        procs = alive(self.processes(job))
        follower = LogFollower.for_job(job)
        progress = follower.poll() if follower is not None else None
        run_env = self._run_env(job, procs)
        resume = prep.prepare(job, run_env, restart_from_scratch=rc.restart_from_scratch,
                              writing_fresh_seconds=self.config.exporter.writing_fresh_seconds,
                              can_repair=self.can_repair, ledger=self.store.ledger(job.name))
        completed = job_completed(job, progress, bool(procs))
        failure = failures.classify_log(job) if not procs and not completed else None
        relaunches = 0 if failure is None else self.store.failure_relaunches(
            job.name, failure.cls, since, inc.id)
        slurm = None
        if job.launch is not None and job.launch.slurm is not None:
            slurm = slurm_mod.gather(job, procs, self.config.host)
        return Facts(
            now=now, job=job.name, incident_state=inc.state, alert_started=inc.starts_ts,
            paused=js.paused, paused_reason=js.paused_reason, gave_up=js.gave_up,
            gave_up_reason=js.gave_up_reason, last_process_start=js.last_process_start,
            launches=tuple(self.store.launches_since(job.name, since)),
            processes=tuple(procs), completed=completed,
            writing=self._writing(job), saving_since=saving_since, resume=resume,
            budget=Budget(rc.budget.max_restarts, rc.budget.window_seconds,
                          rc.budget.backoff_seconds, rc.saving_wait_seconds),
            failure=failure, failure_relaunches=relaunches, rearmed_at=js.budget_since,
            slurm=slurm)

    def _wait(self, inc: Incident, seconds: float, until: Any = None) -> None:
        """Sleep up to ``seconds`` (or until ``until()``), raising Cancelled if resolved."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise Cancelled("remediator stopping")
            cur = self.store.get_incident(inc.id)
            if cur is None or cur.state == "cancelled":
                raise Cancelled("the alert resolved")
            if until is not None and until():
                return
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))

    # ------------------------------------------------------------------ acting

    def _act(self, job: JobConfig, inc: Incident, d: Act) -> None:
        if not self.store.set_state(inc.id, "acting", only_from=("queued", "waiting", "acting")):
            return  # cancelled between the decision and now
        plan = d.resume
        ex: Executor = self.executor
        if job.launch is not None and job.launch.slurm is not None:
            try:
                ex = slurm_executor_for(self.rc, job, plan, self.config.host,
                                        self.store.ledger(job.name))
            except ValueError as exc:
                self._fail(job, inc, str(exc))
                return
        dry = ex.outcome_suffix
        if d.note:
            self._note(job, inc, "wait", "timeout", d.note)
        self._note(job, inc, "decide", dry or "act",
                   f"{plan.describe()}; environment: {plan.env_source}"
                   + (f"; {plan.note}" if plan.note else ""))
        self.store.add_evidence(inc.id, "plan", {
            "action": plan.action, "argv": list(plan.argv), "cwd": str(plan.workdir),
            "checkpoint": str(plan.checkpoint.info.path) if plan.checkpoint else None,
            "env_source": plan.env_source, "env": redacted(plan.env)})

        # Kill: the job's live processes, decided before this point.
        if d.kill:
            from .actions.kill import evidence

            self.store.add_evidence(inc.id, "processes", evidence(d.kill), extend=True)
            res = ex.kill(job, list(d.kill), lambda: self.processes(job))
            outcome = dry or ("ok" if res.ok else "failed")
            if res.ok and res.gpu_released is False:
                outcome = "gpu_memory_held"  # processes gone; resuming anyway, see kill.py
            self._note(job, inc, "kill", outcome, res.detail)
            if not res.ok:
                self.store.set_state(inc.id, "done", outcome="failed",
                                     reason="the old run could not be stopped: " + res.detail)
                return
        else:
            self._note(job, inc, "kill", "skipped", "no live process of the job")

        # Confirm the choice now that nothing can be writing, and repair if needed.
        final = self._final_plan(job, inc, plan)
        if final is None:
            held = getattr(ex, "held_hint", lambda: "")()
            if held:  # a Slurm job requeued held by the kill waits for a person
                self._note(job, inc, "slurm", "held", held.lstrip("; "))
            return
        plan = final
        self.store.add_evidence(inc.id, "checkpoints_skipped", list(plan.skipped))

        # Resume.
        try:
            self._note(job, inc, "script", dry or "ok", ex.write_copy(plan))
            launched = ex.launch(job, plan)
        except Exception as exc:  # ScriptError, LaunchError: the message is for a person
            self._note(job, inc, plan.action, "failed", str(exc))
            self.store.set_state(inc.id, "done", outcome="failed", reason=str(exc))
            return
        frm = plan.describe()
        if dry:
            self._note(job, inc, plan.action, dry,
                       f"would {frm}" if plan.slurm is not None else
                       f"would run {list(plan.argv)} in {plan.workdir}: {frm}")
            self.store.set_state(inc.id, "done", outcome="dry_run",
                                 reason=f"dry run: would {frm}")
            return
        self.store.update_job(job.name, last_remediation=time.time(),
                              last_process_start=launched.started, last_pid=launched.pid)
        if plan.checkpoint is not None:
            info = plan.checkpoint.info
            self.store.append_resume(job.name, Resume(
                launched.started, os.path.relpath(info.path, job.output_dir), info.step,
                info.epoch, plan.edits.profile if plan.edits is not None else ""))
        self.store.set_run_env(job.name, plan.env, f"the environment trainguard launched "
                                                   f"incident {inc.id}'s {plan.action} with")
        if plan.slurm is not None:
            self._note(job, inc, plan.action, "started", f"{' '.join(launched.argv)}: {frm}")
        else:
            self._note(job, inc, plan.action, "started",
                       f"pid {launched.pid}: {list(plan.argv)} in {plan.workdir}, output "
                       f"appended to {plan.log_file}: {frm}")
        self.store.add_evidence(inc.id, "launched", {
            "pid": launched.pid, "create_time": launched.create_time,
            "argv": list(launched.argv), "cwd": str(plan.workdir),
            "log_file": str(plan.log_file),
            "checkpoint": str(plan.checkpoint.info.path) if plan.checkpoint else None,
            "step": plan.checkpoint.info.step if plan.checkpoint else None})
        ok, detail = ex.verify(launched, lambda: self.processes(job))
        self._note(job, inc, "verify", "ok" if ok else "failed", detail)
        outcome = ("resumed" if plan.checkpoint is not None else "restarted") if ok else "failed"
        self.store.set_state(inc.id, "done", outcome=outcome, reason=f"{frm}: {detail}")

    def _final_plan(self, job: JobConfig, inc: Incident, plan: prep.Prepared
                    ) -> prep.Prepared | None:
        """The plan after the kill: choice confirmed, repairs applied (or another one),
        and the outputs the resumed run would write over moved aside."""
        fresh = self.config.exporter.writing_fresh_seconds
        ledger = self.store.ledger(job.name)
        plan, change = prep.confirm(job, plan, writing_fresh_seconds=fresh,
                                    can_repair=self.can_repair, ledger=ledger)
        if change:
            self._note(job, inc, "choose", "changed", change)
        failed: set[str] = set()
        while plan.checkpoint is not None and plan.checkpoint.repairs:
            info = plan.checkpoint.info
            ok, detail = self.executor.repair(info, plan.python)
            self._note(job, inc, "repair", self.executor.outcome_suffix or
                       ("ok" if ok else "failed"), f"{info.name}: {detail}")
            if ok:
                if not self.executor.outcome_suffix:
                    replanned = self._replan(job, inc, plan, info.path, ledger)
                    if replanned is None:
                        return None
                    plan = replanned
                break
            failed.add(str(info.path))
            nxt, change = prep.confirm(job, plan, writing_fresh_seconds=fresh,
                                       can_repair=self.can_repair, exclude=failed,
                                       ledger=ledger)
            if nxt.checkpoint is None or str(nxt.checkpoint.info.path) in failed:
                return self._fail(job, inc, f"the repair of {info.name} failed ({detail}) and "
                                            "no other checkpoint is usable; the run was stopped "
                                            "and is not restarted from scratch over its "
                                            "checkpoints")
            self._note(job, inc, "choose", "changed", change)
            plan = nxt
        return self._keep_aside(job, inc, plan, ledger)

    def _replan(self, job: JobConfig, inc: Incident, plan: prep.Prepared, path: Path,
                ledger: ResumeLedger) -> prep.Prepared | None:
        """The plan again for the checkpoint now at ``path`` (repaired, or moved aside)."""
        fresh = self.config.exporter.writing_fresh_seconds
        try:
            info = inspect_checkpoint(path, writing_fresh_seconds=fresh)
        except OSError as exc:
            return self._fail(job, inc, f"cannot inspect {path} again: {exc}")
        new = prep.with_checkpoint(job, plan, info, ledger)
        if isinstance(new, prep.Refusal):
            return self._fail(job, inc, f"the run was stopped but its resume could not be "
                                        f"made again for {path}: {new.reason}")
        return new

    def _keep_aside(self, job: JobConfig, inc: Incident, plan: prep.Prepared,
                    ledger: ResumeLedger) -> prep.Prepared | None:
        """Rename aside what the resumed run would write over, in place (sd-scripts names
        step saves by a counter a resume restarts; trainguard.trainers.Rewrites): a
        rename, never a delete, so every state upstream would keep is still there."""
        edits = plan.edits
        if plan.checkpoint is None or edits is None or edits.rewrites is None:
            return plan
        try:
            names = trainers.at_risk(os.listdir(job.output_dir), edits)
        except OSError:
            names = []
        if not names:
            return plan
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        try:
            moved = self.executor.keep_aside(job.output_dir, names, stamp)
        except OSError as exc:
            return self._fail(job, inc, f"cannot move aside {names}, which the resumed run "
                                        f"would write over: {exc}; not resuming over them")
        what = (", ".join(f"{k} -> {v}" for k, v in moved.items()) if moved
                else f"would move aside {names}")
        self._note(job, inc, "keep", self.executor.outcome_suffix or "ok",
                   f"moved aside what the resumed run would write over: {what}")
        chosen = plan.checkpoint.info.name
        if chosen in moved:
            return self._replan(job, inc, plan, job.output_dir / moved[chosen], ledger)
        return plan

    def _fail(self, job: JobConfig, inc: Incident, reason: str) -> prep.Prepared | None:
        """End the incident as failed (after the kill); None, for the caller to return."""
        self._note(job, inc, "resume", "failed", reason)
        self.store.set_state(inc.id, "done", outcome="failed", reason=reason)
        return None

    # ------------------------------------------------------------------ environment

    def _run_env(self, job: JobConfig, procs: list[JobProcess]) -> RunEnv:
        """The run's own environment: its live root's, else the stored one, else ours."""
        roots = [p for p in procs if p.root] or procs
        for p in sorted(roots, key=lambda p: p.create_time):
            env = environment_of(p.pid)
            if env is not None:
                source = f"the running job's pid {p.pid} ({' '.join(p.cmdline)[:80]})"
                self.store.set_run_env(job.name, env, source)
                return RunEnv(env, source)
        stored = self.store.run_env(job.name)
        if stored is not None:
            js = self.store.job_state(job.name)
            return RunEnv(stored, f"{js.run_env_source}, recorded {_fmt(js.run_env_at)}")
        return fallback()

    def _sample_envs(self) -> None:
        """Record each job's running environment while it lives, so that a run that dies
        is resumed in its own environment (its /proc/PID/environ is gone by then)."""
        seen: dict[str, tuple[int, float]] = {}
        while True:
            try:
                matched = self.matcher.match()
            except Exception:  # a sampling pass that fails is retried next time
                log.debug("environment sampling failed", exc_info=True)
                matched = {}
            for job in self.config.jobs:
                roots = sorted((p for p in matched.get(job.name, ()) if p.root and p.alive),
                               key=lambda p: p.create_time)
                if not roots or seen.get(job.name) == (roots[0].pid, roots[0].create_time):
                    continue
                env = environment_of(roots[0].pid)
                if env is not None:
                    seen[job.name] = (roots[0].pid, roots[0].create_time)
                    self.store.set_run_env(job.name, env, f"the running job's pid "
                                                          f"{roots[0].pid}")
            if self._stop.wait(ENV_SAMPLE_SECONDS):
                return

    # ------------------------------------------------------------------ helpers

    def _writing(self, job: JobConfig) -> bool:
        try:
            infos = list_checkpoints(
                job.output_dir, writing_fresh_seconds=self.config.exporter.writing_fresh_seconds)
        except OSError:
            return False
        return any(i.status == Status.WRITING for i in infos)


def _fmt(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))

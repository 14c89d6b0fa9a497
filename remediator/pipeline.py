"""The remediation pipeline (DESIGN.md §3): dedupe, re-check, choose, kill, repair, resume.

Threads: the HTTP receiver only calls :meth:`Remediator.submit`, which decides in one
SQLite transaction whether the alert is new and, if so, puts the incident on its job's
queue.  Each configured job has one worker thread and one queue, so two jobs are handled
at the same time and one job is never handled twice at once.

Order inside a worker, and why:

1. gave up already → nothing (a person must ``reset``);
2. restart budget: ``max_restarts`` launches within ``window_seconds`` (counted from the
   last reset) → give up; otherwise wait out the backoff (``backoff_seconds`` doubled per
   launch in the window).  Waiting, not skipping: Alertmanager will not send this alert
   as new again, so a skipped incident would never be handled;
3. a checkpoint being written → wait up to ``saving_wait_seconds`` (a save looks exactly
   like an idle hang, DESIGN.md §4), re-checking for a resolved alert meanwhile;
4. re-check now: completed, no launch section, the alert predates the run trainguard
   started last (stale), or the job's live processes all started after the alert
   (someone already restarted it) → skip and say why;
5. evidence, then kill the job's own tree (after this the checkpoint list is final:
   nothing of the run can still be writing);
6. choose: newest step first, valid or repairable; repairable ones are repaired (with a
   backup, by :mod:`remediator.repair`); a failed repair falls back to the next one; the
   compatibility verdict for the python the run will use supplies env fixes;
7. resume from a copy of the script (never the script itself), or restart from scratch
   with the unmodified script when nothing is usable and that is allowed;
8. verify the new process lives and matches the job rule.

Restart of the remediator: incidents left ``queued``/``waiting``/``acting`` are queued
again and go through the same re-checks.  One that had already launched a run is caught
by step 4 (the launch recorded ``last_process_start`` before the crash, so the alert is
stale); one that had killed but not launched finds no process and resumes.  Nothing is
done twice, and nothing half-done is left.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from trainguard.checkpoint import (
    CheckpointInfo,
    Status,
    compat,
    inspect_checkpoint,
    list_checkpoints,
)
from trainguard.config import Config, JobConfig
from trainguard.process import JobProcess, alive, job_processes

from . import repair as repair_mod
from .actions import kill as kill_mod
from .actions import launch as launch_mod
from .actions.script import FlagSet, ScriptError, resume_argv, write_resumed_copy
from .store import Incident, Store

log = logging.getLogger("remediator")

POLL = 0.5


@dataclass(frozen=True)
class Alert:
    """The part of one Alertmanager alert the remediator uses."""

    job: str
    alertname: str
    status: str          # "firing" | "resolved"
    starts_at: str       # as sent: part of the incident's identity
    starts_ts: float     # the same, as a Unix time
    fingerprint: str | None = None


def parse_time(text: str) -> float:
    """RFC 3339 (Alertmanager sends nanoseconds and ``Z``) to a Unix time; ValueError if not."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text.strip())
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text[:60]!r}")
    frac = (m.group(2) or ".0")[:7]
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + frac + zone).timestamp()


@dataclass
class Choice:
    """The checkpoint picked for the resume, or none."""

    path: Path | None
    step: int | None = None
    env_fixes: dict[str, str] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)


class Cancelled(Exception):
    """The incident was cancelled (alert resolved) while waiting."""


class Remediator:
    """Owns the per-job workers; the Flask app hands it validated alerts."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.rc = config.remediator
        self.store = store
        self._queues: dict[str, queue.Queue[int | None]] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self._busy: dict[str, int | None] = {j.name: None for j in config.jobs}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for job in self.config.jobs:
            q: queue.Queue[int | None] = queue.Queue()
            t = threading.Thread(target=self._worker, args=(job, q),
                                 name=f"remediate-{job.name}", daemon=True)
            self._queues[job.name] = q
            self._threads[job.name] = t
            t.start()
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

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for q in self._queues.values():
            q.put(None)
        for t in self._threads.values():
            t.join(timeout)

    def busy(self, job: str) -> int | None:
        """The incident a job's worker is handling now, if any."""
        return self._busy.get(job)

    def idle(self) -> bool:
        return all(q.unfinished_tasks == 0 for q in self._queues.values())

    # ------------------------------------------------------------------ receiving

    def submit(self, alert: Alert) -> str:
        """Record one alert and queue it when it is new; returns what was decided."""
        job = self.config.job(alert.job)
        if job is None:
            name = alert.job[:200]
            inc, created = self.store.open_incident(
                name, alert.alertname[:200], alert.starts_at[:64], alert.starts_ts,
                alert.fingerprint, state="ignored",
                reason=f"no configured job is named {name!r}")
            if created:
                log.warning("alert %s names training_job=%r, which is not configured: ignored",
                            alert.alertname, name)
                self.store.record(name, inc.id, "ignore", "skipped", "unknown job")
            return "ignored"
        if alert.status == "resolved":
            inc2 = self.store.cancel_open(job.name, alert.alertname, alert.starts_at)
            if inc2 is not None and inc2.state == "cancelled":
                log.info("%s: %s resolved; incident %d cancelled before acting", job.name,
                         alert.alertname, inc2.id)
                return "cancelled"
            return "resolved"
        js = self.store.job_state(job.name)
        if js.last_process_start is not None and alert.starts_ts < js.last_process_start:
            _inc, created = self.store.open_incident(
                job.name, alert.alertname, alert.starts_at, alert.starts_ts, alert.fingerprint,
                state="skipped",
                reason=f"stale: the alert started at {_fmt(alert.starts_ts)}, before the run "
                       f"trainguard started at {_fmt(js.last_process_start)}")
            if created:
                log.info("%s: %s started %s, before the last remediation's run: stale, skipped",
                         job.name, alert.alertname, _fmt(alert.starts_ts))
                self.store.record(job.name, _inc.id, "skip", "skipped", "stale alert")
            return "stale"
        inc, created = self.store.open_incident(job.name, alert.alertname, alert.starts_at,
                                                alert.starts_ts, alert.fingerprint)
        if not created:
            return "duplicate"
        log.info("%s: new incident %d for %s (started %s): queued", job.name, inc.id,
                 alert.alertname, _fmt(alert.starts_ts))
        self._queues[job.name].put(inc.id)
        return "queued"

    # ------------------------------------------------------------------ the worker

    def _worker(self, job: JobConfig, q: queue.Queue[int | None]) -> None:
        while not self._stop.is_set():
            item = q.get()
            try:
                if item is None:
                    return
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

    def _note(self, job: JobConfig, inc: Incident, action: str, outcome: str,
              detail: str) -> None:
        """One audit row and one log line per decision."""
        log.info("%s: incident %d: %s %s: %s", job.name, inc.id, action, outcome, detail)
        self.store.record(job.name, inc.id, action, outcome, detail)

    def _skip(self, job: JobConfig, inc: Incident, reason: str) -> None:
        self._note(job, inc, "skip", "skipped", reason)
        self.store.set_state(inc.id, "skipped", reason=reason)

    def _give_up(self, job: JobConfig, inc: Incident, reason: str) -> None:
        self.store.update_job(job.name, gave_up=1, gave_up_reason=reason)
        self._note(job, inc, "give_up", "gave_up",
                   f"{reason}; no more actions until `trainguard remediator reset {job.name}`")
        self.store.set_state(inc.id, "gave_up", reason=reason)

    def _wait(self, inc: Incident, seconds: float, until: Callable[[], bool] | None = None
              ) -> None:
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

    def _handle(self, job: JobConfig, incident_id: int) -> None:
        inc = self.store.get_incident(incident_id)
        if inc is None or inc.state not in ("queued", "waiting", "acting"):
            return
        try:
            self._remediate(job, inc)
        except Cancelled as exc:
            if str(exc) == "remediator stopping":
                return  # left queued/waiting: re-checked at the next start
            log.info("%s: incident %d cancelled while waiting: %s", job.name, inc.id, exc)
            self.store.record(job.name, inc.id, "cancel", "skipped", str(exc))

    def _remediate(self, job: JobConfig, inc: Incident) -> None:
        rc = self.rc
        js = self.store.job_state(job.name)
        if js.gave_up:
            self._skip(job, inc, f"gave up earlier ({js.gave_up_reason}); run "
                                 f"`trainguard remediator reset {job.name}` to re-arm")
            self.store.set_state(inc.id, "gave_up")
            return
        if job.launch is None:
            self._skip(job, inc, "the job has no launch section: trainguard cannot restart it, "
                                 "so it does not kill it either")
            return

        # 2. restart budget and backoff
        now = time.time()
        budget = rc.budget
        since = max(now - budget.window_seconds, js.budget_since)
        launches = self.store.launches_since(job.name, since)
        if len(launches) >= budget.max_restarts:
            self._give_up(job, inc, f"restart budget spent: {len(launches)} restarts since "
                                    f"{_fmt(since)} (max_restarts {budget.max_restarts} per "
                                    f"{budget.window_seconds:g}s)")
            return
        if launches:
            backoff = budget.backoff_seconds * 2 ** (len(launches) - 1)
            wait = launches[-1] + backoff - time.time()
            if wait > 0:
                self.store.set_state(inc.id, "waiting", reason=f"restart backoff {backoff:g}s")
                self._note(job, inc, "wait", "backoff",
                           f"{len(launches)} restart(s) in the window: waiting {wait:.1f}s "
                           f"(backoff {backoff:g}s)")
                self._wait(inc, wait)

        # 3. a save in progress looks like a hang: wait for it
        if self._writing(job):
            self.store.set_state(inc.id, "waiting", reason="a checkpoint is being written")
            self._note(job, inc, "wait", "saving",
                       f"a checkpoint is being written; waiting up to {rc.saving_wait_seconds:g}s")
            self._wait(inc, rc.saving_wait_seconds, until=lambda: not self._writing(job))
            if self._writing(job):
                self._note(job, inc, "wait", "timeout",
                           "still writing after the wait: treating that save as dead")

        # 4. re-check the job as it is now
        procs = alive(job_processes(job))
        reason = self._recheck(job, inc, procs)
        if reason is not None:
            self._skip(job, inc, reason)
            return
        if not self.store.set_state(inc.id, "acting", only_from=("queued", "waiting", "acting")):
            return  # cancelled between the check and now

        # 5. evidence and kill
        dry = rc.dry_run
        if procs:
            ev = kill_mod.evidence(procs)
            self.store.add_evidence(inc.id, "processes", ev, extend=True)
            pids = [p.pid for p in procs]
            if dry:
                self._note(job, inc, "kill", "dry_run", f"would stop pids {pids}")
            else:
                res = kill_mod.kill_job(job, rc.kill_grace_seconds,
                                        rc.gpu_release_timeout_seconds, processes=procs)
                outcome = "ok" if res.ok else "failed"
                if res.ok and res.gpu_released is False:
                    outcome = "gpu_memory_held"  # processes gone; resuming anyway, see kill.py
                self._note(job, inc, "kill", outcome, res.detail)
                if not res.ok:
                    self.store.set_state(inc.id, "done", outcome="failed",
                                         reason="the old run could not be stopped: " + res.detail)
                    return
        else:
            self._note(job, inc, "kill", "skipped", "no live process of the job")

        # 6. choose (and repair)
        env_extra: dict[str, str] = {}
        choice = self._choose(job, inc, dry)
        self.store.add_evidence(inc.id, "checkpoints_skipped", choice.skipped)
        env_extra.update(choice.env_fixes)

        # 7. resume or restart
        launch = job.launch
        assert launch is not None
        try:
            if choice.path is not None:
                action = "resume"
                if launch.script is not None:
                    if dry:
                        argv = ["bash", f"<copy of {launch.script} with {launch.resume_flag} "
                                        f"{choice.path}>"]
                    else:
                        copy = write_resumed_copy(
                            launch.script, FlagSet.resume(launch.resume_flag, choice.path))
                        self._note(job, inc, "script", "ok",
                                   f"wrote {copy} with {launch.resume_flag} {choice.path}; "
                                   f"{launch.script} untouched")
                        argv = launch_mod.script_argv(copy)
                else:
                    assert launch.command is not None
                    argv = resume_argv(launch.command,
                                       FlagSet.resume(launch.resume_flag, choice.path))
            else:
                if not rc.restart_from_scratch:
                    self._give_up(job, inc, "no usable checkpoint and restart_from_scratch is "
                                            "off")
                    return
                action = "restart"
                argv = (launch_mod.script_argv(launch.script) if launch.script is not None
                        else list(launch.command or ()))
        except (ScriptError, launch_mod.LaunchError) as exc:
            self._note(job, inc, "resume", "failed", str(exc))
            self.store.set_state(inc.id, "done", outcome="failed", reason=str(exc))
            return
        logfile, configured = launch_mod.log_path(job)
        where = f"output appended to {logfile}" + (
            "" if configured else " (no log_file configured for the job)")
        fixes = f"; env fixes {env_extra}" if env_extra else ""
        if dry:
            self._note(job, inc, action, "dry_run",
                       f"would run {argv} in {launch.workdir}, {where}{fixes}")
            self.store.set_state(inc.id, "done", outcome="dry_run",
                                 reason=f"dry run: would {action}")
            return
        try:
            launched = launch_mod.start(job, argv, launch_mod.run_env(job, env_extra))
        except launch_mod.LaunchError as exc:
            self._note(job, inc, action, "failed", str(exc))
            self.store.set_state(inc.id, "done", outcome="failed", reason=str(exc))
            return
        self.store.update_job(job.name, last_remediation=time.time(),
                              last_process_start=launched.started, last_pid=launched.pid)
        frm = f"from {choice.path} (step {choice.step})" if choice.path else "from scratch"
        self._note(job, inc, action, "started",
                   f"pid {launched.pid} {frm}: {argv} in {launch.workdir}, {where}{fixes}")
        self.store.add_evidence(inc.id, "launched", {
            "pid": launched.pid, "create_time": launched.create_time, "argv": list(argv),
            "cwd": str(launch.workdir), "log_file": str(logfile),
            "checkpoint": str(choice.path) if choice.path else None, "step": choice.step,
            "env_fixes": env_extra})

        # 8. verify
        ok, detail = launch_mod.verify(job, launched, rc.verify_alive_seconds)
        self._note(job, inc, "verify", "ok" if ok else "failed", detail)
        outcome = ("resumed" if action == "resume" else "restarted") if ok else "failed"
        self.store.set_state(inc.id, "done", outcome=outcome, reason=f"{action} {frm}: {detail}")

    # ------------------------------------------------------------------ helpers

    def _checkpoints(self, job: JobConfig) -> list[CheckpointInfo]:
        """The doctor's view, with the same "still being written" window as the exporter."""
        return list_checkpoints(job.output_dir,
                                writing_fresh_seconds=self.config.exporter.writing_fresh_seconds)

    def _writing(self, job: JobConfig) -> bool:
        try:
            infos = self._checkpoints(job)
        except OSError:
            return False
        return any(i.status == Status.WRITING for i in infos)

    def _recheck(self, job: JobConfig, inc: Incident, procs: list[JobProcess]) -> str | None:
        """Why not to act now, or None to go ahead."""
        from trainguard.progress import LogFollower, job_completed

        follower = LogFollower.for_job(job)
        progress = follower.poll() if follower is not None else None
        if job_completed(job, progress, bool(procs)):
            return "the run completed normally; nothing to remediate"
        js = self.store.job_state(job.name)
        if inc.starts_ts is not None and js.last_process_start is not None \
                and inc.starts_ts < js.last_process_start:
            return (f"stale: the alert started at {_fmt(inc.starts_ts)}, before the run "
                    f"trainguard started at {_fmt(js.last_process_start)}")
        if procs and inc.starts_ts is not None and all(p.create_time > inc.starts_ts
                                                       for p in procs):
            return (f"already replaced: every live process of the job started after the alert "
                    f"({_fmt(inc.starts_ts)}); pids {[p.pid for p in procs]}")
        return None

    def _choose(self, job: JobConfig, inc: Incident, dry: bool) -> Choice:
        """Newest checkpoint the resuming environment will load, repairing it if it must.

        Status says whether the files are whole; the verdict says whether *that*
        environment's accelerate restores them (numpy names, RNG step, weights_only).
        A checkpoint needing a repair the doctor knows is repaired (backup first) for
        that environment and judged again; one that still will not load is skipped.
        """
        choice = Choice(path=None)
        env = self._environment(job)
        for info in self._checkpoints(job):
            if info.status not in (Status.VALID, Status.REPAIRABLE):
                self._pass_over(job, inc, choice, info, info.status.value, list(info.problems))
                continue
            v = compat.verdict(info, env)
            if v.repairs:
                if dry:
                    self._note(job, inc, "repair", "dry_run",
                               f"would repair {info.name} ({', '.join(v.repairs)}): "
                               f"{'; '.join((*info.problems, *v.problems))}")
                else:
                    ok, detail = _repair(info.path, env)
                    self._note(job, inc, "repair", "ok" if ok else "failed",
                               f"{info.name}: {detail}")
                    if not ok:
                        self._pass_over(job, inc, choice, info, "repair_failed", [detail])
                        continue
                    info = inspect_checkpoint(
                        info.path,
                        writing_fresh_seconds=self.config.exporter.writing_fresh_seconds)
                    v = compat.verdict(info, env)
            if not v.loads and not v.env_fixes and not (dry and v.repairs):
                self._pass_over(job, inc, choice, info, "incompatible",
                           [f"will not load under {env}: {'; '.join(v.problems)}"])
                continue
            fixes = dict(v.env_fixes)
            choice.path, choice.step, choice.env_fixes = info.path, info.step, fixes
            self._note(job, inc, "choose", "ok",
                       f"{info.name} (step {info.step}, {info.status.value})"
                       + (f", env fixes {fixes}" if fixes else ""))
            return choice
        self._note(job, inc, "choose", "none", "no usable checkpoint in " + str(job.output_dir))
        return choice

    def _pass_over(self, job: JobConfig, inc: Incident, choice: Choice, info: CheckpointInfo,
              status: str, problems: list[str]) -> None:
        choice.skipped.append({"path": str(info.path), "step": info.step, "status": status,
                               "problems": problems})
        self._note(job, inc, "choose", "skipped",
                   f"{info.name} (step {info.step}) is {status}: "
                   f"{'; '.join(problems) or 'no detail'}")

    def _environment(self, job: JobConfig) -> compat.Environment:
        """The versions the resumed run will import (see actions/launch.py)."""
        python = launch_mod.find_python(job, launch_mod.run_env(job, {}))
        if not python:
            return compat.Environment.current()
        try:
            return compat.Environment.of_python(python)
        except Exception as exc:  # a broken interpreter: judge by our own environment
            log.warning("%s: cannot read versions of %s (%s); using this environment's",
                        job.name, python, exc)
            return compat.Environment.current()


def _repair(path: Path, env: compat.Environment) -> tuple[bool, str]:
    """Repair one checkpoint for ``env`` (backup first, atomic); (ok, what happened).

    Repair needs torch (the optional ``trainguard[torch]`` extra); without it this
    fails with a message saying so and the caller moves on to an older checkpoint.
    """
    try:
        plan = repair_mod.plan_repair(path, env)
        result = repair_mod.apply_repair(plan)
    except ImportError as exc:
        return False, f"repair needs torch (pip install 'trainguard[torch]'): {exc}"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, str(result)


def _fmt(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)

"""The status page at ``/``: what a person needs at 3 a.m., readable without JavaScript.

Per job: what trainguard's state for it is (armed, paused, gave up, refused, failed for
good, handling an incident), whether its process lives, how far the run got (the log,
through trainguard.progress), its newest usable checkpoint and whether the next save fits
on the disk, **what trainguard will do next** and why, and the commands that pause,
unpause or re-arm it.  Then the last incidents with their outcome, the dead run's error
line and the reason.

Why the remediator shows this and not the exporter: the decisions, refusals and reasons
are the remediator's; the run's phase (caching, sampling...) is the exporter's and is in
Grafana.  Nothing here needs a token (a browser cannot send one): the evidence (command
lines, environments) stays behind /api/incidents, and the server listens on 127.0.0.1.

Cost: the checkpoint scanners and log followers are kept between requests (they re-read
only what changed), and a page asked for again within :data:`RESCAN_SECONDS` is served
from the last look, so a browser left on the auto-refresh costs nothing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainguard.checkpoint import CheckpointInfo, CheckpointScanner
from trainguard.config import Config, JobConfig
from trainguard.disk import available_bytes, human_bytes
from trainguard.process import alive
from trainguard.progress import LogFollower, Progress, job_completed

from .failures import pattern
from .store import Incident, JobState, Store

if TYPE_CHECKING:
    from .pipeline import Remediator

RESCAN_SECONDS = 5.0


@dataclass
class JobView:
    """One row of the jobs table (strings, ready to show)."""

    name: str
    state: str
    bad: bool
    process: str
    progress: str
    checkpoint: str
    disk: str
    next: str
    commands: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    s = max(0, int(now - ts))
    if s < 90:
        return f"{s} s ago"
    if s < 90 * 60:
        return f"{s // 60} min ago"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.1f} days ago"


def next_action(config: Config, job: JobConfig, js: JobState, latest: Incident | None,
                busy: int | None, alive_now: bool, completed: bool,
                newest: CheckpointInfo | None, newest_bytes: int | None, free: int | None,
                restarts: int) -> str:
    """What trainguard will do about the job next, and why (one or two sentences)."""
    cfg = f"--config {config.path}"
    rc = config.remediator
    if js.paused:
        return (f"Nothing: paused ({js.paused_reason or 'no reason given'}). Alerts are "
                f"recorded but not acted on until `trainguard unpause {job.name} {cfg}`.")
    if busy is not None:
        return f"Handling incident {busy} now (its steps are in the incidents table)."
    if js.gave_up:
        return (f"Nothing: it gave up ({js.gave_up_reason}). `trainguard remediator reset "
                f"{job.name} {cfg}` re-arms it.")
    if latest is not None and latest.state == "failed_permanently" and not alive_now:
        todo = (pattern(latest.failure_cause).todo if latest.failure_cause
                else "look at the end of the run's log")
        return (f"Nothing: the run failed and was not relaunched ({latest.failure_line}). "
                f"Fix it: {todo}; or, once fixed, `trainguard remediator reset {job.name} "
                f"{cfg}` and the alert's next delivery resumes it.")
    if latest is not None and latest.state == "refused":
        return (f"Looks again at the alert's next delivery, and refuses again until this is "
                f"fixed: {latest.reason}")
    if job.launch is None:
        return ("Only watches: the job has no launch section, so trainguard never stops or "
                "restarts it.")
    if completed and not alive_now:
        return "Nothing: the run completed."
    budget = (f"{restarts} of {rc.budget.max_restarts} restarts used in the last "
              f"{rc.budget.window_seconds / 3600:g} h")
    if restarts >= rc.budget.max_restarts:
        return (f"Gives up at the next alert: the restart budget is spent ({budget}); a "
                f"person must look, then `trainguard remediator reset {job.name} {cfg}`.")
    when = ("If the run hangs, stalls or dies" if alive_now
            else "When the alert for the dead run arrives")
    dry = " (dry run: it only records what it would do)" if rc.dry_run else ""
    if newest is None:
        if not rc.restart_from_scratch:
            return (f"{when}: refuses (no usable checkpoint, and "
                    f"remediator.restart_from_scratch is off).")
        return (f"{when}: stops what is left of it and restarts it from scratch (no usable "
                f"checkpoint yet){dry}; {budget}.")
    what = (f"{when}: stops what is left of it and resumes it from {newest.name} "
            f"(step {newest.step}){dry}; {budget}.")
    if newest_bytes and free is not None and free < newest_bytes:
        what += (f" But not while the disk has {human_bytes(free)} free, less than one more "
                 f"save needs ({human_bytes(newest_bytes)}): it would refuse.")
    return what


def _progress_text(p: Progress | None, now: float) -> str:
    if p is None:
        return "no log_file configured"
    if p.completed:
        return "completed (the log says model saved.)"
    if p.step is None:
        return "no step logged yet"
    total = f"/{p.total}" if p.total else ""
    return f"step {p.step}{total}, last advanced {_ago(p.last_progress, now)}"


class StatusPage:
    """Builds the page's rows; keeps scanners and log followers between requests."""

    def __init__(self, config: Config, store: Store, remediator: Remediator) -> None:
        self.config = config
        self.store = store
        self.remediator = remediator
        fresh = config.exporter.writing_fresh_seconds
        self._scanners = {j.name: CheckpointScanner(j.output_dir, fresh) for j in config.jobs}
        self._followers = {j.name: LogFollower.for_job(j) for j in config.jobs}
        self._cache: tuple[float, list[JobView]] | None = None
        self._lock = threading.Lock()

    def jobs(self) -> list[JobView]:
        now = time.monotonic()
        with self._lock:
            if self._cache is not None and now - self._cache[0] < RESCAN_SECONDS:
                return self._cache[1]
            views = [self._view(j) for j in self.config.jobs]
            self._cache = (now, views)
            return views

    def _view(self, job: JobConfig) -> JobView:
        try:
            return self._build(job)
        except Exception as exc:  # the page must render even when one job cannot be read
            return JobView(job.name, f"cannot be read: {type(exc).__name__}: {exc}", True,
                           "", "", "", "", "", [])

    def _build(self, job: JobConfig) -> JobView:
        now = time.time()
        js = self.store.job_state(job.name)
        latest = self.store.latest_decided(job.name)
        busy = self.remediator.busy(job.name)
        procs = alive(self.remediator.processes(job))
        follower = self._followers[job.name]
        progress = follower.poll(now) if follower is not None else None
        completed = job_completed(job, progress, bool(procs))
        scanner = self._scanners[job.name]
        infos = scanner.scan(now)
        newest = next((i for i in infos if i.usable), None)
        nbytes = scanner.size(newest) if newest is not None else None
        try:
            free: int | None = available_bytes(job.output_dir)
        except OSError:
            free = None
        rc = self.config.remediator
        since = max(now - rc.budget.window_seconds, js.budget_since)
        restarts = len(self.store.launches_since(job.name, since))

        state, bad = "armed", False
        if busy is not None:
            state = f"handling incident {busy}"
        elif js.gave_up:
            state, bad = f"gave up: {js.gave_up_reason}", True
        elif latest is not None and latest.state == "failed_permanently" and not procs:
            state, bad = f"failed, not relaunched (incident {latest.id})", True
        elif latest is not None and latest.state == "refused":
            state, bad = f"refused (incident {latest.id})", True
        if js.paused:
            state, bad = f"paused: {js.paused_reason or ''}", False
        if procs:
            roots = [p for p in procs if p.root] or procs
            first = min(roots, key=lambda p: p.create_time)
            process = (f"running: {len(procs)} process(es), pid {first.pid} since "
                       f"{_ago(first.create_time, now)}")
        else:
            process = "no process"
        checkpoint = ("none usable yet" if newest is None else
                      f"{newest.name}: step {newest.step}, written {_ago(newest.mtime, now)}"
                      + (f", {human_bytes(nbytes)}" if nbytes else ""))
        if free is None:
            disk = "cannot be read"
        elif nbytes:
            fits = "the next save fits" if free >= 1.5 * nbytes else (
                "the next save may not fit" if free >= nbytes else "the next save does NOT fit")
            disk = f"{human_bytes(free)} free; {fits}"
        else:
            disk = f"{human_bytes(free)} free"
        cfg = f"--config {self.config.path}"
        commands = [f"trainguard pause {job.name} {cfg} --reason 'why'",
                    f"trainguard unpause {job.name} {cfg}",
                    f"trainguard remediator reset {job.name} {cfg}"]
        return JobView(
            name=job.name, state=state, bad=bad, process=process,
            progress=_progress_text(progress, now), checkpoint=checkpoint, disk=disk,
            next=next_action(self.config, job, js, latest, busy, bool(procs), completed,
                             newest, nbytes, free, restarts),
            commands=commands,
            checkpoints=[f"{c.name}: step {c.step}, {c.status.value}" for c in infos[:10]])

    def incidents(self, limit: int = 30) -> list[dict[str, Any]]:
        out = []
        for inc in self.store.incidents(limit=limit):
            failure = (f"{inc.failure_class}: {inc.failure_line}" if inc.failure_class
                       else "")
            # Another host's alert (ignored here) says where it came from.
            job = (inc.job if not inc.host or inc.host == self.config.host
                   else f"{inc.job} @ {inc.host}")
            out.append({"id": inc.id, "job": job, "alertname": inc.alertname,
                        "when": time.strftime("%Y-%m-%d %H:%M:%S",
                                              time.localtime(inc.created)),
                        "state": inc.state, "outcome": inc.outcome or "",
                        "failure": failure, "reason": inc.reason or ""})
        return out


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trainguard remediator</title>
<meta http-equiv="refresh" content="30">
<style>body{font-family:sans-serif;margin:1.5em;max-width:90em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
.bad{color:#b00}code{background:#f4f4f4;padding:0 .2em}dt{font-weight:bold;margin-top:.4em}
dd{margin-left:1em}section{border:1px solid #ccc;padding:.5em 1em;margin:1em 0}</style>
</head><body><h1>trainguard remediator</h1>
{% if dry_run %}<p class="bad">DRY RUN: decisions are recorded, nothing is touched.</p>{% endif %}
{% if not can_repair %}<p class="bad">torch is not installed here: checkpoints that need a
repair for their run's environment cannot be repaired, and such runs are refused rather
than restarted from scratch (pip install 'trainguard[torch]').</p>{% endif %}
<p>Host <code>{{ host }}</code>. Refreshes every 30 s. Config: <code>{{ config }}</code></p>
<h2>Jobs</h2>
{% for j in jobs %}<section id="job-{{ j.name }}"><h3>{{ j.name }}</h3><dl>
<dt>trainguard</dt><dd class="{{ 'bad' if j.bad else '' }}">{{ j.state }}</dd>
<dt>process</dt><dd>{{ j.process }}</dd>
<dt>progress</dt><dd>{{ j.progress }}</dd>
<dt>newest usable checkpoint</dt><dd>{{ j.checkpoint }}</dd>
<dt>disk</dt><dd>{{ j.disk }}</dd>
<dt>what trainguard will do next</dt><dd class="next">{{ j.next }}</dd>
<dt>pause, unpause, re-arm</dt>
<dd>{% for c in j.commands %}<code>{{ c }}</code><br>{% endfor %}</dd>
<dt>checkpoints (furthest first)</dt>
<dd>{% for c in j.checkpoints %}{{ c }}<br>{% else %}none{% endfor %}</dd>
</dl></section>{% endfor %}
<h2>Recent incidents</h2><table><tr><th>#</th><th>job</th><th>alert</th>
<th>received</th><th>state</th><th>outcome</th><th>the run's error</th><th>reason</th></tr>
{% for i in incidents %}<tr><td>{{ i.id }}</td><td>{{ i.job }}</td><td>{{ i.alertname }}</td>
<td>{{ i.when }}</td><td>{{ i.state }}</td><td>{{ i.outcome }}</td><td>{{ i.failure }}</td>
<td>{{ i.reason }}</td></tr>{% else %}<tr><td colspan="8">none yet</td></tr>{% endfor %}
</table></body></html>
"""

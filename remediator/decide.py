"""What to do about one incident, decided from a snapshot of facts: pure, no side effects.

SkyPilot's recovery strategy is a short list of named steps; this is ours.  Every branch
the remediator can take is a function of :class:`Facts` alone, so each one (budget,
backoff, stale, replaced, saving, resolved, paused, restart recovery, refusal) is tested
in milliseconds without a training process (tests/remediator/test_decide.py).  The
pipeline gathers the facts, calls :func:`decide`, and hands an :class:`Act` to an
executor; it never branches on anything this module did not decide.

The order, and why:

1. the alert resolved (incident cancelled) -> nothing;
2. paused by a person -> nothing: a run stopped on purpose stays stopped;
3. gave up already -> nothing (a person must ``reset``);
3b. the run is gone and its log says it failed in a way a restart repeats
   (remediator.failures: a configuration error; a resources or resume error that came
   back after trainguard's one retry) -> not relaunched (``failed_permanently``), the
   person is told the error line and what to fix.  Before the budget: a run that fails
   at start should be reported as what it is, not as "budget spent".  Not when the run
   completed, the alert is stale, or a person re-armed the job after that failure
   (``trainguard remediator reset``: they say they fixed it);
4. restart budget: ``max_restarts`` launches within ``window_seconds`` -> give up;
   otherwise wait out the backoff (``backoff_seconds`` doubled per launch in the
   window).  Waiting, not skipping: Alertmanager will not send this alert as new again;
5. a checkpoint being written -> wait up to ``saving_wait_seconds`` (a save looks exactly
   like an idle hang, DESIGN.md §4); after that, the save is treated as dead;
6. completed (the log says so, or the newest checkpoint of a run that no longer lives is
   the end-of-training state), stale (the alert started before the run trainguard
   launched last: also how an incident left mid-action by a remediator restart is
   recognised) or already replaced (every live process started after the alert)
   -> nothing;
7. the resume cannot be prepared (no launch section, script without a training command,
   workdir gone, copy not writable, checkpoints this host cannot repair...) -> refuse:
   nothing is signalled, and a person is told why;
8. a job Slurm owns (:func:`slurm_decision`) is restarted through Slurm only: its job
   unknown -> refuse; cancelled or completed in Slurm -> nothing; already pending ->
   nothing; settling (completing) -> wait; otherwise requeue it, or, when it cannot be
   requeued (``Requeue=0``) or its batch script does not read ``trainguard
   resume-args``, cancel it and submit the resumed copy of its batch script;
9. otherwise act: kill exactly the job's live processes, then resume as prepared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from trainguard.process import JobProcess

from . import slurm as sl
from .failures import Failure
from .prepare import Prepared, Refusal


@dataclass(frozen=True)
class Budget:
    max_restarts: int
    window_seconds: float
    backoff_seconds: float
    saving_wait_seconds: float


@dataclass(frozen=True)
class Facts:
    """Everything a decision may look at, read once per round."""

    now: float
    job: str
    incident_state: str                 # queued | waiting | acting | cancelled ...
    alert_started: float | None         # the alert's startsAt
    paused: bool
    paused_reason: str | None
    gave_up: bool
    gave_up_reason: str | None
    last_process_start: float | None    # when trainguard last launched the job
    launches: tuple[float, ...]         # launch times counting against the budget
    processes: tuple[JobProcess, ...]   # the job's live processes (the job rule)
    completed: bool
    writing: bool                       # a checkpoint save is in progress
    saving_since: float | None          # when this incident began waiting for that save
    resume: Prepared | Refusal          # the resume, proven possible, or why not
    budget: Budget
    # How the run ended, from its log (only when none of its processes lives).
    failure: Failure | None = None
    # Earlier incidents in the budget window whose run died of the same class and that
    # trainguard relaunched (remediator.store.failure_relaunches).
    failure_relaunches: int = 0
    # When a person last re-armed the job (reset); a failure older than that is theirs.
    rearmed_at: float = 0.0
    slurm: sl.SlurmFacts | None = None  # the job's Slurm job, when Slurm owns the job


@dataclass(frozen=True)
class Skip:
    reason: str
    state: str = "skipped"   # the incident's final state (gave_up for a job that gave up)


@dataclass(frozen=True)
class Wait:
    kind: str                # "backoff" | "saving" | "slurm"
    until: float             # wall-clock time to re-decide at the latest
    reason: str


@dataclass(frozen=True)
class GiveUp:
    reason: str


@dataclass(frozen=True)
class Refuse:
    reason: str


@dataclass(frozen=True)
class FailPermanently:
    """Not relaunched: the failure would repeat; a person must fix its cause."""

    reason: str
    failure: Failure


@dataclass(frozen=True)
class Act:
    kill: tuple[JobProcess, ...]
    resume: Prepared
    note: str                # e.g. that a save was waited for and treated as dead


Decision = Skip | Wait | GiveUp | Refuse | FailPermanently | Act


def _fmt(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))


def decide(f: Facts) -> Decision:
    """The one decision for these facts (see the module doc for the order)."""
    if f.incident_state == "cancelled":
        return Skip("the alert resolved before any action", state="cancelled")
    if f.paused:
        return Skip(f"paused by a person ({f.paused_reason or 'no reason given'}); "
                    f"`trainguard unpause {f.job}` lets alerts act again")
    if f.gave_up:
        return Skip(f"gave up earlier ({f.gave_up_reason}); run `trainguard remediator reset "
                    f"{f.job}` to re-arm", state="gave_up")
    stop = _failure_stop(f)
    if stop is not None:
        return stop
    b = f.budget
    if len(f.launches) >= b.max_restarts:
        last = f"; {f.failure.describe()}" if f.failure is not None else ""
        return GiveUp(f"restart budget spent: {len(f.launches)} restarts within "
                      f"{b.window_seconds:g}s (max_restarts {b.max_restarts}){last}")
    if f.launches:
        backoff = b.backoff_seconds * 2 ** (len(f.launches) - 1)
        until = f.launches[-1] + backoff
        if f.now < until:
            return Wait("backoff", until, f"{len(f.launches)} restart(s) in the window: "
                                          f"backoff {backoff:g}s")
    note = ""
    if f.writing:
        started = f.saving_since if f.saving_since is not None else f.now
        if f.now < started + b.saving_wait_seconds:
            return Wait("saving", started + b.saving_wait_seconds,
                        f"a checkpoint is being written; waiting up to "
                        f"{b.saving_wait_seconds:g}s")
        note = (f"still writing after {b.saving_wait_seconds:g}s: that save is treated as "
                "dead")
    if f.completed:
        return Skip("the run completed normally; nothing to remediate")
    final = _final_state(f)
    if final is not None:
        return Skip(f"the run completed: its newest state is {final}, the end-of-training "
                    "state, and none of its processes lives")
    if f.alert_started is not None and f.last_process_start is not None \
            and f.alert_started < f.last_process_start:
        return Skip(f"stale: the alert started at {_fmt(f.alert_started)}, before the run "
                    f"trainguard started at {_fmt(f.last_process_start)}")
    if f.processes and f.alert_started is not None \
            and all(p.create_time > f.alert_started for p in f.processes):
        return Skip(f"already replaced: every live process of the job started after the "
                    f"alert ({_fmt(f.alert_started)}); pids {[p.pid for p in f.processes]}")
    if isinstance(f.resume, Refusal):
        return Refuse(f.resume.reason)
    if f.slurm is not None:
        return slurm_decision(f, f.slurm, f.resume, note)
    return Act(f.processes, f.resume, note)


def _failure_stop(f: Facts) -> FailPermanently | None:
    """Stop relaunching a run whose failure a restart repeats (see the module doc, 3b)."""
    fail = f.failure
    if fail is None or fail.retries is None or f.processes or f.completed:
        return None
    if _final_state(f) is not None:
        return None
    if f.alert_started is not None and f.last_process_start is not None \
            and f.alert_started < f.last_process_start:
        return None  # stale: decided by the stale rule below
    if fail.at and fail.at < f.rearmed_at:
        return None  # a person re-armed the job after this failure
    if f.failure_relaunches < fail.retries:
        return None
    if fail.retries == 0:
        why = "a restart would fail the same way"
    else:
        why = (f"the same kind of failure came back after trainguard relaunched the run "
               f"{f.failure_relaunches} time(s)")
    return FailPermanently(f"not relaunched: {why}; {fail.describe()}. What to do: "
                           f"{fail.todo}", fail)


SLURM_SETTLE_SECONDS = 5.0


def slurm_decision(f: Facts, s: sl.SlurmFacts, resume: Prepared, note: str) -> Decision:
    """Restart a Slurm job through Slurm, or say why not.  Never a local launch: every
    Act returned here carries a SlurmAction, and only the Slurm executor carries it out.
    """
    if s.problem is not None or s.job_id is None or s.job is None:
        return Refuse(f"Slurm owns {f.job} but {s.problem or 'its job is unknown'}")
    job = s.job
    where = f"Slurm job {s.job_id} ({s.source})"
    if not s.here:
        return Skip(f"{where} runs (or last ran) on node {job.batch_host}, not on this host: "
                    "that node's remediator acts on it")
    if job.state in sl.STOPPED_ON_PURPOSE:
        return Skip(f"{where} was {job.state.lower()} in Slurm (by a person or an admin): a "
                    "job stopped on purpose stays stopped")
    if job.state == "COMPLETED":
        return Skip(f"{where} completed (its batch script exited 0); not restarted.  A "
                    "training that fails must fail its job (`set -e`, `exec`)")
    if job.state in sl.PENDING:
        return Skip(f"{where} is already {job.state} in Slurm ({job.reason or 'no reason'}): "
                    f"Slurm starts it when it can (restart count {job.restarts})")
    if job.state in sl.SETTLING:
        return Wait("slurm", f.now + SLURM_SETTLE_SECONDS,
                    f"{where} is {job.state}: waiting for Slurm to settle it")
    if job.state not in sl.RESTARTABLE:
        return Refuse(f"{where} is in state {job.state}, which trainguard does not restart")
    if job.requeue and job.batch and s.reads_resume_args:
        method, why = "requeue", "it can be requeued and reads trainguard resume-args"
    else:
        why = ("it cannot be requeued (Requeue=0)" if not job.requeue else
               "it is not a batch job" if not job.batch else
               "its batch script does not read `trainguard resume-args`, so a requeued job "
               "would start over")
        if resume.checkpoint is not None and resume.copy is None:
            return Refuse(f"{where}: {why}, and no resumed copy of its batch script could "
                          "be made")
        method = "resubmit"
    action = sl.SlurmAction(s.job_id, method, job.restarts, job.state, s.cluster, why,
                            s.source)
    return Act(f.processes, replace(resume, slurm=action), note)


def _final_state(f: Facts) -> str | None:
    """The end-of-training state's name when it is the newest checkpoint of a run that no
    longer lives: sd-scripts writes ``{name}-state`` only when training is done, so the
    run finished whatever its log says (and resuming it would trip train_network.py:1253's
    max_train_steps assert)."""
    if f.processes or not isinstance(f.resume, Prepared) or f.resume.checkpoint is None:
        return None
    info = f.resume.checkpoint.info
    return info.name if info.final else None

"""Every decision of the pipeline from a snapshot of facts: no process, no file, no clock.

decide() is a pure function, so each branch (resolved, paused, gave up, budget, backoff,
saving, completed, stale, replaced, restart recovery, refusal, act) is checked in
microseconds.  The facts are what the pipeline would gather at that moment.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from helpers.decide_facts import ALERT, NOW, base_facts

from remediator.decide import (
    Act,
    Budget,
    Facts,
    FailPermanently,
    GiveUp,
    Refuse,
    Skip,
    Wait,
    decide,
)
from remediator.prepare import Prepared, Refusal
from trainguard.process import JobProcess

PLAN = Prepared(checkpoint=None, flags=None, argv=("bash", "/r/train.sh"), copy=None,
                copy_bytes=None, copy_mode=0, env={}, env_source="test", python=None,
                workdir=Path("/r"), log_file=Path("/r/train.log"))
HUNG = JobProcess(pid=4242, ppid=1, create_time=NOW - 3600, cmdline=("bash", "train.sh"),
                  status="sleeping", root=True)


def facts(**changes: object) -> Facts:
    return base_facts(PLAN, HUNG, **changes)


def timed(f: Facts) -> object:
    t = time.perf_counter()
    d = decide(f)
    assert time.perf_counter() - t < 1.0
    return d


def test_a_hung_run_with_a_prepared_resume_is_acted_on_killing_exactly_its_processes() -> None:
    d = timed(facts())
    assert isinstance(d, Act)
    assert d.kill == (HUNG,) and d.resume is PLAN and d.note == ""


def test_resolved_alert_does_nothing() -> None:
    d = timed(facts(incident_state="cancelled"))
    assert isinstance(d, Skip) and d.state == "cancelled"


def test_paused_job_is_left_alone_whatever_else_holds() -> None:
    d = timed(facts(paused=True, paused_reason="stopped to change the dataset",
                    launches=(NOW - 10,) * 5))
    assert isinstance(d, Skip) and "paused" in d.reason
    assert "stopped to change the dataset" in d.reason and "unpause" in d.reason


def test_gave_up_job_needs_a_person() -> None:
    d = timed(facts(gave_up=True, gave_up_reason="restart budget spent"))
    assert isinstance(d, Skip) and d.state == "gave_up" and "reset" in d.reason


def test_budget_spent_gives_up() -> None:
    d = timed(facts(launches=(NOW - 3000, NOW - 2000, NOW - 1000)))
    assert isinstance(d, GiveUp) and "3 restarts" in d.reason


@pytest.mark.parametrize(("launches", "until"), [
    ((NOW - 30,), NOW - 30 + 60),                # first backoff: 60 s
    ((NOW - 500, NOW - 50), NOW - 50 + 120),     # doubled after the second launch
])
def test_backoff_waits_until_it_has_passed(launches: tuple[float, ...], until: float) -> None:
    d = timed(facts(launches=launches, last_process_start=launches[-1], alert_started=NOW - 5))
    assert isinstance(d, Wait) and d.kind == "backoff" and d.until == until


def test_backoff_over_acts() -> None:
    d = timed(facts(launches=(NOW - 61,), last_process_start=NOW - 61, alert_started=NOW - 5))
    assert isinstance(d, Act)


def test_a_save_in_progress_is_waited_for_then_treated_as_dead() -> None:
    d = timed(facts(writing=True))
    assert isinstance(d, Wait) and d.kind == "saving" and d.until == NOW + 900
    d = timed(facts(writing=True, saving_since=NOW - 100))
    assert isinstance(d, Wait) and d.until == NOW - 100 + 900
    d = timed(facts(writing=True, saving_since=NOW - 901))
    assert isinstance(d, Act) and "treated as dead" in d.note


def test_completed_run_is_only_recorded() -> None:
    d = timed(facts(completed=True, processes=()))
    assert isinstance(d, Skip) and "completed" in d.reason


def test_a_dead_run_whose_newest_state_is_the_final_one_completed() -> None:
    """sd-scripts writes {name}-state only at the end: resuming it would trip the
    max_train_steps assert (train_network.py:1253); the run is done."""
    from remediator.prepare import Candidate
    from trainguard.checkpoint import CheckpointInfo, Status

    def plan(name: str, final: bool) -> Prepared:
        info = CheckpointInfo(path=Path("/r/out") / name, name=name, step=80,
                              step_source="train_state.json", epoch=8, status=Status.VALID,
                              problems=(), mtime=NOW - 5, rng_step=0, train_state_step=80,
                              numpy_module=None, final=final)
        return dataclasses.replace(PLAN, checkpoint=Candidate(info))

    d = timed(facts(processes=(), resume=plan("lora-state", True)))
    assert isinstance(d, Skip) and "lora-state" in d.reason and "completed" in d.reason
    assert isinstance(decide(facts(processes=(), resume=plan("lora-000006-state", False))), Act)
    # While a process lives (a new run started from the final state), it proves nothing.
    assert isinstance(decide(facts(resume=plan("lora-state", True))), Act)


def test_stale_alert_from_before_the_last_launch_is_skipped() -> None:
    d = timed(facts(last_process_start=ALERT + 1))
    assert isinstance(d, Skip) and d.reason.startswith("stale")


def test_restart_recovery_of_an_incident_that_had_already_launched_is_stale() -> None:
    """The remediator died after launching: the incident comes back 'acting' at start-up,
    and the launch it recorded makes it stale, so the new run is not killed again."""
    new_run = dataclasses.replace(HUNG, pid=5151, create_time=ALERT + 30)
    d = timed(facts(incident_state="acting", last_process_start=ALERT + 29,
                    launches=(ALERT + 29,), processes=(new_run,),
                    budget=Budget(3, 6 * 3600, 0, 900)))
    assert isinstance(d, Skip) and d.reason.startswith("stale")


def test_restart_recovery_of_an_incident_that_had_killed_but_not_launched_resumes() -> None:
    d = timed(facts(incident_state="acting", processes=()))
    assert isinstance(d, Act) and d.kill == ()


def test_run_already_replaced_by_someone_else_is_left_alone() -> None:
    replaced = dataclasses.replace(HUNG, create_time=ALERT + 60)
    d = timed(facts(processes=(replaced,)))
    assert isinstance(d, Skip) and d.reason.startswith("already replaced")


def test_a_resume_that_cannot_be_prepared_is_refused_and_nothing_is_killed() -> None:
    d = timed(facts(resume=Refusal("script has no training command")))
    assert isinstance(d, Refuse) and "training command" in d.reason


def test_refusal_never_outranks_the_checks_that_need_no_action() -> None:
    """A completed, paused or stale job is skipped as such, not reported as refused."""
    refusal = Refusal("workdir gone")
    assert isinstance(decide(facts(resume=refusal, completed=True)), Skip)
    assert isinstance(decide(facts(resume=refusal, paused=True)), Skip)
    assert isinstance(decide(facts(resume=refusal, last_process_start=ALERT + 1)), Skip)


# ------------------------------------------------------------ how the run failed (issue 13)

def failed(cause: str | None, line: str = "the error line", at: float = NOW - 60) -> object:
    from remediator.failures import Failure, pattern

    if cause is None:
        return Failure("unknown", None, line, "no error trainguard knows", "look", at=at)
    p = pattern(cause)
    return Failure(p.cls, p.cause, line, p.what, p.todo, at=at)


DEAD = {"processes": ()}


def test_a_configuration_failure_is_not_relaunched_and_says_what_to_fix() -> None:
    d = timed(facts(**DEAD, failure=failed(
        "module-not-found", "ModuleNotFoundError: No module named 'library'")))
    assert isinstance(d, FailPermanently)
    assert "No module named 'library'" in d.reason and "install" in d.reason
    assert d.failure.cls == "configuration"


def test_a_configuration_failure_beats_the_spent_budget_and_the_backoff() -> None:
    """Told as what it is, not as 'budget spent'; and not after waiting out a backoff."""
    fail = failed("module-not-found")
    assert isinstance(decide(facts(**DEAD, failure=fail, launches=(NOW - 9,) * 3)),
                      FailPermanently)
    assert isinstance(decide(facts(**DEAD, failure=fail, launches=(NOW - 9,))),
                      FailPermanently)


def test_what_outranks_a_failure() -> None:
    fail = failed("module-not-found")
    assert isinstance(decide(facts(**DEAD, failure=fail, paused=True)), Skip)
    assert decide(facts(**DEAD, failure=fail, gave_up=True, gave_up_reason="x")) == Skip(
        "gave up earlier (x); run `trainguard remediator reset lora` to re-arm", "gave_up")
    assert isinstance(decide(facts(**DEAD, failure=fail, completed=True)), Skip)
    d = decide(facts(**DEAD, failure=fail, last_process_start=ALERT + 1))
    assert isinstance(d, Skip) and d.reason.startswith("stale")
    # A live process: whatever an old log says, this is not a dead run.
    assert isinstance(decide(facts(failure=fail)), Act)


def test_a_person_who_reset_the_job_after_the_failure_gets_a_resume() -> None:
    fail = failed("module-not-found", at=NOW - 600)
    assert isinstance(decide(facts(**DEAD, failure=fail, rearmed_at=NOW - 60)), Act)
    assert isinstance(decide(facts(**DEAD, failure=fail, rearmed_at=NOW - 900)),
                      FailPermanently)


@pytest.mark.parametrize("cause", ["cuda-out-of-memory", "disk-full", "accelerate-rng-step"])
def test_resources_and_resume_errors_get_one_retry_then_stop(cause: str) -> None:
    fail = failed(cause)
    assert isinstance(decide(facts(**DEAD, failure=fail)), Act)
    d = decide(facts(**DEAD, failure=fail, failure_relaunches=1))
    assert isinstance(d, FailPermanently) and "came back" in d.reason


@pytest.mark.parametrize("cause", ["killed-by-signal", "nccl-timeout", None])
def test_transient_and_unknown_failures_resume_within_the_budget(cause: str | None) -> None:
    fail = failed(cause, "died with <Signals.SIGKILL: 9>")
    assert isinstance(decide(facts(**DEAD, failure=fail, failure_relaunches=2)), Act)
    d = decide(facts(**DEAD, failure=fail, launches=(NOW - 3000, NOW - 2000, NOW - 1000)))
    assert isinstance(d, GiveUp) and "SIGKILL" in d.reason

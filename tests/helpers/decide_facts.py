"""The base snapshot the pure decision tests start from (tests/remediator/test_decide.py,
test_slurm_decide.py): a queued incident two minutes after its alert, one hung process,
a prepared resume and the shipped budget; each test changes what it is about."""

from __future__ import annotations

import dataclasses

from remediator.decide import Budget, Facts
from remediator.prepare import Prepared
from trainguard.process import JobProcess

NOW = 1_700_000_000.0
ALERT = NOW - 120.0  # the alert started two minutes ago


def base_facts(plan: Prepared, hung: JobProcess, /, **changes: object) -> Facts:
    """The base with ``plan`` prepared and ``hung`` alive, then ``changes``; positional
    parameters, so a test may still change ``resume`` or ``processes``."""
    base = Facts(now=NOW, job="lora", incident_state="queued", alert_started=ALERT,
                 paused=False, paused_reason=None, gave_up=False, gave_up_reason=None,
                 last_process_start=None, launches=(), processes=(hung,), completed=False,
                 writing=False, saving_since=None, resume=plan,
                 budget=Budget(max_restarts=3, window_seconds=6 * 3600, backoff_seconds=60,
                               saving_wait_seconds=900))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

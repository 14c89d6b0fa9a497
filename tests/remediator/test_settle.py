"""Remediator._settle: a worker lets a burst of new deliveries finish before it gathers
facts (the request threads need the interpreter's lock; bench/bench_webhook.py shows the
cost), but never waits longer than SETTLE_MAX, and a stopping remediator does not wait.

Real pipeline object over a real store and config; nothing is started or signalled.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from helpers.remediator import make_run, write_config

from remediator.pipeline import SETTLE_MAX, SETTLE_QUIET, Remediator
from remediator.store import Store
from trainguard.config import load_config


def remediator(tmp_path: Path) -> Remediator:
    run = make_run(tmp_path, "settle-lora")
    config = load_config(write_config(tmp_path, [run], dry_run=True))
    return Remediator(config, Store(tmp_path / "state.db"))


def timed_settle(rem: Remediator) -> float:
    t0 = time.monotonic()
    rem._settle()
    return time.monotonic() - t0


def test_no_delivery_lately_means_no_wait(tmp_path: Path) -> None:
    rem = remediator(tmp_path)
    assert timed_settle(rem) < SETTLE_QUIET / 2


def test_the_worker_waits_for_a_quiet_moment(tmp_path: Path) -> None:
    rem = remediator(tmp_path)
    rem._arrived = time.monotonic()
    waited = timed_settle(rem)
    assert SETTLE_QUIET * 0.9 <= waited < SETTLE_MAX / 2


def test_an_endless_stream_delays_an_incident_by_at_most_settle_max(tmp_path: Path) -> None:
    rem = remediator(tmp_path)
    done = threading.Event()

    def stream() -> None:
        while not done.is_set():
            rem._arrived = time.monotonic()
            time.sleep(SETTLE_QUIET / 5)

    t = threading.Thread(target=stream)
    t.start()
    try:
        waited = timed_settle(rem)
    finally:
        done.set()
        t.join()
    assert SETTLE_MAX * 0.9 <= waited < SETTLE_MAX + 0.5


def test_a_stopping_remediator_does_not_wait(tmp_path: Path) -> None:
    rem = remediator(tmp_path)
    rem._arrived = time.monotonic() + 60  # as if deliveries kept coming
    threading.Timer(0.1, rem._stop.set).start()
    assert timed_settle(rem) < SETTLE_MAX / 2

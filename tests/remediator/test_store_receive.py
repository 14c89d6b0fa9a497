"""Store.receive: the receiver's write for each delivery of a firing alert.

A new alert must be one statement, on the request thread's own connection, that also
refuses an alert from before the run trainguard last launched; these check what that
statement decides, alone and under concurrent deliveries, against a real SQLite file (no
HTTP: tests/remediator/test_receiver.py covers the front door).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from remediator.store import Store, StoreError


def reason(launched: float) -> str:
    return f"stale: launched at {launched}"


def test_a_new_alert_is_queued_once_and_repeats_are_counted(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    inc, created, stale = store.receive("job", "Hung", "2026-01-01T00:00:00Z", 100.0, "fp",
                                        reason)
    assert created and not stale and inc.state == "queued" and inc.deliveries == 1
    assert store.get_incident(inc.id) == inc
    again, created2, stale2 = store.receive("job", "Hung", "2026-01-01T00:00:00Z", 100.0,
                                            "fp", reason)
    assert not created2 and not stale2 and again.id == inc.id and again.deliveries == 2
    other, created3, _ = store.receive("job", "Stalled", "2026-01-01T00:00:00Z", 100.0,
                                       "fp", reason)
    assert created3 and other.id != inc.id
    assert [i.id for i in store.incidents(job="job")] == [other.id, inc.id]


def test_an_alert_from_before_the_last_launch_is_skipped_with_its_audit_row(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.update_job("job", last_process_start=200.0)
    inc, created, stale = store.receive("job", "Hung", "2026-01-01T00:00:00Z", 150.0, None,
                                        reason)
    assert created and stale
    assert inc.state == "skipped" and inc.reason == "stale: launched at 200.0"
    assert [(a.action, a.outcome) for a in store.actions(inc.id)] == [("skip", "skipped")]
    again, created2, stale2 = store.receive("job", "Hung", "2026-01-01T00:00:00Z", 150.0,
                                            None, reason)
    assert not created2 and stale2 and again.id == inc.id and again.deliveries == 2
    assert len(store.actions(inc.id)) == 1
    # An alert that started after that launch is new work; another job is not affected.
    later, created3, stale3 = store.receive("job", "Hung", "2026-01-01T00:05:00Z", 250.0,
                                            None, reason)
    assert created3 and not stale3 and later.state == "queued"
    elsewhere, _, stale4 = store.receive("other", "Hung", "2026-01-01T00:00:00Z", 150.0,
                                         None, reason)
    assert not stale4 and elsewhere.state == "queued"


def test_the_host_is_part_of_the_identity(tmp_path: Path) -> None:
    """Prometheus evaluates a rule for every host at once: two hosts' alerts for jobs of
    one name share alertname and startsAt, and must not pass for duplicates."""
    store = Store(tmp_path / "state.db")
    here, created, _ = store.receive("job", "Hung", "2026-01-01T00:00:00Z", 100.0, None,
                                     reason, host="gpu-a")
    there, created2, _ = store.receive("job", "Hung", "2026-01-01T00:00:00Z", 100.0, None,
                                       reason, host="gpu-b")
    assert created and created2 and here.id != there.id
    assert (here.host, there.host) == ("gpu-a", "gpu-b")
    again, created3, _ = store.receive("job", "Hung", "2026-01-01T00:00:00Z", 100.0, None,
                                       reason, host="gpu-a")
    assert not created3 and again.id == here.id and again.deliveries == 2
    assert store.get_incident(there.id) == there


def test_concurrent_deliveries_are_counted_exactly(tmp_path: Path) -> None:
    """48 threads at once, each key delivered three times, while a worker's transaction
    writes on the shared connection: one incident per key, created by exactly one
    delivery, and every delivery counted."""
    store = Store(tmp_path / "state.db")
    keys = [f"2026-01-01T00:00:{k:02d}Z" for k in range(16)]
    gate = threading.Barrier(49)
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def deliver(starts_at: str) -> None:
        gate.wait()
        inc, created, _ = store.receive("job", "Hung", starts_at, 100.0, None, reason)
        with lock:
            results.append((inc.id, created))

    def worker() -> None:
        gate.wait()
        for k in range(20):
            store.record("job", None, "note", "ok", f"audit row {k}")

    threads = [threading.Thread(target=deliver, args=(k,)) for k in keys * 3]
    threads.append(threading.Thread(target=worker))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 48
    incidents = store.incidents(job="job")
    assert sorted(i.starts_at for i in incidents) == keys
    assert all(i.deliveries == 3 for i in incidents)
    assert sorted(i for i, created in results if created) == sorted(i.id for i in incidents)
    assert len(store.actions()) == 20


def test_a_store_that_cannot_write_answers_with_store_error(tmp_path: Path) -> None:
    """The receiver's 503: a state file whose table is gone, or a closed store, raises
    StoreError naming the file, on a request thread's connection as on the shared one."""
    store = Store(tmp_path / "state.db")
    store.receive("job", "Hung", "2026-01-01T00:00:00Z", 100.0, None, reason)
    other = sqlite3.connect(tmp_path / "state.db")
    other.execute("ALTER TABLE incidents RENAME TO incidents_gone")
    other.commit()
    other.close()
    with pytest.raises(StoreError, match=r"state\.db: no such table: incidents"):
        store.receive("job", "Hung", "2026-01-01T00:01:00Z", 100.0, None, reason)
    store.close()
    with pytest.raises(StoreError, match=r"state\.db: .*closed"):
        store.receive("job", "Hung", "2026-01-01T00:02:00Z", 100.0, None, reason)
    errors: list[BaseException] = []

    def fresh_thread() -> None:
        try:
            store.receive("job", "Hung", "2026-01-01T00:03:00Z", 100.0, None, reason)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=fresh_thread)
    t.start()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], StoreError)
    assert "closed" in str(errors[0])

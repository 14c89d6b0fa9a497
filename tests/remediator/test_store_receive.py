"""Store.receive: the receiver's one transaction per delivery of a firing alert.

A new alert must be one statement that also refuses an alert from before the run
trainguard last launched; these check what that statement decides against a real SQLite
file (no HTTP: tests/remediator/test_receiver.py covers the front door).
"""

from __future__ import annotations

from pathlib import Path

from remediator.store import Store


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

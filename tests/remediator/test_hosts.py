"""A remediator acts only for its own host: a job is (host, training_job).

Prometheus evaluates a rule for every host at the same instant, so two hosts whose jobs
share a name raise alerts with the same alertname *and* the same startsAt.  The alert
for the other host must be ignored (2xx, recorded with its reason) without ever passing
for a duplicate of this host's own alert, which must still be acted on.  Real hung
trainer, real HTTP.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from helpers.common import wait_for
from helpers.remediator import (
    alive_pids,
    job_tree_pids,
    kill_tree,
    make_run,
    payload,
    pids_of,
    thread_server,
    write_config,
)

from remediator.store import Store


def with_host(body: dict[str, object], host: str | None) -> dict[str, object]:
    alerts = body["alerts"]
    assert isinstance(alerts, list)
    for alert in alerts:
        if host is not None:
            alert["labels"]["host"] = host
    return body


def set_host(config: Path, host: str) -> None:
    data = yaml.safe_load(config.read_text())
    data["host"] = host
    config.write_text(yaml.safe_dump(data))


@pytest.mark.slow
def test_the_other_hosts_alert_is_ignored_and_never_shadows_this_hosts_own(
        tmp_path: Path) -> None:
    run = make_run(tmp_path, "my-lora", steps=30, extra=("--hang_at_step 15",))
    proc = run.start()
    try:
        wait_for(lambda: run.events("hang"), timeout=90, what="the run to hang")
        hung = pids_of(proc)
        config = write_config(tmp_path, [run])
        set_host(config, "gpu-a")
        starts = time.time()  # after the hang began: not "already replaced"
        with thread_server(config) as client:
            # Host B's alert first: same job name, alertname and startsAt as ours will be.
            r = client.post_alert(with_host(payload(run.name, starts=starts), "gpu-b"))
            assert r.status_code == 202, r.text
            assert r.json()["alerts"][0]["decision"] == "ignored"
            time.sleep(1.0)  # a wrongly queued incident would be acting by now
            assert alive_pids(hung) == hung
            [ignored] = client.incidents()
            assert ignored["state"] == "ignored" and ignored["host"] == "gpu-b"
            assert "'gpu-b'" in ignored["reason"] and "'gpu-a'" in ignored["reason"]
            # Delivered again: still ignored, counted, never acted on.
            again = client.post_alert(with_host(payload(run.name, starts=starts), "gpu-b"))
            assert again.json()["alerts"][0]["decision"] == "ignored"
            # Now this host's own alert, identical but for the host label: a new incident.
            r = client.post_alert(with_host(payload(run.name, starts=starts), "gpu-a"))
            assert r.json()["alerts"][0]["decision"] == "queued"
            wait_for(lambda: [e for e in run.events("start") if e.get("resume")],
                     timeout=90, what="the resumed run")
            items = client.settled(run.name, n=2)
        own = next(i for i in items if i["host"] == "gpu-a")
        other = next(i for i in items if i["host"] == "gpu-b")
        assert own["outcome"] == "resumed", own
        assert other["state"] == "ignored" and other["deliveries"] == 2
        assert not [a for a in other["actions"] if a["action"] in ("kill", "resume")]
        assert alive_pids(hung) == set()
    finally:
        kill_tree(job_tree_pids(run) | pids_of(proc))
        proc.wait(10)


def test_an_alert_without_a_host_label_is_this_hosts(tmp_path: Path) -> None:
    """A single-host stack labels no target: its alerts carry no host and are ours."""
    run = make_run(tmp_path, "solo", steps=30)
    config = write_config(tmp_path, [run], restart_from_scratch=False)
    set_host(config, "gpu-a")
    with thread_server(config) as client:
        r = client.post_alert(with_host(payload(run.name), None))
        assert r.json()["alerts"][0]["decision"] == "queued"
        [inc] = client.settled(run.name)
    # No process and no checkpoint: refused (nothing to resume); what matters is that the
    # alert was looked at as this host's (queued and decided, not ignored), and that the
    # incident keeps the alert's own (absent) host label, which its report repeats.
    assert inc["host"] == "" and inc["state"] == "refused", inc
    assert [a for a in inc["actions"] if a["action"] == "refuse"], inc


def test_an_unknown_job_on_another_host_is_ignored_as_another_hosts(tmp_path: Path) -> None:
    run = make_run(tmp_path, "solo", steps=30)
    config = write_config(tmp_path, [run])
    set_host(config, "gpu-a")
    with thread_server(config) as client:
        r = client.post_alert(with_host(payload("not-here"), "gpu-c"))
        assert r.status_code == 202 and r.json()["alerts"][0]["decision"] == "ignored"
        [inc] = client.incidents()
    assert inc["host"] == "gpu-c" and "host 'gpu-c'" in inc["reason"]


# The schema-2 incidents table, as trainguard wrote it before hosts (remediator/store.py
# at main 1b1550d): its identity had no host.
V2_INCIDENTS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, alertname TEXT NOT NULL,
    starts_at TEXT NOT NULL, starts_ts REAL, fingerprint TEXT, state TEXT NOT NULL,
    outcome TEXT, reason TEXT, created REAL NOT NULL, updated REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1, evidence TEXT,
    UNIQUE (job, alertname, starts_at));
CREATE INDEX incidents_job ON incidents (job, id);
INSERT INTO meta VALUES ('schema_version', '2');
INSERT INTO incidents (job, alertname, starts_at, starts_ts, state, outcome, created, updated)
    VALUES ('my-lora', 'TrainingStalled', '2024-01-01T00:00:00Z', 1704067200, 'done',
            'resumed', 1, 1);
"""


def test_a_schema_2_state_file_keeps_its_incidents_and_gains_the_host(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(V2_INCIDENTS)
    db.close()
    store = Store(path)
    try:
        [old] = store.incidents()
        assert (old.id, old.host, old.state, old.outcome) == (1, "", "done", "resumed")
        key = ("my-lora", "TrainingStalled", "2024-01-01T00:00:00Z", 1704067200.0, None)
        inc_b, created_b = store.open_incident(*key, state="ignored", host="gpu-b")
        inc_a, created_a = store.open_incident(*key, host="gpu-a")
        assert created_b and created_a and len({old.id, inc_a.id, inc_b.id}) == 3
        _, again = store.open_incident(*key, host="gpu-a")
        assert not again
        assert store.cancel_open("my-lora", "TrainingStalled", "2024-01-01T00:00:00Z",
                                 "gpu-b") is not None
        assert store.get_incident(inc_b.id).state == "ignored"  # type: ignore[union-attr]
    finally:
        store.close()

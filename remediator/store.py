"""The remediator's memory: incidents, the audit trail of actions, per-job budget state.

Why SQLite and not memory: Alertmanager delivers at least once and repeats while an alert
fires, and the remediator itself may be restarted between two deliveries.  Acting twice
on one alert means killing the run we just resumed.  So an incident's identity
``(host, job, alertname, startsAt)`` is a UNIQUE key on disk, and the decision "is this
new?" is one INSERT that either creates the row or finds it (answered before the HTTP
reply).  The host is part of it because Prometheus evaluates a rule for every host at
the same instant: two hosts' alerts for jobs of the same name share alertname and
startsAt, and the one for another host (recorded ``ignored``) must never pass for a
duplicate of this host's own.  Rows from before the host was known (schemas 2 and 3) keep
host ``''``.

WAL mode lets the status page read while a worker writes.  One connection, guarded by
one process-wide lock (``check_same_thread=False``), serves every method but one: the
receiver's insert of a new alert runs on the request thread's own connection, and
SQLite's write lock alone orders it with the rest.  That lock is taken and released
inside the one statement, in C; a Python lock held across the statement would have to
be released after winning the interpreter's lock back from the other request threads,
and under a burst every delivery queued behind that wait (a lock convoy:
bench/bench_webhook.py, 200 concurrent new deliveries, p99 several times the bare Flask
floor's, with stalls of up to 700 ms).

Incident states (``state``):

* ``queued``    received, waiting for its job's worker
* ``waiting``   the worker is waiting (checkpoint being written, restart backoff)
* ``acting``    the worker has started acting (kill/repair/launch may have happened)
* ``done``      remediated; ``outcome`` says how (resumed, restarted, failed, dry_run)
* ``skipped``   looked at and deliberately not acted on; ``reason`` says why
* ``cancelled`` the alert resolved before any action started
* ``gave_up``   the restart budget was spent
* ``refused``   the resume could not be prepared, so nothing was signalled; ``reason``
                says why.  A later delivery of the same alert re-checks it (the person
                may have fixed the cause meanwhile)
* ``failed_permanently``  the run is gone and its log shows a failure a restart would
                repeat (remediator.failures): not relaunched; ``reason`` has the error
                line and what to fix.  A delivery after ``trainguard remediator reset``
                re-checks it.
* ``ignored``   the alert named no configured job, or another host (kept so misrouting
                is visible)

The file holds command lines and the runs' environments (which may carry tokens): it is
created 0600, and a looser existing one is tightened.

Schema changes bump :data:`SCHEMA_VERSION`; an unknown newer version refuses to open
rather than guessing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.ledger import Resume, ResumeLedger

# 2: paused, run environment, ledger; 3: a dead run's failure class; 4: the host joins an
# incident's identity.
SCHEMA_VERSION = 4

OPEN_STATES = ("queued", "waiting", "acting")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    alertname TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    starts_ts REAL,
    fingerprint TEXT,
    state TEXT NOT NULL,
    outcome TEXT,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    evidence TEXT,
    failure_class TEXT,
    failure_cause TEXT,
    failure_line TEXT,
    host TEXT NOT NULL DEFAULT '',
    UNIQUE (host, job, alertname, starts_at)
);
CREATE INDEX IF NOT EXISTS incidents_job ON incidents (job, id);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER,
    job TEXT NOT NULL,
    ts REAL NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_job ON actions (job, action, outcome);
-- /api/incidents and the status page read each incident's actions: without this, one
-- full scan of the audit trail per incident shown.
CREATE INDEX IF NOT EXISTS actions_incident ON actions (incident_id, id);
CREATE TABLE IF NOT EXISTS jobs (
    job TEXT PRIMARY KEY,
    gave_up INTEGER NOT NULL DEFAULT 0,
    gave_up_reason TEXT,
    last_remediation REAL,
    last_process_start REAL,
    last_pid INTEGER,
    budget_since REAL NOT NULL DEFAULT 0
);
"""
# Incident columns before the host joined the identity (schema 2), copied by _add_host.
_INCIDENT_COLUMNS_V2 = ("id, job, alertname, starts_at, starts_ts, fingerprint, state, "
                        "outcome, reason, created, updated, deliveries, evidence")
# Columns added after version 1, applied to older files in place.
_JOB_COLUMNS_V2 = {"paused": "INTEGER NOT NULL DEFAULT 0", "paused_reason": "TEXT",
                   "paused_at": "REAL", "run_env": "TEXT", "run_env_source": "TEXT",
                   "run_env_at": "REAL", "ledger": "TEXT"}


# Columns added in version 3: how the incident's run ended (remediator.failures), so the
# one retry of a resources/resume failure is counted across incidents.  (Files made
# before version 3 get them here; _add_host's rebuild keeps them when they exist.)
_INCIDENT_COLUMNS_V3 = {"failure_class": "TEXT", "failure_cause": "TEXT",
                        "failure_line": "TEXT"}


class StoreError(Exception):
    """The state file cannot be opened or written; the receiver answers 503 on this."""


@dataclass(frozen=True)
class Incident:
    id: int
    host: str
    job: str
    alertname: str
    starts_at: str
    starts_ts: float | None
    fingerprint: str | None
    state: str
    outcome: str | None
    reason: str | None
    created: float
    updated: float
    deliveries: int
    evidence: dict[str, Any] | None
    failure_class: str | None = None   # remediator.failures class of the dead run
    failure_cause: str | None = None   # the table row
    failure_line: str | None = None    # the error line

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "host": self.host, "job": self.job, "alertname": self.alertname,
            "starts_at": self.starts_at, "fingerprint": self.fingerprint,
            "state": self.state, "outcome": self.outcome, "reason": self.reason,
            "created": self.created, "updated": self.updated,
            "deliveries": self.deliveries, "evidence": self.evidence,
            "failure": None if self.failure_class is None else {
                "class": self.failure_class, "cause": self.failure_cause,
                "line": self.failure_line},
        }


@dataclass(frozen=True)
class Action:
    id: int
    incident_id: int | None
    job: str
    ts: float
    action: str
    outcome: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "incident_id": self.incident_id, "job": self.job, "ts": self.ts,
                "action": self.action, "outcome": self.outcome, "detail": self.detail}


@dataclass(frozen=True)
class JobState:
    job: str
    gave_up: bool
    gave_up_reason: str | None
    last_remediation: float | None
    last_process_start: float | None
    last_pid: int | None
    budget_since: float
    paused: bool = False
    paused_reason: str | None = None
    paused_at: float | None = None
    run_env_source: str | None = None   # where the stored environment came from
    run_env_at: float | None = None


def _upsert(db: sqlite3.Connection, key: tuple[str, str, str, str], starts_ts: float | None,
            fingerprint: str | None, state: str, reason: str | None,
            now: float) -> tuple[sqlite3.Row, bool]:
    """Inside a transaction: create the incident ``key`` = (host, job, alertname,
    starts_at), or count one more delivery of the one that exists; ``(row, created)``."""
    cur = db.execute(
        "INSERT OR IGNORE INTO incidents (host, job, alertname, starts_at, starts_ts, "
        "fingerprint, state, reason, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (*key, starts_ts, fingerprint, state, reason, now, now))
    created = cur.rowcount == 1
    if not created:
        db.execute("UPDATE incidents SET deliveries = deliveries + 1 WHERE host=? AND "
                   "job=? AND alertname=? AND starts_at=?", key)
    row = db.execute("SELECT * FROM incidents WHERE host=? AND job=? AND alertname=? "
                     "AND starts_at=?", key).fetchone()
    return row, created


def _incident(row: sqlite3.Row) -> Incident:
    ev = row["evidence"]
    return Incident(
        id=row["id"], host=row["host"], job=row["job"], alertname=row["alertname"],
        starts_at=row["starts_at"],
        starts_ts=row["starts_ts"], fingerprint=row["fingerprint"], state=row["state"],
        outcome=row["outcome"], reason=row["reason"], created=row["created"],
        updated=row["updated"], deliveries=row["deliveries"],
        evidence=json.loads(ev) if ev else None, failure_class=row["failure_class"],
        failure_cause=row["failure_cause"], failure_line=row["failure_line"],
    )


class Store:
    """Thread-safe access to the state file.  Every method is one short transaction."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._local = threading.local()   # each request thread's connection (receive)
        self._own: list[sqlite3.Connection] = []
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _private(self.path)
            self._db = sqlite3.connect(str(self.path), timeout=10.0,
                                       check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            with self._tx() as db:
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is not None and int(row["value"]) > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: state file has schema version {row['value']}, newer "
                        f"than this trainguard understands ({SCHEMA_VERSION})")
                _add_host(db)
                have = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
                for column, kind in _JOB_COLUMNS_V2.items():
                    if column not in have:
                        db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
                have = {r["name"] for r in db.execute("PRAGMA table_info(incidents)")}
                for column, kind in _INCIDENT_COLUMNS_V3.items():
                    if column not in have:
                        db.execute(f"ALTER TABLE incidents ADD COLUMN {column} {kind}")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    _private(side)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open state file: {exc}") from None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open state file: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()
            for db in self._own:
                db.close()
            self._own.clear()

    def _connection(self) -> sqlite3.Connection:
        """This thread's own connection, for :meth:`receive`'s one-statement path
        (closed with the store, hence ``check_same_thread=False``)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            with self._lock:
                if self._closed:
                    raise StoreError(f"{self.path}: the state file is closed")
                db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None,
                                     check_same_thread=False)
                self._own.append(db)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from None

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from None

    # ------------------------------------------------------------------ incidents

    def open_incident(self, job: str, alertname: str, starts_at: str, starts_ts: float | None,
                      fingerprint: str | None, state: str = "queued",
                      reason: str | None = None, host: str = "") -> tuple[Incident, bool]:
        """Create the incident, or count one more delivery of an existing one.

        Returns ``(incident, created)``; ``created`` is False for a duplicate delivery.
        """
        with self._tx() as db:
            row, created = _upsert(db, (host, job, alertname, starts_at), starts_ts,
                                   fingerprint, state, reason, time.time())
        return _incident(row), created

    def receive(self, job: str, alertname: str, starts_at: str, starts_ts: float,
                fingerprint: str | None, stale_reason: Callable[[float], str],
                host: str = "") -> tuple[Incident, bool, bool]:
        """One delivery of a firing alert for a configured job; ``(incident, created,
        stale)``.  The identity is :meth:`open_incident`'s ``(host, job, alertname,
        starts_at)``; staleness is per job (``jobs.last_process_start``).

        A new alert is ONE statement (its own transaction) on this thread's connection
        (see the module's docstring): an INSERT that also checks it did not start
        before the run trainguard last launched.  A repeated delivery or a stale alert
        takes the full transaction: one more delivery counted, or the alert recorded
        ``skipped`` with ``stale_reason(that launch's time)`` and its audit row.
        """
        now = time.time()
        key = (host, job, alertname, starts_at)
        try:
            cur = self._connection().execute(
                "INSERT OR IGNORE INTO incidents (host, job, alertname, starts_at, "
                "starts_ts, fingerprint, state, created, updated) "
                "SELECT ?,?,?,?,?,?,'queued',?,? WHERE NOT EXISTS "
                "(SELECT 1 FROM jobs WHERE job=? AND last_process_start > ?)",
                (*key, starts_ts, fingerprint, now, now, job, starts_ts))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        if cur.rowcount == 1 and cur.lastrowid is not None:
            return Incident(id=cur.lastrowid, host=host, job=job, alertname=alertname,
                            starts_at=starts_at, starts_ts=starts_ts,
                            fingerprint=fingerprint, state="queued", outcome=None,
                            reason=None, created=now, updated=now, deliveries=1,
                            evidence=None), True, False
        with self._tx() as db:
            row = db.execute("SELECT last_process_start FROM jobs WHERE job=?",
                             (job,)).fetchone()
            launched: float | None = row["last_process_start"] if row is not None else None
            stale = launched is not None and starts_ts < launched
            inc, created = _upsert(
                db, key, starts_ts, fingerprint, "skipped" if stale else "queued",
                stale_reason(launched) if launched is not None and stale else None, now)
            if created and stale:
                db.execute("INSERT INTO actions (incident_id, job, ts, action, outcome, "
                           "detail) VALUES (?,?,?,?,?,?)",
                           (inc["id"], job, now, "skip", "skipped", "stale alert"))
        return _incident(inc), created, stale

    def get_incident(self, incident_id: int) -> Incident | None:
        rows = self._read("SELECT * FROM incidents WHERE id=?", (incident_id,))
        return _incident(rows[0]) if rows else None

    def set_state(self, incident_id: int, state: str, *, outcome: str | None = None,
                  reason: str | None = None, only_from: tuple[str, ...] | None = None) -> bool:
        """Move an incident to ``state``; with ``only_from``, only if it is in one of those.

        Returns whether the row changed (so "cancel unless already acting" is atomic).
        """
        sql = ("UPDATE incidents SET state=?, outcome=COALESCE(?, outcome), "
               "reason=COALESCE(?, reason), updated=? WHERE id=?")
        args: tuple[Any, ...] = (state, outcome, reason, time.time(), incident_id)
        if only_from:
            sql += f" AND state IN ({','.join('?' * len(only_from))})"
            args += tuple(only_from)
        with self._tx() as db:
            return db.execute(sql, args).rowcount == 1

    def cancel_open(self, job: str, alertname: str, starts_at: str,
                    host: str = "") -> Incident | None:
        """A resolved alert: cancel its incident if no action has started yet."""
        key = (host, job, alertname, starts_at)
        with self._tx() as db:
            db.execute("UPDATE incidents SET state='cancelled', reason=?, updated=? WHERE "
                       "host=? AND job=? AND alertname=? AND starts_at=? AND state IN "
                       "('queued','waiting')",
                       ("the alert resolved before any action started", time.time(), *key))
            row = db.execute("SELECT * FROM incidents WHERE host=? AND job=? AND alertname=? "
                             "AND starts_at=?", key).fetchone()
        return _incident(row) if row else None

    def add_evidence(self, incident_id: int, key: str, value: Any, *,
                     extend: bool = False) -> None:
        """Set ``evidence[key]``; with ``extend``, append to the list already there (an
        incident re-checked after a remediator restart keeps the first attempt's evidence).
        """
        with self._tx() as db:
            row = db.execute("SELECT evidence FROM incidents WHERE id=?",
                             (incident_id,)).fetchone()
            ev = json.loads(row["evidence"]) if row and row["evidence"] else {}
            if extend and isinstance(ev.get(key), list) and isinstance(value, list):
                value = ev[key] + value
            ev[key] = value
            db.execute("UPDATE incidents SET evidence=?, updated=? WHERE id=?",
                       (json.dumps(ev), time.time(), incident_id))

    def set_failure(self, incident_id: int, cls: str, cause: str | None, line: str) -> None:
        """Record how the incident's run ended (remediator.failures)."""
        with self._tx() as db:
            db.execute("UPDATE incidents SET failure_class=?, failure_cause=?, failure_line=?"
                       " WHERE id=?", (cls, cause, line, incident_id))

    def failure_relaunches(self, job: str, cls: str, since: float, exclude: int) -> int:
        """Earlier incidents since ``since`` whose run died of ``cls`` and that trainguard
        relaunched: the retries a resources/resume failure has had."""
        rows = self._read("SELECT COUNT(*) AS n FROM incidents WHERE job=? AND "
                          "failure_class=? AND created >= ? AND id != ? AND outcome IN "
                          "('resumed','restarted')", (job, cls, since, exclude))
        return int(rows[0]["n"])

    def incidents(self, limit: int = 100, job: str | None = None) -> list[Incident]:
        if job is None:
            rows = self._read("SELECT * FROM incidents ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._read("SELECT * FROM incidents WHERE job=? ORDER BY id DESC LIMIT ?",
                              (job, limit))
        return [_incident(r) for r in rows]

    def unfinished(self) -> list[Incident]:
        """Incidents a previous remediator left queued, waiting or mid-action."""
        rows = self._read("SELECT * FROM incidents WHERE state IN ('queued','waiting','acting') "
                          "ORDER BY id")
        return [_incident(r) for r in rows]

    # ------------------------------------------------------------------ actions

    def record(self, job: str, incident_id: int | None, action: str, outcome: str,
               detail: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO actions (incident_id, job, ts, action, outcome, detail) "
                       "VALUES (?,?,?,?,?,?)",
                       (incident_id, job, time.time(), action, outcome, detail))

    def actions(self, incident_id: int | None = None, job: str | None = None,
                limit: int = 1000) -> list[Action]:
        where: list[str] = []
        args: list[Any] = []
        if incident_id is not None:
            where.append("incident_id=?")
            args.append(incident_id)
        if job is not None:
            where.append("job=?")
            args.append(job)
        sql = "SELECT * FROM actions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._read(sql + " ORDER BY id LIMIT ?", (*args, limit))
        return [Action(r["id"], r["incident_id"], r["job"], r["ts"], r["action"], r["outcome"],
                       r["detail"]) for r in rows]

    def action_counts(self) -> dict[tuple[str, str, str], int]:
        rows = self._read("SELECT job, action, outcome, COUNT(*) AS n FROM actions "
                          "GROUP BY job, action, outcome")
        return {(r["job"], r["action"], r["outcome"]): int(r["n"]) for r in rows}

    def launches_since(self, job: str, since: float) -> list[float]:
        """Times of restarts (resume or from scratch) that count against the budget."""
        rows = self._read("SELECT ts FROM actions WHERE job=? AND action IN "
                          "('resume','restart') AND outcome != 'dry_run' AND ts >= ? ORDER BY ts",
                          (job, since))
        return [float(r["ts"]) for r in rows]

    # ------------------------------------------------------------------ jobs

    def job_state(self, job: str) -> JobState:
        rows = self._read("SELECT * FROM jobs WHERE job=?", (job,))
        if not rows:
            return JobState(job, False, None, None, None, None, 0.0)
        r = rows[0]
        return JobState(job, bool(r["gave_up"]), r["gave_up_reason"], r["last_remediation"],
                        r["last_process_start"], r["last_pid"], float(r["budget_since"]),
                        bool(r["paused"]), r["paused_reason"], r["paused_at"],
                        r["run_env_source"], r["run_env_at"])

    def run_env(self, job: str) -> dict[str, str] | None:
        """The job's last known run environment (see remediator.runenv), or None."""
        rows = self._read("SELECT run_env FROM jobs WHERE job=?", (job,))
        if not rows or not rows[0]["run_env"]:
            return None
        env = json.loads(rows[0]["run_env"])
        return {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else None

    def set_run_env(self, job: str, env: Mapping[str, str], source: str) -> None:
        self.update_job(job, run_env=json.dumps(dict(env), sort_keys=True),
                        run_env_source=source, run_env_at=time.time())

    def ledger(self, job: str) -> ResumeLedger:
        """trainguard's own resumes of the job (trainguard.ledger), oldest first."""
        rows = self._read("SELECT ledger FROM jobs WHERE job=?", (job,))
        if not rows or not rows[0]["ledger"]:
            return ResumeLedger()
        try:
            return ResumeLedger.from_json(json.loads(rows[0]["ledger"]))
        except ValueError:
            return ResumeLedger()  # a damaged ledger only loses precision, never safety

    def append_resume(self, job: str, resume: Resume) -> None:
        """Record one launch in the job's ledger (one transaction: read, append, write)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO jobs (job) VALUES (?)", (job,))
            row = db.execute("SELECT ledger FROM jobs WHERE job=?", (job,)).fetchone()
            try:
                ledger = ResumeLedger.from_json(json.loads(row["ledger"])) if row["ledger"] \
                    else ResumeLedger()
            except ValueError:
                ledger = ResumeLedger()
            db.execute("UPDATE jobs SET ledger=? WHERE job=?",
                       (json.dumps(ledger.with_resume(resume).to_json()), job))

    def set_paused(self, job: str, paused: bool, reason: str | None = None) -> None:
        """Pause (no alert acts on the job) or unpause it."""
        self.update_job(job, paused=1 if paused else 0,
                        paused_reason=reason if paused else None,
                        paused_at=time.time() if paused else None)

    def latest_outcome(self, job: str) -> tuple[str, str | None] | None:
        """(state, reason) of the job's most recent incident that was decided, or None."""
        rows = self._read("SELECT state, reason FROM incidents WHERE job=? AND state NOT IN "
                          "('queued','waiting','acting','ignored') ORDER BY id DESC LIMIT 1",
                          (job,))
        return (rows[0]["state"], rows[0]["reason"]) if rows else None

    def latest_decided(self, job: str) -> Incident | None:
        """The job's most recent incident that was decided (as :meth:`latest_outcome`)."""
        rows = self._read("SELECT * FROM incidents WHERE job=? AND state NOT IN "
                          "('queued','waiting','acting','ignored') ORDER BY id DESC LIMIT 1",
                          (job,))
        return _incident(rows[0]) if rows else None

    def update_job(self, job: str, **fields: Any) -> None:
        allowed = {"gave_up", "gave_up_reason", "last_remediation", "last_process_start",
                   "last_pid", "budget_since", *_JOB_COLUMNS_V2}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown job fields: {sorted(bad)}")
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO jobs (job) VALUES (?)", (job,))
            for key, value in fields.items():
                db.execute(f"UPDATE jobs SET {key}=? WHERE job=?", (value, job))  # noqa: S608

    def reset_job(self, job: str) -> None:
        """Re-arm a job that gave up: clear the flag and start a fresh budget window."""
        self.update_job(job, gave_up=0, gave_up_reason=None, budget_since=time.time())


def summarize(incident: Incident, actions: list[Action]) -> Mapping[str, Any]:
    """An incident with its actions, for the JSON API."""
    out = incident.to_json()
    out["actions"] = [a.to_json() for a in actions]
    return out


def _add_host(db: sqlite3.Connection) -> None:
    """Schema 2/3 -> 4: the incidents table gets ``host`` in its identity.  SQLite cannot
    change a UNIQUE constraint in place, so the table is rebuilt (same ids, host '';
    a version 3 file's failure columns are copied too)."""
    have = {r["name"] for r in db.execute("PRAGMA table_info(incidents)")}
    if "host" in have:
        return
    columns = _INCIDENT_COLUMNS_V2 + "".join(
        f", {c}" for c in _INCIDENT_COLUMNS_V3 if c in have)
    db.execute("ALTER TABLE incidents RENAME TO incidents_v2")
    create = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS incidents"):]
    db.execute(create[:create.index(";")])
    db.execute(f"INSERT INTO incidents ({columns}, host) "  # noqa: S608
               f"SELECT {columns}, '' FROM incidents_v2")
    db.execute("DROP TABLE incidents_v2")
    db.execute("CREATE INDEX IF NOT EXISTS incidents_job ON incidents (job, id)")


def _private(path: Path) -> None:
    """Make ``path`` exist with mode 0600 (owner only), tightening a looser one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)

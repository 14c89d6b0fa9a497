"""Slurm, as the remediator sees it: which Slurm job runs a trainguard job, in what state,
how often Slurm restarted it, and the resume record the restarted job reads.

Why Slurm acts and trainguard does not: under Slurm a run's processes sit under
``slurmstepd`` -> Slurm's stored copy of the batch script, and a process started outside
the allocation is not part of the job (the job ends FAILED and its resources are freed).
Lightning's SLURM connector, submitit and NVIDIA's resiliency extension all requeue the
job and let it find its own checkpoint when it starts again; so does trainguard
(:mod:`remediator.slurm_execute`).  The remediator chooses (and repairs) the checkpoint
as for any job, writes its choice to the job's **resume record**
(``<output_dir>/trainguard-resume.json``, beside the checkpoints, so it is wherever the
job runs next), and the batch script reads it back with ``trainguard resume-args``.

Which job: the training process's own ``SLURM_JOB_ID`` (``/proc/PID/environ``), else
``scontrol pidinfo PID``; only when no process of the job lives, this user's jobs named
``launch.slurm.job_name`` (exactly one, or the remediator refuses).  Restart counting is
Slurm's own (``Restarts`` in ``scontrol show job``, ``SLURM_RESTART_COUNT`` in the job):
the record names the job id, its cluster and the restart it is for, because job ids
start again at 1 with a fresh ``StateSaveLocation``, so an id alone names nothing.

Nothing here takes anything from an alert: the job id comes from the process or from the
configured name, and every command is a fixed argv (no shell).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.config import JobConfig
from trainguard.ledger import ResumeLedger
from trainguard.process import JobProcess, environment_of

log = logging.getLogger(__name__)

RECORD_NAME = "trainguard-resume.json"
RECORD_VERSION = 1
TIMEOUT = 30.0

# Slurm job states (squeue(1) "JOB STATE CODES") by what the remediator does about them.
PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                     "SPECIAL_EXIT", "RESIZING"})
SETTLING = frozenset({"COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"})
RESTARTABLE = frozenset({"RUNNING", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                         "BOOT_FAIL", "DEADLINE", "PREEMPTED"})
STOPPED_ON_PURPOSE = frozenset({"CANCELLED", "REVOKED"})
# States in which no process of the job runs any more.
FINISHED = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                      "BOOT_FAIL", "DEADLINE", "PREEMPTED", *STOPPED_ON_PURPOSE})


class SlurmError(Exception):
    """A Slurm command failed; the message has its own words."""


@dataclass(frozen=True)
class SlurmJob:
    """The fields of ``scontrol show job`` the remediator uses."""

    job_id: str
    name: str
    state: str
    reason: str
    requeue: bool        # Requeue=1: `scontrol requeue` is allowed
    batch: bool          # BatchFlag=1: a batch job (only those can be requeued)
    restarts: int        # Slurm's own restart count
    held: bool           # pending because of a hold (Priority=0 / Reason=...held...)
    batch_host: str = "" # the node its batch script runs (or last ran) on


@dataclass(frozen=True)
class SlurmFacts:
    """What the decision needs to know about the Slurm job (read now, for decide)."""

    job_id: str | None
    source: str                  # how the id was found, for the log
    job: SlurmJob | None
    cluster: str | None          # SLURM_CLUSTER_NAME of the run, when seen
    reads_resume_args: bool      # the batch script calls `trainguard resume-args`
    problem: str | None = None   # why the job cannot be told or read
    # Whether the job is this host's to restart: found through a process here, or its
    # batch host (where it runs or last ran) is this host.  A job found by name that
    # runs on another node is that node's remediator's (its alerts carry that host).
    here: bool = True


@dataclass(frozen=True)
class SlurmAction:
    """How decide chose to restart a Slurm job (carried by Prepared.slurm)."""

    job_id: str
    method: str                  # "requeue" | "resubmit"
    restarts: int                # Slurm's count before this restart
    state: str                   # the job's state when decided
    cluster: str | None
    why: str                     # why this method, for the log
    source: str = ""             # how the job was found (SLURM_JOB_ID of pid N, ...)

    def describe(self) -> str:
        found = f", found by {self.source}" if self.source else ""
        if self.method == "requeue":
            return (f"by requeueing Slurm job {self.job_id} (restart count {self.restarts} -> "
                    f"{self.restarts + 1}{found})")
        return (f"by cancelling Slurm job {self.job_id} and submitting the resumed copy of "
                f"its batch script ({self.why}{found})")


# --------------------------------------------------------------------------- commands


def run(argv: Sequence[str], timeout: float = TIMEOUT) -> str:
    """Run a Slurm command (fixed argv, no shell); its stdout, or SlurmError."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} is not installed here (Slurm's client commands)") \
            from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(argv)} did not answer within {timeout:g}s") from None
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise SlurmError(f"{' '.join(argv)} failed ({proc.returncode}): "
                         f"{said[-1] if said else 'no message'}")
    return proc.stdout


_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_show(text: str) -> dict[str, str]:
    """``scontrol -o show job`` (one line of ``Key=value``; values may hold spaces and
    ``=``) as a mapping: a value runs to the next `` Key=``."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    marks = list(_FIELD.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(line)
        out.setdefault(m.group(1), line[m.end():end].strip())
    return out


def job_from(fields: Mapping[str, str]) -> SlurmJob:
    try:
        restarts = int(fields.get("Restarts", "0"))
    except ValueError:
        restarts = 0
    reason = fields.get("Reason", "")
    state = fields.get("JobState", "UNKNOWN").split()[0]
    return SlurmJob(job_id=fields.get("JobId", ""), name=fields.get("JobName", ""),
                    state=state, reason=reason, requeue=fields.get("Requeue") == "1",
                    batch=fields.get("BatchFlag") == "1", restarts=restarts,
                    held="held" in reason.lower() or fields.get("Priority") == "0",
                    batch_host=fields.get("BatchHost", ""))


def show_job(job_id: str) -> SlurmJob | None:
    """The job as slurmctld knows it now; None when it no longer does (purged)."""
    try:
        text = run(["scontrol", "-o", "show", "job", job_id])
    except SlurmError as exc:
        if "Invalid job id" in str(exc):
            return None
        raise
    fields = parse_show(text)
    return job_from(fields) if fields.get("JobId") == job_id else None


def pidinfo(pid: int) -> str | None:
    """``scontrol pidinfo PID``: the job a process belongs to on this node, or None."""
    try:
        m = re.search(r"JobId=(\d+)", run(["scontrol", "pidinfo", str(pid)]))
    except SlurmError:
        return None
    return m.group(1) if m else None


def jobs_named(name: str) -> list[str]:
    """This user's jobs slurmctld still knows by this name (finished ones too)."""
    out = run(["squeue", "--noheader", "--me", "--states=all", f"--name={name}",
               "--format=%i"])
    return [w for w in out.split() if w]


# --------------------------------------------------------------------------- facts


def reads_resume_args(job: JobConfig) -> bool:
    """Whether the batch script asks ``trainguard resume-args`` for its resume argument
    (if not, a requeued job would start over: the remediator resubmits a copy instead)."""
    script = job.launch.script if job.launch is not None else None
    try:
        return script is not None and "resume-args" in script.read_text(errors="replace")
    except OSError:
        return False


def gather(job: JobConfig, processes: Sequence[JobProcess], host: str) -> SlurmFacts:
    """Find and read the Slurm job of ``job`` (see the module doc for the order).  ``host``
    is this remediator's host, which must be the Slurm node name of this machine."""
    assert job.launch is not None and job.launch.slurm is not None
    reads = reads_resume_args(job)
    roots = sorted((p for p in processes if p.root), key=lambda p: p.create_time) \
        or list(processes)
    job_id: str | None = None
    source = ""
    cluster: str | None = None
    for p in roots:
        env = environment_of(p.pid) or {}
        cluster = cluster or env.get("SLURM_CLUSTER_NAME")
        if env.get("SLURM_JOB_ID", "").isdigit():
            job_id, source = env["SLURM_JOB_ID"], f"SLURM_JOB_ID of pid {p.pid}"
            break
    if job_id is None:
        for p in roots:
            found = pidinfo(p.pid)
            if found is not None:
                job_id, source = found, f"scontrol pidinfo {p.pid}"
                break
    if job_id is None and roots:
        return SlurmFacts(None, "", None, cluster, reads,
                          problem=f"the run's processes ({[p.pid for p in roots]}) belong to "
                                  "no Slurm job (no SLURM_JOB_ID, scontrol pidinfo knows "
                                  "none): not started by Slurm, so not restarted through it")
    name = job.launch.slurm.job_name
    try:
        if job_id is None:
            ids = jobs_named(name)
            if len(ids) != 1:
                what = "none" if not ids else f"{len(ids)} ({', '.join(ids)})"
                return SlurmFacts(None, "", None, cluster, reads,
                                  problem=f"no process of the job lives, and this user's Slurm "
                                          f"jobs named {name!r} are {what}; cannot tell which "
                                          "one runs it")
            job_id, source = ids[0], f"squeue --name={name}"
        info = show_job(job_id)
    except SlurmError as exc:
        return SlurmFacts(job_id, source, None, cluster, reads, problem=str(exc))
    if info is None:
        return SlurmFacts(job_id, source, None, cluster, reads,
                          problem=f"Slurm no longer knows job {job_id} (purged after "
                                  "MinJobAge)")
    here = bool(roots) or info.batch_host in ("", host)
    return SlurmFacts(job_id, source, info, cluster, reads, here=here)


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class ResumeRecord:
    """The remediator's choice for one restart of one Slurm job.

    It applies only to the run it was written for: same Slurm job id, same cluster (when
    known) and ``SLURM_RESTART_COUNT == restart_count``.  Anything else (a later
    preemption, a resubmission, a new cluster whose ids restarted at 1) chooses afresh.
    """

    job: str                       # trainguard's job name
    host: str
    checkpoint: str | None         # absolute; None: start from scratch
    step: int | None
    args: tuple[str, ...]          # what resume-args prints (resume flag, path, profile's)
    slurm_job_id: str | None       # None: no restart of a known job (a resubmission)
    cluster: str | None
    restart_count: int             # the SLURM_RESTART_COUNT of the run it is for
    written_at: float
    ledger: ResumeLedger           # trainguard's resumes of the job, for the order

    def applies_to(self, env: Mapping[str, str]) -> bool:
        job_id = env.get("SLURM_JOB_ID")
        count = env.get("SLURM_RESTART_COUNT", "0")
        cluster = env.get("SLURM_CLUSTER_NAME")
        return (self.slurm_job_id is not None and job_id == self.slurm_job_id
                and count.isdigit() and int(count) == self.restart_count
                and (self.cluster is None or cluster is None or cluster == self.cluster))

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "job": self.job, "host": self.host,
                "checkpoint": self.checkpoint, "step": self.step, "args": list(self.args),
                "slurm_job_id": self.slurm_job_id, "cluster": self.cluster,
                "restart_count": self.restart_count, "written_at": self.written_at,
                "ledger": self.ledger.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> ResumeRecord:
        """ValueError for anything that is not a record this version wrote."""
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            raise ValueError("not a trainguard resume record (version 1)")
        args = data.get("args")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError("args: expected a list of strings")
        ckpt = data.get("checkpoint")
        if ckpt is not None and (not isinstance(ckpt, str) or not os.path.isabs(ckpt)):
            raise ValueError("checkpoint: expected an absolute path or null")
        count = data.get("restart_count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError("restart_count: expected an integer >= 0")
        step = data.get("step")
        job_id = data.get("slurm_job_id")
        cluster = data.get("cluster")
        when = data.get("written_at")
        return cls(job=str(data.get("job", "")), host=str(data.get("host", "")),
                   checkpoint=ckpt, step=step if isinstance(step, int) else None,
                   args=tuple(args), slurm_job_id=job_id if isinstance(job_id, str) else None,
                   cluster=cluster if isinstance(cluster, str) else None, restart_count=count,
                   written_at=float(when) if isinstance(when, int | float) else 0.0,
                   ledger=ResumeLedger.from_json(data.get("ledger") or []))


def record_path(job: JobConfig) -> Path:
    return job.output_dir / RECORD_NAME


def read_record(job: JobConfig) -> ResumeRecord | None:
    """The job's resume record; None when there is none.  ValueError for a damaged one."""
    try:
        text = record_path(job).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{record_path(job)}: cannot read: {exc}") from None
    try:
        return ResumeRecord.from_json(json.loads(text))
    except ValueError as exc:
        raise ValueError(f"{record_path(job)}: {exc}") from None

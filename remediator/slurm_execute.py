"""The executor for a job Slurm owns: stop, hand over the checkpoint and restart through
Slurm, never by starting a process here (remediator.slurm says why).

The pipeline's five steps, the Slurm way:

* **kill**: ``scontrol requeuehold ID`` (the job goes back to PENDING, held, and Slurm
  stops its processes; its restart count goes up by one), or ``scancel ID`` when it is
  to be resubmitted.  The remediator waits for the job's processes (the job rule) to go
  and stops only what is left of *them* itself;
* **repair**, **keep_aside**: as for any job (RealExecutor), once nothing writes;
* **write_copy**: the resume record, where the job reads it (remediator.slurm), and for
  a resubmission the resumed copy of the batch script;
* **launch**: ``scontrol release ID`` (held by the kill), ``scontrol requeue ID`` (a job
  whose run had already ended: nothing was held), or ``sbatch`` of the resumed copy from
  the workdir, in the run's own environment minus the old job's ``SLURM_*`` variables;
* **verify**: Slurm runs the job again (``Restarts`` as expected) and the job rule sees
  its training, started by Slurm (``SLURM_JOB_ID`` and ``SLURM_RESTART_COUNT`` of the new
  run in its environment).  A job still pending when ``launch.slurm.start_timeout_seconds``
  runs out is reported as requeued, not failed: a busy cluster is not a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from trainguard.checkpoint import CheckpointInfo, compat
from trainguard.config import JobConfig, RemediatorConfig
from trainguard.ledger import ResumeLedger
from trainguard.process import JobProcess, alive, environment_of

from . import slurm as sl
from .actions import kill as kill_mod
from .actions import launch as launch_mod
from .actions.script import write_atomic
from .execute import RealExecutor, Scan
from .prepare import Prepared

POLL = 0.5


class SlurmExecutor:
    """Carries out one :class:`~remediator.slurm.SlurmAction` (one instance per action)."""

    outcome_suffix = ""

    def __init__(self, rc: RemediatorConfig, job: JobConfig, action: sl.SlurmAction,
                 host: str, ledger: ResumeLedger | None = None) -> None:
        assert job.launch is not None and job.launch.slurm is not None
        self.rc = rc
        self.job = job
        self.action = action
        self.host = host
        self.ledger = ledger or ResumeLedger()   # goes into the record, for resume-args
        self.real = RealExecutor(rc)
        self.held = False           # requeued held by kill: launch releases it
        self.cancelled = False      # cancelled by kill (resubmission)
        self.submitted: str | None = None

    @property
    def expected_restarts(self) -> int:
        return self.action.restarts + 1 if self.action.method == "requeue" else 0

    def kill(self, job: JobConfig, processes: list[JobProcess], scan: Scan
             ) -> kill_mod.KillResult:
        a = self.action
        try:
            if a.method == "requeue":
                sl.run(["scontrol", "requeuehold", a.job_id])
                self.held = True
                what = (f"requeued Slurm job {a.job_id} held (restart count {a.restarts} -> "
                        f"{a.restarts + 1}); Slurm stops its processes")
            else:
                sl.run(["scancel", a.job_id])
                self.cancelled = True
                what = f"cancelled Slurm job {a.job_id} ({a.why})"
        except sl.SlurmError as exc:
            return kill_mod.KillResult(ok=False, detail=str(exc))
        deadline = time.monotonic() + self.rc.kill_grace_seconds
        left = alive(scan())
        while left and time.monotonic() < deadline:
            time.sleep(POLL)
            left = alive(scan())
        if not left:
            return kill_mod.KillResult(ok=True, detail=f"{what}; its processes are gone")
        res = kill_mod.kill_job(job, self.rc.kill_grace_seconds,
                                self.rc.gpu_release_timeout_seconds, processes=left, scan=scan)
        res.detail = (f"{what}; {len(left)} process(es) outlived Slurm's stop by "
                      f"{self.rc.kill_grace_seconds:g}s: {res.detail}")
        return res

    def held_hint(self) -> str:
        """What a person must know when the restart stops half-way: the job is held."""
        if not self.held:
            return ""
        return (f"; Slurm job {self.action.job_id} stays requeued and held: `scontrol "
                f"release {self.action.job_id}` once the cause is fixed")

    def repair(self, info: CheckpointInfo, env: compat.Environment | None
               ) -> tuple[bool, str]:
        return self.real.repair(info, env)

    def keep_aside(self, folder: Path, names: list[str], stamp: str) -> dict[str, str]:
        return self.real.keep_aside(folder, names, stamp)

    def write_copy(self, prepared: Prepared) -> str:
        """The resume record (always), and the resumed copy for a resubmission."""
        a = self.action
        c = prepared.checkpoint
        args = tuple(prepared.flags.words()) if prepared.flags is not None else ()
        record = sl.ResumeRecord(
            job=self.job.name, host=self.host,
            checkpoint=str(c.info.path) if c is not None else None,
            step=c.info.step if c is not None else None, args=args,
            slurm_job_id=a.job_id if a.method == "requeue" else None, cluster=a.cluster,
            restart_count=self.expected_restarts, written_at=time.time(),
            ledger=self.ledger)
        path = sl.record_path(self.job)
        try:
            write_atomic(path, (json.dumps(record.to_json(), indent=1) + "\n").encode(),
                         0o644)
        except OSError as exc:
            raise OSError(f"{path}: cannot write the resume record: {exc}{self.held_hint()}"
                          ) from None
        said = (f"wrote {path}: {' '.join(args) or 'no checkpoint (from scratch)'}"
                + (f", for restart {record.restart_count} of Slurm job {a.job_id}"
                   if a.method == "requeue" else ""))
        if a.method == "resubmit" and prepared.copy is not None:
            said += "; " + self.real.write_copy(prepared)
        return said

    def launch(self, job: JobConfig, prepared: Prepared) -> launch_mod.Launched:
        a = self.action
        started = time.time()
        if a.method == "requeue":
            argv = ["scontrol", "release" if self.held else "requeue", a.job_id]
            try:
                sl.run(argv)
            except sl.SlurmError as exc:
                raise launch_mod.LaunchError(f"{exc}{self.held_hint()}") from None
        else:
            if not self.cancelled and a.state not in sl.FINISHED:
                # Its training was already gone (nothing to kill) but the job still runs:
                # never submit a second one beside it.
                try:
                    sl.run(["scancel", a.job_id])
                except sl.SlurmError as exc:
                    raise launch_mod.LaunchError(str(exc)) from None
                self.cancelled = True
            script = prepared.copy if prepared.copy is not None else job.launch.script \
                if job.launch is not None else None
            if script is None:
                raise launch_mod.LaunchError(f"{job.name}: no batch script to submit")
            argv = ["sbatch", "--parsable", str(script)]
            env = {k: v for k, v in prepared.env.items()
                   if not k.startswith(("SLURM_", "SBATCH_")) or k == "SLURM_CONF"}
            if "SLURM_CONF" in os.environ:
                env.setdefault("SLURM_CONF", os.environ["SLURM_CONF"])
            out = _sbatch(argv, prepared.workdir, env)
            self.submitted = out
        return launch_mod.Launched(0, 0.0, started, tuple(argv), prepared.log_file,
                                   prepared.workdir)

    def verify(self, launched: launch_mod.Launched, scan: Scan) -> tuple[bool, str]:
        job_id = self.submitted if self.action.method == "resubmit" else self.action.job_id
        assert job_id is not None and self.job.launch is not None
        assert self.job.launch.slurm is not None
        want = self.expected_restarts
        timeout = self.job.launch.slurm.start_timeout_seconds
        deadline = time.monotonic() + timeout
        last: sl.SlurmJob | None = None
        while True:
            try:
                last = sl.show_job(job_id)
            except sl.SlurmError as exc:
                last = None
                problem = str(exc)
            else:
                problem = "" if last is not None else f"Slurm no longer knows job {job_id}"
            if last is not None and last.state == "RUNNING" and last.restarts == want:
                root = self._new_root(job_id, want, launched.started, scan)
                if root is not None:
                    return True, (f"Slurm job {job_id} runs again (restart count {want}); "
                                  f"pid {root} of it matches the job")
            if last is not None and last.state in sl.STOPPED_ON_PURPOSE | {"FAILED",
                                                                           "NODE_FAIL",
                                                                           "BOOT_FAIL"}:
                return False, f"Slurm job {job_id} is {last.state} ({last.reason})"
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        if last is not None and last.state in sl.PENDING:
            return True, (f"Slurm job {job_id} was requeued (restart count {last.restarts}) "
                          f"and is still {last.state} after {timeout:g}s ({last.reason}): "
                          "Slurm starts it when it can")
        if last is not None and last.state == "COMPLETED" and last.restarts == want:
            return True, f"Slurm job {job_id} ran again (restart count {want}) and completed"
        return False, (problem or f"Slurm job {job_id} is {last.state if last else '?'} "
                                  f"{timeout:g}s after the restart")

    def _new_root(self, job_id: str, restarts: int, started: float, scan: Scan
                  ) -> int | None:
        """A training root of the job that Slurm started for this very run."""
        for p in alive(scan()):
            if not p.root or p.create_time < started - 1.0:
                continue
            env = environment_of(p.pid) or {}
            if env.get("SLURM_JOB_ID") == job_id and \
                    env.get("SLURM_RESTART_COUNT", "0") == str(restarts):
                return p.pid
        return None


def _sbatch(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Submit; the new job's id (``--parsable`` prints ``ID`` or ``ID;cluster``)."""
    try:
        proc = subprocess.run(argv, cwd=str(cwd), env=env, capture_output=True, text=True,
                              timeout=sl.TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise launch_mod.LaunchError(f"sbatch failed: {exc}") from None
    m = re.match(r"^(\d+)", proc.stdout.strip())
    if proc.returncode != 0 or m is None:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise launch_mod.LaunchError(f"sbatch failed ({proc.returncode}): "
                                     f"{said[-1] if said else 'no output'}")
    return m.group(1)

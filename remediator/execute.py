"""The side effects of a remediation, behind one small interface with two implementations.

:class:`RealExecutor` signals, repairs, writes and starts; :class:`DryRunExecutor` says
what it would do and touches nothing.  The pipeline calls the same five steps either way,
so a dry run walks exactly the path a real run would (the old pipeline had an ``if dry``
in five places).  A scheduler that owns the job (Slurm) is another executor.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from trainguard.checkpoint import CheckpointInfo, compat
from trainguard.checkpoint.names import kept_name
from trainguard.config import JobConfig, RemediatorConfig
from trainguard.ledger import ResumeLedger
from trainguard.process import JobProcess

from . import repair as repair_mod
from .actions import kill as kill_mod
from .actions import launch as launch_mod
from .actions.script import ScriptError, write_atomic
from .prepare import Prepared

log = logging.getLogger(__name__)

Scan = Callable[[], list[JobProcess]]


class Executor(Protocol):
    """The five things a remediation does to the world."""

    outcome_suffix: str   # "" for real actions, "dry_run" marks a dry run's

    def kill(self, job: JobConfig, processes: list[JobProcess], scan: Scan
             ) -> kill_mod.KillResult: ...

    def repair(self, info: CheckpointInfo, env: compat.Environment | None
               ) -> tuple[bool, str]: ...

    def write_copy(self, prepared: Prepared) -> str: ...

    def keep_aside(self, folder: Path, names: list[str], stamp: str) -> dict[str, str]: ...

    def launch(self, job: JobConfig, prepared: Prepared) -> launch_mod.Launched: ...

    def verify(self, launched: launch_mod.Launched, scan: Scan) -> tuple[bool, str]: ...


class RealExecutor:
    outcome_suffix = ""

    def __init__(self, rc: RemediatorConfig) -> None:
        self.rc = rc

    def kill(self, job: JobConfig, processes: list[JobProcess], scan: Scan
             ) -> kill_mod.KillResult:
        return kill_mod.kill_job(job, self.rc.kill_grace_seconds,
                                 self.rc.gpu_release_timeout_seconds, processes=processes,
                                 scan=scan)

    def repair(self, info: CheckpointInfo, env: compat.Environment | None
               ) -> tuple[bool, str]:
        """Repair one checkpoint for ``env`` (backup first, atomic); (ok, what happened)."""
        try:
            plan = repair_mod.plan_repair(info.path, env)
            result = repair_mod.apply_repair(plan)
        except ImportError as exc:
            return False, f"repair needs torch (pip install 'trainguard[torch]'): {exc}"
        except Exception as exc:  # a repair that fails must leave the run resumable
            return False, f"{type(exc).__name__}: {exc}"
        return True, str(result)

    def write_copy(self, prepared: Prepared) -> str:
        if prepared.copy is None or prepared.copy_bytes is None:
            return "no copy needed"
        try:
            write_atomic(prepared.copy, prepared.copy_bytes, prepared.copy_mode)
        except OSError as exc:
            raise ScriptError(f"{prepared.copy}: cannot write the resumed copy: {exc}") \
                from None
        return f"wrote {prepared.copy}"

    def keep_aside(self, folder: Path, names: list[str], stamp: str) -> dict[str, str]:
        """Rename each of ``names`` to ``kept_name(name, stamp)``: never a delete, never over
        an existing name.  Returns old name -> new name for what was moved."""
        moved: dict[str, str] = {}
        for name in names:
            n = 0
            while True:
                new = kept_name(name, stamp if n == 0 else f"{stamp}-{n}")
                if not os.path.lexists(folder / new):
                    break
                n += 1
            os.rename(folder / name, folder / new)
            moved[name] = new
        if moved:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return moved

    def launch(self, job: JobConfig, prepared: Prepared) -> launch_mod.Launched:
        state_dir = self.rc.state_path.parent if self.rc.state_path is not None else None
        return launch_mod.start(job, prepared.argv, prepared.env, via=self.rc.launch_via,
                                state_dir=state_dir)

    def verify(self, launched: launch_mod.Launched, scan: Scan) -> tuple[bool, str]:
        return launch_mod.verify(launched, scan, self.rc.verify_alive_seconds)


class DryRunExecutor:
    """Decides and records everything, touches nothing (``remediator.dry_run``)."""

    outcome_suffix = "dry_run"

    def kill(self, job: JobConfig, processes: list[JobProcess], scan: Scan
             ) -> kill_mod.KillResult:
        pids = [p.pid for p in processes]
        return kill_mod.KillResult(ok=True, detail=f"would stop pids {pids or 'none'}")

    def repair(self, info: CheckpointInfo, env: compat.Environment | None
               ) -> tuple[bool, str]:
        return True, f"would repair {info.name}"

    def write_copy(self, prepared: Prepared) -> str:
        return f"would write {prepared.copy}" if prepared.copy else "no copy needed"

    def keep_aside(self, folder: Path, names: list[str], stamp: str) -> dict[str, str]:
        return {}

    def launch(self, job: JobConfig, prepared: Prepared) -> launch_mod.Launched:
        return launch_mod.Launched(0, 0.0, time.time(), prepared.argv, prepared.log_file,
                                   prepared.workdir)

    def verify(self, launched: launch_mod.Launched, scan: Scan) -> tuple[bool, str]:
        return True, "dry run: nothing was started"


def executor_for(rc: RemediatorConfig) -> Executor:
    return DryRunExecutor() if rc.dry_run else RealExecutor(rc)


def slurm_executor_for(rc: RemediatorConfig, job: JobConfig, prepared: Prepared, host: str,
                       ledger: ResumeLedger | None = None) -> Executor:
    """The executor for a job Slurm owns: the dry run's, or Slurm's (never the local
    launcher: a process started outside the allocation is not part of the job)."""
    if rc.dry_run:
        return DryRunExecutor()
    if prepared.slurm is None:
        raise ValueError(f"{job.name}: Slurm owns this job but the plan carries no Slurm "
                         "action; refusing to start anything outside Slurm")
    from .slurm_execute import SlurmExecutor

    return SlurmExecutor(rc, job, prepared.slurm, host, ledger)


def leftovers(folder: Path) -> list[Path]:
    """trainguard's own temp files a killed repair or copy left in ``folder``."""
    try:
        return [p for p in folder.iterdir() if p.name.startswith(".") and (
            repair_mod.TMP_INFIX in p.name
            or (".trainguard-resume." in p.name and ".tmp-" in p.name))]
    except OSError:
        return []

"""Prove a resume possible before anything is signalled: read-only, no side effects.

The old pipeline killed first and found out afterwards that it could not resume: a
missing script, one trainguard cannot parse (``T=train.py; accelerate launch "$T"``), a
folder where the resumed copy cannot be written, a missing workdir.  The run was killed
and stayed dead.  Here everything the resume needs is established first:

* the job has a launch section and its workdir exists;
* the environment the run will get (:mod:`remediator.runenv`) and the versions of the
  python it runs (for the compatibility verdict);
* a checkpoint chosen: newest by true progress first; whole (valid or repairable); and
  loadable by *that* environment as it is, with an environment fix, or after a repair
  this host can do.  A checkpoint that needs a repair this host cannot do (no torch
  here) is never silently replaced by a restart from scratch: that is a refusal;
* the flags the resumed command gets (the trainer profile's), the resumed copy rendered
  in memory (so the script has a training command we can edit), its folder writable,
  the log writable;
* room for one more save: the output folder's filesystem has at least the chosen
  checkpoint's bytes free (trainguard.disk).  A resume into a disk that cannot hold the
  next save dies at that save and may leave a half-written checkpoint (seed 001), after
  the running (or dead) run was already stopped for it.

The result is a :class:`Prepared` (what the executor will do) or a :class:`Refusal`
(one sentence for a person).  After the kill, :func:`confirm` reads the checkpoint list
again (nothing of the run can be writing any more) and keeps or updates the choice.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trainguard import trainers
from trainguard.checkpoint import CheckpointInfo, compat, inspect_checkpoint, list_checkpoints
from trainguard.checkpoint.scanner import checkpoint_bytes
from trainguard.config import JobConfig
from trainguard.disk import available_bytes, human_bytes
from trainguard.ledger import ResumeLedger
from trainguard.script import ScriptError, read_script

from .actions.launch import LaunchError, log_path, script_argv
from .actions.script import FlagSet, render_resumed_copy, resume_argv
from .runenv import RunEnv, find_python
from .slurm import SlurmAction

log = logging.getLogger(__name__)


def repair_available() -> bool:
    """Repairs rewrite RNG files with torch: only where torch is installed (the extra)."""
    return importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class Refusal:
    """Why the resume cannot be prepared; nothing is signalled."""

    reason: str


@dataclass(frozen=True)
class Candidate:
    """The checkpoint to resume from and what it needs first."""

    info: CheckpointInfo
    repairs: tuple[str, ...] = ()                 # repairs to apply before the resume
    env_fixes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """A resume proven possible; the executor carries it out after the kill."""

    checkpoint: Candidate | None     # None: restart from scratch with the user's script
    flags: FlagSet | None            # what the resumed command carries (None: from scratch)
    argv: tuple[str, ...]            # what runs: bash <copy>, or the command
    copy: Path | None                # the resumed copy to write (script jobs)
    copy_bytes: bytes | None
    copy_mode: int
    env: Mapping[str, str]           # the run's environment + launch.env + fixes
    env_source: str
    python: compat.Environment | None
    workdir: Path
    log_file: Path
    skipped: tuple[Mapping[str, Any], ...] = ()   # checkpoints passed over, and why
    note: str = ""                   # what the trainer profile adds, and why
    edits: trainers.ResumeEdits | None = None   # the trainer profile's, for the ledger
                                                # and the outputs the run writes again
    # Slurm owns the job: how decide chose to restart it through Slurm (never locally).
    slurm: SlurmAction | None = None

    @property
    def action(self) -> str:
        return "resume" if self.checkpoint is not None else "restart"

    def describe(self) -> str:
        c = self.checkpoint
        what = (f"resume from {c.info.path} (step {c.info.step})" if c is not None
                else "restart from scratch with the unmodified script")
        if c is not None and c.repairs:
            what += f" after repairing it ({', '.join(c.repairs)})"
        if c is not None and c.env_fixes:
            what += f" with {dict(c.env_fixes)}"
        if self.slurm is not None:
            what += " " + self.slurm.describe()
        return what


@dataclass(frozen=True)
class _Base:
    """What every plan for a job shares, whichever checkpoint it takes."""

    workdir: Path
    log_file: Path
    python: compat.Environment | None
    env_source: str
    skipped: tuple[Mapping[str, Any], ...]

    def plan(self, checkpoint: Candidate | None, flags: FlagSet | None, argv: Sequence[str],
             env: Mapping[str, str], *, copy: Path | None = None,
             copy_bytes: bytes | None = None, copy_mode: int = 0,
             edits: trainers.ResumeEdits | None = None) -> Prepared:
        return Prepared(checkpoint=checkpoint, flags=flags, argv=tuple(argv), copy=copy,
                        copy_bytes=copy_bytes, copy_mode=copy_mode, env=env,
                        env_source=self.env_source, python=self.python,
                        workdir=self.workdir, log_file=self.log_file, skipped=self.skipped,
                        note=edits.note if edits is not None else "", edits=edits)


@dataclass
class _Choice:
    candidate: Candidate | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    cannot_repair: list[str] = field(default_factory=list)
    will_not_load: list[str] = field(default_factory=list)


def _python_env(job: JobConfig, words: Sequence[str] | None, env: Mapping[str, str]
                ) -> compat.Environment | None:
    """Versions of the python the run will use; None when it cannot be found."""
    assert job.launch is not None
    if not words:
        return None
    python = find_python(words, env, str(job.launch.workdir))
    if python is None:
        return None
    try:
        return compat.Environment.of_python(python)
    except ValueError as exc:
        log.warning("%s: cannot read the versions of %s: %s", job.name, python, exc)
        return None


def choose(infos: Sequence[CheckpointInfo], pyenv: compat.Environment | None,
           can_repair: bool) -> _Choice:
    """The newest checkpoint the run's environment will load, with what it needs first."""
    out = _Choice()
    for info in infos:
        if not info.usable:
            out.skipped.append({"path": str(info.path), "step": info.step,
                                "status": info.status.value, "problems": list(info.problems)})
            continue
        if pyenv is None:
            # The run's python is unknown: trust the checkpoint as it is (the run loaded
            # it with its own stack before), never rewrite it blind.
            out.candidate = Candidate(info)
            return out
        v = compat.verdict(info, pyenv)
        if v.loads or v.env_fixes or (v.repairs and can_repair):
            # A repair is applied only where it is needed for this environment and can
            # be done here; a checkpoint that loads as it is stays untouched otherwise.
            out.candidate = Candidate(info, repairs=v.repairs if can_repair else (),
                                      env_fixes=dict(v.env_fixes))
            return out
        problems = "; ".join(v.problems) or "will not load"
        if v.repairs:
            out.cannot_repair.append(f"{info.name} needs {', '.join(v.repairs)}")
            status = "cannot_repair_here"
        else:
            out.will_not_load.append(f"{info.name}: {problems}")
            status = "incompatible"
        out.skipped.append({"path": str(info.path), "step": info.step, "status": status,
                            "problems": [problems]})
    return out


# Flags a profile may drop that take no value (trainguard.trainers).
_SWITCHES = frozenset({trainers.SKIP})


def resume_edits(job: JobConfig, words: Sequence[str] | None, info: CheckpointInfo,
                 ledger: ResumeLedger | None) -> tuple[FlagSet, trainers.ResumeEdits | None]:
    """The flags the resumed command carries: the trainer profile's (sd-scripts is told
    its true starting point; trainers that resume correctly get the resume flag only)."""
    assert job.launch is not None
    if not words:
        return FlagSet.resume(job.launch.resume_flag, info.path), None
    edits = trainers.resume_edits(words, job.launch.resume_flag, info, ledger)
    return FlagSet(edits.set_flags, tuple((f, f not in _SWITCHES)
                                          for f in edits.remove_flags)), edits


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def prepare(job: JobConfig, run_env: RunEnv, *, restart_from_scratch: bool,
            writing_fresh_seconds: float, can_repair: bool | None = None,
            ledger: ResumeLedger | None = None) -> Prepared | Refusal:
    """Everything the resume needs, or why it cannot be done (see the module doc)."""
    launch = job.launch
    if launch is None:
        return Refusal("the job has no launch section: trainguard cannot restart it, so it "
                       "does not stop it either")
    if not launch.workdir.is_dir():
        return Refusal(f"the workdir {launch.workdir} is gone: the run could not be started "
                       "again from there")
    logfile, _configured = log_path(job)
    if not (_writable(logfile) if logfile.exists() else _writable(logfile.parent)):
        return Refusal(f"the log {logfile} cannot be written: the resumed run's output would "
                       "be lost")
    words: tuple[str, ...] | None = None
    script_error: str | None = None
    if launch.script is not None:
        try:
            words = read_script(launch.script).command
        except ScriptError as exc:
            script_error = str(exc)
    else:
        words = launch.command
    env = dict(run_env.env)
    env.update(launch.env)
    pyenv = _python_env(job, words, env)
    try:
        infos = list_checkpoints(job.output_dir, writing_fresh_seconds=writing_fresh_seconds,
                                 ledger=ledger)
    except OSError as exc:
        return Refusal(f"cannot list the checkpoints in {job.output_dir}: {exc}")
    can = repair_available() if can_repair is None else can_repair
    chosen = choose(infos, pyenv, can)
    base = _Base(launch.workdir, logfile, pyenv, run_env.source, tuple(chosen.skipped))
    if chosen.candidate is None:
        if chosen.cannot_repair:
            return Refusal("checkpoints exist that this host cannot repair for the run's "
                           f"environment ({'; '.join(chosen.cannot_repair)}): repair needs "
                           "torch here (pip install 'trainguard[torch]'); not restarting "
                           "from scratch over them")
        if chosen.will_not_load:
            return Refusal("the run's environment cannot load any of its checkpoints ("
                           f"{'; '.join(chosen.will_not_load)}); not restarting from scratch "
                           "over them")
        if not restart_from_scratch:
            return Refusal(f"no usable checkpoint in {job.output_dir} and "
                           "remediator.restart_from_scratch is off")
        try:
            argv = (script_argv(launch.script) if launch.script is not None
                    else list(launch.command or ()))
        except LaunchError as exc:
            return Refusal(str(exc))
        return base.plan(None, None, argv, env)
    cand = chosen.candidate
    env.update(cand.env_fixes)
    if script_error is not None:
        return Refusal(f"cannot add the resume flag: {script_error}")
    full = disk_too_full(job, cand.info)
    if full is not None:
        return full
    return _render(job, cand, words, ledger, env, base)


def disk_too_full(job: JobConfig, info: CheckpointInfo) -> Refusal | None:
    """A refusal when the output filesystem cannot hold one more save like ``info``."""
    need = checkpoint_bytes(info.path)
    try:
        free = available_bytes(job.output_dir)
    except OSError:
        return None  # cannot ask: the run's own save will tell
    if not need or free >= need:
        return None
    return Refusal(f"the disk of {job.output_dir} has {human_bytes(free)} free, less than "
                   f"one more save needs ({human_bytes(need)}, the size of {info.name}): the "
                   "resumed run would die at its next save and could leave a half-written "
                   "checkpoint; free space there (the next delivery of the alert looks "
                   "again)")


def _render(job: JobConfig, cand: Candidate, words: Sequence[str] | None,
            ledger: ResumeLedger | None, env: Mapping[str, str], base: _Base
            ) -> Prepared | Refusal:
    launch = job.launch
    assert launch is not None
    flags, edits = resume_edits(job, words, cand.info, ledger)
    if launch.command is not None:
        return base.plan(cand, flags, resume_argv(launch.command, flags), env, edits=edits)
    assert launch.script is not None
    try:
        target, data, mode = render_resumed_copy(launch.script, flags)
        argv = script_argv(target)
    except (ScriptError, LaunchError) as exc:
        return Refusal(f"cannot write a resumed copy: {exc}")
    if not _writable(target.parent):
        return Refusal(f"the resumed copy {target} cannot be written (folder not writable)")
    return base.plan(cand, flags, argv, env, copy=target, copy_bytes=data, copy_mode=mode,
                     edits=edits)


def confirm(job: JobConfig, prepared: Prepared, *, writing_fresh_seconds: float,
            can_repair: bool | None = None, exclude: set[str] | frozenset[str] = frozenset(),
            ledger: ResumeLedger | None = None) -> tuple[Prepared, str]:
    """After the kill: the checkpoint list again, the choice kept or updated.

    Nothing of the run can be writing any more, so a save that finished during the kill
    is now the newest; one that was cut by the kill is now invalid.  ``exclude``: paths
    not to choose again (a repair of them failed).  Returns the plan to carry out and one
    line saying what changed (empty when nothing did).
    """
    if prepared.checkpoint is None:
        return prepared, ""
    try:
        infos = list_checkpoints(job.output_dir, writing_fresh_seconds=writing_fresh_seconds,
                                 ledger=ledger)
    except OSError as exc:
        return prepared, f"could not list the checkpoints again ({exc}); keeping the choice"
    can = repair_available() if can_repair is None else can_repair
    chosen = choose([i for i in infos if str(i.path) not in exclude], prepared.python, can)
    cand = chosen.candidate
    old = prepared.checkpoint.info
    if cand is None or cand.info.path == old.path:
        if cand is None:
            try:
                still = inspect_checkpoint(old.path,
                                           writing_fresh_seconds=writing_fresh_seconds)
            except OSError:
                still = None
            if still is None or not still.usable:
                return prepared, (f"{old.name} is no longer usable and nothing else is; "
                                  "resuming from it anyway would fail")
        return prepared, ""
    env = dict(prepared.env)
    env.update(cand.env_fixes)
    base = _Base(prepared.workdir, prepared.log_file, prepared.python, prepared.env_source,
                 tuple(chosen.skipped))
    fresh = _render(job, cand, _words(job), ledger, env, base)
    if isinstance(fresh, Refusal):
        return prepared, f"{cand.info.name} is newer now but {fresh.reason}; keeping the choice"
    return fresh, (f"after the kill {cand.info.name} (step {cand.info.step}) is the newest "
                   f"usable checkpoint, not {old.name}")


def _words(job: JobConfig) -> tuple[str, ...] | None:
    launch = job.launch
    if launch is None:
        return None
    if launch.command is not None:
        return launch.command
    try:
        return read_script(launch.script).command if launch.script is not None else None
    except ScriptError:
        return None


def with_checkpoint(job: JobConfig, prepared: Prepared, info: CheckpointInfo,
                    ledger: ResumeLedger | None = None) -> Prepared | Refusal:
    """The same plan for a re-inspected checkpoint (after a repair, or moved aside): the
    profile's flags and the resumed copy are made again for it."""
    assert prepared.checkpoint is not None
    cand = replace(prepared.checkpoint, info=info, repairs=())  # repairs are done by now
    base = _Base(prepared.workdir, prepared.log_file, prepared.python, prepared.env_source,
                 prepared.skipped)
    return _render(job, cand, _words(job), ledger, prepared.env, base)

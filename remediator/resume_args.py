"""``trainguard resume-args --config FILE JOB``: the resume argument for a batch script.

A scheduler restarts a job by running its batch script again, unchanged (Slurm cannot
change a job's command or environment).  So the script asks, each time it starts::

    ARGS=$(trainguard resume-args --config /shared/trainguard.yaml my-lora)
    exec accelerate launch train.py --output_dir /shared/outputs/my-lora $ARGS

and gets the resume flag and the checkpoint's absolute path (and the flags the trainer
profile adds: sd-scripts is told its true starting point, trainguard.trainers), or
nothing at all when there is no checkpoint to resume.

Which checkpoint: the remediator's choice, when its resume record (remediator.slurm) was
written for this very run (same Slurm job id and cluster, ``SLURM_RESTART_COUNT`` the
restart it requeued for) and that checkpoint is still whole.  Otherwise (a first start,
a requeue by Slurm itself after a preemption or node failure, a resubmission) the same
choice the remediator makes, read-only: the newest checkpoint by true progress that the
run's own python loads as it is (this command runs inside the job, in its environment).
It never repairs; a checkpoint that only a repair would make loadable is passed over
(the remediator repairs before it requeues).

Exit codes: 0 with the words on stdout, or nothing when there is no checkpoint (a first
start must run); 2 for a usage or config error, and for a path the shell would split
(whitespace or glob characters), since ``$ARGS`` unquoted would pass it wrong: use
``--lines`` with ``mapfile -t ARGS < <(trainguard resume-args --lines ...)`` and
``"${ARGS[@]}"`` then.  Written as an assignment, a failure stops a ``set -e`` batch
script instead of silently training from scratch.  One line on stderr says what was
chosen and why (it lands in the job's Slurm output).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trainguard.checkpoint import inspect_checkpoint, list_checkpoints
from trainguard.config import load_config
from trainguard.script import ScriptError, read_script

from . import prepare as prep
from . import slurm as sl

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry

_SPLIT = set(" \t\n*?[")


def register(registry: CommandRegistry) -> None:
    p = registry.commands.add_parser(
        "resume-args", help="print the resume flag and checkpoint for a batch script",
        description="Print the resume flag and the absolute path of the checkpoint to resume "
                    "JOB from (nothing when there is none), for a scheduler's batch script.")
    p.add_argument("job", metavar="JOB", help="the job's name (training_job label)")
    p.add_argument("--config", metavar="FILE", required=True, help="trainguard YAML config")
    p.add_argument("--lines", action="store_true",
                   help="one word per line (for mapfile -t), for paths with spaces")
    p.set_defaults(handler=_command)


def _say(text: str) -> None:
    print(f"trainguard resume-args: {text}", file=sys.stderr, flush=True)


def choose_args(job_name: str, config_path: str) -> tuple[list[str], str]:
    """(the words to print, one line saying why)."""
    from trainguard.cli import UsageError

    config = load_config(config_path)
    job = config.job(job_name)
    if job is None:
        names = ", ".join(j.name for j in config.jobs)
        raise UsageError(f"resume-args: no job named {job_name!r} in {config.path} "
                         f"(configured: {names})")
    if job.launch is None:
        raise UsageError(f"resume-args: job {job.name} has no launch section, so its resume "
                         "flag is unknown (launch.resume_flag)")
    env = dict(os.environ)
    run = (f"restart {env.get('SLURM_RESTART_COUNT', '0')} of Slurm job "
           f"{env['SLURM_JOB_ID']}" if env.get("SLURM_JOB_ID") else "this start")
    try:
        record = sl.read_record(job)
    except ValueError as exc:
        _say(f"ignoring a damaged resume record: {exc}")
        record = None
    if record is not None and record.applies_to(env):
        if record.checkpoint is None:
            return [], f"{run}: the remediator chose to start from scratch"
        try:
            usable = inspect_checkpoint(Path(record.checkpoint)).usable
        except OSError:
            usable = False
        if usable:
            return list(record.args), (f"{run}: the remediator's choice, {record.checkpoint} "
                                       f"(step {record.step})")
        _say(f"the remediator's choice {record.checkpoint} is no longer whole; choosing again")
    ledger = record.ledger if record is not None else None
    words: tuple[str, ...] | None
    if job.launch.script is not None:
        try:
            words = read_script(job.launch.script).command
        except ScriptError:
            words = None
    else:
        words = job.launch.command
    infos = list_checkpoints(job.output_dir, writing_fresh_seconds=0.0, ledger=ledger)
    pyenv = prep._python_env(job, words, env)
    chosen = prep.choose(infos, pyenv, can_repair=False)
    if chosen.candidate is None:
        passed = f" ({len(chosen.skipped)} passed over)" if chosen.skipped else ""
        return [], f"{run}: no checkpoint to resume in {job.output_dir}{passed}; from scratch"
    cand = chosen.candidate
    if cand.env_fixes:
        fixes = " ".join(f"{k}={v}" for k, v in cand.env_fixes.items())
        _say(f"{cand.info.name} loads in this environment only with {fixes}: export it in "
             "the batch script")
    flags, _edits = prep.resume_edits(job, words, cand.info, ledger)
    return flags.words(), (f"{run}: the newest checkpoint this run's environment loads, "
                           f"{cand.info.path} (step {cand.info.step})")


def _command(args: argparse.Namespace) -> int:
    from trainguard.cli import UsageError

    words, why = choose_args(args.job, args.config)
    if not args.lines:
        bad = [w for w in words if _SPLIT & set(w)]
        if bad:
            raise UsageError(f"resume-args: {bad[0]!r} holds whitespace or glob characters, "
                             "which $ARGS would split; use --lines with mapfile -t ARGS and "
                             "\"${ARGS[@]}\"")
    _say(why)
    if words:
        sys.stdout.write("\n".join(words) + "\n" if args.lines else " ".join(words) + "\n")
    return 0

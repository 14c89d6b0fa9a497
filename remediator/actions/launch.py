"""Start a job's training again, detached, and check that it really runs.

Why detached (``start_new_session=True``, stdin from /dev/null): the resumed run must
outlive the remediator (a restart of the remediator must not take the training with it)
and must not get the remediator's terminal signals.  Output is *appended* to the job's
``log_file``, the file the exporter follows, so step progress keeps flowing into the
metrics; with no log_file configured it goes to ``output_dir/trainguard-resume.log`` and
the log line says so.

Which python the resumed run uses (for the compatibility verdict): the one the command
would find.  For ``accelerate``/``torchrun`` that is the interpreter in the launcher's
``#!`` line, looked up on the PATH the run gets (``launch.env`` PATH if set, else ours);
for ``python...`` the interpreter itself; when it cannot be found, the remediator's own
environment.  No extra config key: it is what the run will really execute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from trainguard.config import JobConfig
from trainguard.process import alive, job_processes, same_process
from trainguard.script import ScriptError, read_script, script_kind

log = logging.getLogger(__name__)


class LaunchError(Exception):
    """The run could not be started; the message says why."""


@dataclass(frozen=True)
class Launched:
    pid: int
    create_time: float   # psutil's, for recognising this very process (pid reuse)
    started: float       # time.time() right before the start: compared with alert times,
    #                      since create_time derives from a whole-second boot time and can
    #                      be ~1 s off the wall clock Prometheus and Alertmanager use
    argv: tuple[str, ...]
    log_file: Path
    cwd: Path


def log_path(job: JobConfig) -> tuple[Path, bool]:
    """Where the resumed run's output goes, and whether that is the configured log_file."""
    if job.log_file is not None:
        return job.log_file, True
    return job.output_dir / "trainguard-resume.log", False


def script_argv(script: Path) -> list[str]:
    """How to run a script: ``bash X`` (FluxGym's way) or ``cmd /c X`` on Windows."""
    if script_kind(script) == "bat":
        if os.name != "nt":
            raise LaunchError(f"{script}: a .bat script can only be run on Windows")
        return [os.environ.get("COMSPEC", "cmd.exe"), "/c", str(script)]
    return ["bash", str(script)]


def run_env(job: JobConfig, extra: Mapping[str, str]) -> dict[str, str]:
    """os.environ + the job's launch.env + the compatibility fixes (later wins)."""
    env = dict(os.environ)
    if job.launch is not None:
        env.update(job.launch.env)
    env.update(extra)
    return env


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the child in the background so it never lingers as a zombie."""
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def start(job: JobConfig, argv: Sequence[str], env: Mapping[str, str]) -> Launched:
    """Start ``argv`` from the job's workdir, detached, output appended to its log."""
    if job.launch is None:
        raise LaunchError(f"job {job.name}: no launch section configured, cannot restart it")
    cwd = job.launch.workdir
    logfile, _configured = log_path(job)
    try:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        out = open(logfile, "ab")  # noqa: SIM115 - handed to the child, closed below
    except OSError as exc:
        raise LaunchError(f"{logfile}: cannot open the log for appending: {exc}") from None
    try:
        out.write(f"\n# trainguard: starting {' '.join(argv)} in {cwd} at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        out.flush()
        started = time.time()
        proc = subprocess.Popen(list(argv), cwd=str(cwd), env=dict(env),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        raise LaunchError(f"cannot start {argv[0]} in {cwd}: {exc}") from None
    finally:
        out.close()
    _reap(proc)
    try:
        created = psutil.Process(proc.pid).create_time()
    except (psutil.Error, OSError):
        created = time.time()
    return Launched(proc.pid, created, started, tuple(argv), logfile, cwd)


def _running(launched: Launched) -> bool:
    if not same_process(launched.pid, launched.create_time):
        return False
    try:
        return bool(psutil.Process(launched.pid).status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, OSError):
        return False


def verify(job: JobConfig, launched: Launched, seconds: float,
           interval: float = 0.2) -> tuple[bool, str]:
    """After ``seconds``, is the launched process alive and recognised as the job's?"""
    deadline = time.monotonic() + seconds
    matched = False
    while True:
        if not _running(launched):
            return False, f"pid {launched.pid} exited within {seconds:g}s of starting"
        if not matched:
            mine = {launched.pid}
            with contextlib.suppress(psutil.Error, OSError):
                mine |= {c.pid for c in psutil.Process(launched.pid).children(recursive=True)}
            matched = any(p.pid in mine for p in alive(job_processes(job)))
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if not matched:
        return False, (f"pid {launched.pid} is alive but no process of its tree matches the "
                       f"job's rule (output_dir/script in its arguments)")
    return True, f"pid {launched.pid} alive after {seconds:g}s and matches the job"


# --------------------------------------------------------------------------- python


def _interpreter_of(launcher: str) -> str | None:
    try:
        with open(launcher, "rb") as f:
            first = f.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    parts = first[2:].split()
    if not parts:
        return None
    if os.path.basename(parts[0]) == "env" and len(parts) > 1:
        return shutil.which(parts[-1])
    return parts[0] if os.path.exists(parts[0]) else None


def find_python(job: JobConfig, env: Mapping[str, str]) -> str | None:
    """The interpreter the job's training command will run, or None (see module doc)."""
    launch = job.launch
    if launch is None:
        return None
    try:
        words = list(launch.command) if launch.command is not None else (
            list(read_script(launch.script).command) if launch.script is not None else [])
    except ScriptError:
        return None
    i = 0
    while i < len(words) and (re.match(r"^[A-Za-z_]\w*=", words[i]) or
                              words[i] in ("exec", "nohup", "env", "call")):
        i += 1
    if i >= len(words):
        return None
    program = words[i]
    path_var = env.get("PATH", os.environ.get("PATH", ""))
    found = program if os.path.isabs(program) else shutil.which(program, path=path_var)
    if found is None:
        return None
    name = os.path.basename(found)
    if name.startswith("python"):
        return found
    return _interpreter_of(found)

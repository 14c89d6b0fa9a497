"""Start a job's training again, detached, in the run's own environment; check it runs.

Why detached (``start_new_session=True``, stdin from /dev/null): the resumed run must
outlive the remediator (a restart of the remediator must not take the training with it)
and must not get the remediator's terminal signals.  Output is *appended* to the job's
``log_file``, the file the exporter follows, so step progress keeps flowing into the
metrics; with no log_file configured it goes to ``output_dir/trainguard-resume.log`` and
the log line says so.

Two ways to start it (``remediator.launch_via``):

* ``direct`` (default): a child of the remediator in a new session.
* ``systemd-run``: a transient unit of the user's systemd manager (``systemd-run --user``),
  so the run is a child of that manager, not of the remediator: it does not inherit the
  remediator unit's sandbox (``ProtectSystem=``, ``NoNewPrivileges=``, an empty
  capability bounding set, its address families) or its cgroup, and restarting the
  remediator cannot touch it.  The environment goes through a 0600 ``EnvironmentFile=``
  beside the state file, never through the command line (which every user can read).
  The shipped systemd unit uses this (deploy/systemd/trainguard-remediator.service).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from trainguard.config import JobConfig
from trainguard.process import JobProcess, alive, same_process
from trainguard.script import script_kind

log = logging.getLogger(__name__)

class LaunchError(Exception):
    """The run could not be started; the message says why."""


@dataclass(frozen=True)
class Launched:
    pid: int             # the started process (direct), or systemd-run's (0 in a dry run)
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


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the child in the background so it never lingers as a zombie."""
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def _header(argv: Sequence[str], cwd: Path) -> bytes:
    return (f"\n# trainguard: starting {' '.join(argv)} in {cwd} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode()


def systemd_run_argv(unit: str, argv: Sequence[str], cwd: Path, logfile: Path,
                     env_file: Path) -> list[str]:
    """The ``systemd-run --user`` command line that starts ``argv`` outside our unit."""
    return ["systemd-run", "--user", "--collect", "--quiet", f"--unit={unit}",
            f"--working-directory={cwd}",
            f"--property=EnvironmentFile={env_file}",
            f"--property=StandardOutput=append:{logfile}",
            f"--property=StandardError=append:{logfile}",
            "--property=KillMode=control-group", "--", *argv]


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """An ``EnvironmentFile=`` (0600): one ``KEY="value"`` per line, systemd's quoting."""
    lines = []
    for k, v in sorted(env.items()):
        if "\n" in v:
            raise LaunchError(f"environment variable {k} holds a newline; systemd's "
                              "EnvironmentFile cannot carry it")
        escaped = v.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{k}="{escaped}"\n')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.chmod(path, 0o600)


def start(job: JobConfig, argv: Sequence[str], env: Mapping[str, str], *,
          via: str = "direct", state_dir: Path | None = None) -> Launched:
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
        out.write(_header(argv, cwd))
        out.flush()
        started = time.time()
        if via == "systemd-run":
            folder = state_dir or job.output_dir
            env_file = folder / f".trainguard-env-{job.name}"
            write_env_file(env_file, env)
            unit = f"trainguard-{job.name}-{int(started)}"
            cmd = systemd_run_argv(unit, argv, cwd, logfile, env_file)
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=60, check=False)
            if res.returncode != 0:
                raise LaunchError(f"systemd-run failed ({res.returncode}): "
                                  f"{(res.stderr or res.stdout).strip()[-300:]}")
            return Launched(0, 0.0, started, tuple(cmd), logfile, cwd)
        proc = subprocess.Popen(list(argv), cwd=str(cwd), env=dict(env),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
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


def verify(launched: Launched, scan: Callable[[], list[JobProcess]], seconds: float,
           interval: float = 0.2) -> tuple[bool, str]:
    """After ``seconds``, does the job rule see a root of the job started by this launch?

    The root must have started at or after the launch (so an old process the kill missed
    cannot pass for the new run); with a direct launch the started process itself must
    still live.
    """
    deadline = time.monotonic() + seconds
    root: JobProcess | None = None
    while True:
        if launched.pid and not _running(launched):
            return False, f"pid {launched.pid} exited within {seconds:g}s of starting"
        if root is None or not same_process(root.pid, root.create_time):
            root = next((p for p in alive(scan())
                         if p.root and p.create_time >= launched.started - 1.0), None)
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if root is None:
        return False, (f"no process matching the job's rule started within {seconds:g}s "
                       f"of the launch")
    return True, f"pid {root.pid} alive after {seconds:g}s and matches the job"

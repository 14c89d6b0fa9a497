# A frozen copy of trainguard/process.py before issue 10 (commit 1dad195), kept only so
# bench/bench_ownership.py can print the old rule's scrape cost next to the new one's.
# Not imported by trainguard; not maintained.
"""Which processes belong to a training job: the one rule trainguard reports and kills by.

Why a rule about paths and not names: the old monitor (seed 004) killed every process
whose command line mentioned ``flux_train_network.py`` or ``accelerate launch``, so a
second run on the same host, or a run in another FluxGym copy, died with the stuck one.
Here a process belongs to a job only when

* one of its arguments (``--flag=value`` counts as ``value``) resolves, against *that
  process's own* working directory, to the job's ``output_dir`` or a path inside it, or
  to the job's launch script or the resumed copy of it the remediator writes beside it
  (:func:`resumed_script_path`); or
* it descends from such a process (``bash train.sh`` -> ``accelerate launch`` -> the
  python worker whose own arguments may name only absolute model paths).

Paths are compared by components after resolving, so ``outputs/my-lora2`` never matches
``outputs/my-lora``.  Two exceptions keep observers out of the job: an argument naming
only the job's ``log_file`` does not count (``tail -f train.log`` would otherwise keep
the job "up" forever after training died, and the remediator would kill the user's
terminal), and trainguard's own process is never part of a job.

The exporter reports ``trainguard_job_process_*`` from :class:`ProcessMatcher`; the
remediator's killer re-runs the same rule right before it signals, and uses
:func:`same_process` so a pid recycled by the kernel is never signalled.

Cost: one pass over ``psutil.process_iter`` for all jobs; ``cwd`` (a readlink) and path
resolution happen only for processes whose command line contains the last path
component of a job's output_dir or script, so a host with ~1,000 processes costs one
cmdline/stat read per process and almost nothing else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from trainguard.config import JobConfig

log = logging.getLogger(__name__)

ZOMBIE = psutil.STATUS_ZOMBIE
_ATTRS = ["pid", "ppid", "cmdline", "create_time", "status"]
# Two create_time readings of one process agree to the clock tick (1/100 s); a recycled
# pid is a process started later, far more than this apart in practice.
_CREATE_TIME_TOLERANCE = 0.05


@dataclass(frozen=True)
class JobProcess:
    """One process of a job, as seen during one pass.

    ``status`` is psutil's (``running``, ``sleeping``, ``zombie``...).  A zombie has
    already exited and waits for its parent to reap it: it is listed (so people see
    it) but it is not :attr:`alive`, holds no GPU memory and cannot be killed.
    """

    pid: int
    ppid: int
    create_time: float
    cmdline: tuple[str, ...]
    status: str

    @property
    def alive(self) -> bool:
        return self.status != ZOMBIE


@dataclass(frozen=True)
class _Targets:
    """What one job's processes are recognised by, precomputed once."""

    name: str
    dirs: tuple[tuple[str, ...], ...]      # output_dir as path components
    files: tuple[tuple[str, ...], ...]     # launch script
    ignored: tuple[tuple[str, ...], ...]   # the log file: observers are not the job
    needles: tuple[str, ...]               # cheap substring prefilter


def resumed_script_path(script: Path) -> Path:
    """Where the remediator writes the resumed copy of ``script``: beside it, named so
    it is unmistakably trainguard's.  Defined here because it is part of the job rule:
    the copy's own ``bash`` process must count as the job even when the script lives
    outside the output folder."""
    return script.with_name(f"{script.stem}.trainguard-resume{script.suffix}")


def _parts(path: str | Path) -> tuple[str, ...]:
    return Path(path).parts


def _targets(job: JobConfig) -> _Targets:
    dirs = (_parts(job.output_dir),)
    files: tuple[tuple[str, ...], ...] = ()
    if job.launch is not None and job.launch.script is not None:
        files = (_parts(job.launch.script), _parts(resumed_script_path(job.launch.script)))
    ignored = (_parts(job.log_file),) if job.log_file is not None else ()
    needles = tuple({p[-1] for p in dirs + files if p and p[-1] != os.sep})
    return _Targets(job.name, dirs, files, ignored, needles)


def _arg_values(cmdline: Sequence[str]) -> Iterable[str]:
    """Every argument, and for ``--flag=value`` also the value."""
    for arg in cmdline:
        yield arg
        if arg.startswith("-") and "=" in arg:
            yield arg.split("=", 1)[1]


def _resolve(arg: str, cwd: str | None) -> tuple[str, ...] | None:
    """The argument as absolute path components, or None when it cannot be a path here."""
    if not arg or "\x00" in arg:
        return None
    if os.path.isabs(arg):
        full = arg
    elif cwd is None:
        return None
    else:
        full = os.path.join(cwd, arg)
    try:
        return _parts(os.path.realpath(full))
    except (OSError, ValueError):
        return None


def _is_within(candidate: tuple[str, ...], base: tuple[str, ...]) -> bool:
    return len(candidate) >= len(base) and candidate[: len(base)] == base


def _matches(t: _Targets, cmdline: Sequence[str], cwd: str | None) -> bool:
    for value in _arg_values(cmdline):
        if not any(n in value for n in t.needles):
            continue
        parts = _resolve(value, cwd)
        if parts is None or parts in t.ignored:
            continue
        if parts in t.files or any(_is_within(parts, d) for d in t.dirs):
            return True
    return False


def _cwd_of(pid: int) -> str | None:
    try:
        return psutil.Process(pid).cwd()
    except (psutil.Error, OSError):
        return None


_PROC = Path("/proc")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_STATES = {"R": psutil.STATUS_RUNNING, "S": psutil.STATUS_SLEEPING,
           "D": psutil.STATUS_DISK_SLEEP, "T": psutil.STATUS_STOPPED,
           "t": psutil.STATUS_TRACING_STOP, "Z": psutil.STATUS_ZOMBIE,
           "X": psutil.STATUS_DEAD, "x": psutil.STATUS_DEAD, "I": psutil.STATUS_IDLE,
           "W": psutil.STATUS_WAKING, "K": "wake-kill", "P": psutil.STATUS_PARKED}


def _read_stat(pid: int) -> tuple[int, str, int, str] | None:
    """(ppid, state letter, start time in clock ticks, comm) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    head, _, rest = data.rpartition(b")")  # comm may hold spaces and parentheses
    fields = rest.split()
    if len(fields) < 20:
        return None
    comm = head.partition(b"(")[2].decode("utf-8", "replace")
    return int(fields[1]), fields[0].decode(), int(fields[19]), comm


def _read_cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return tuple(a.decode("utf-8", "surrogateescape") for a in data.rstrip(b"\0").split(b"\0")
                 if data)


def _scan_psutil(exclude: set[int]) -> Iterator[JobProcess]:
    for proc in psutil.process_iter(_ATTRS):
        info = proc.info
        pid = info.get("pid")
        if not isinstance(pid, int) or pid in exclude:
            continue
        yield JobProcess(pid=pid, ppid=int(info.get("ppid") or 0),
                         create_time=float(info.get("create_time") or 0.0),
                         cmdline=tuple(info.get("cmdline") or ()),
                         status=str(info.get("status") or "unknown"))


class ProcessMatcher:
    """Finds the processes of every configured job in one pass over the process table.

    Build it once (the targets are precomputed) and call :meth:`match` per scrape.
    """

    def __init__(self, jobs: Sequence[JobConfig], *, exclude_pids: Iterable[int] = ()) -> None:
        self._targets = [_targets(j) for j in jobs]
        self._exclude = set(exclude_pids)
        # (pid, start ticks, comm) -> cmdline: a process's arguments do not change, so
        # each scrape reads only /proc/PID/stat for processes it has seen before.  exec()
        # changes comm, which makes a new key.
        self._cmdlines: dict[tuple[int, int, str], tuple[str, ...]] = {}

    def _scan(self, exclude: set[int]) -> Iterator[JobProcess]:
        """Every process once.  Linux: /proc with the cmdline cache; elsewhere: psutil."""
        if not _PROC.is_dir():
            yield from _scan_psutil(exclude)
            return
        boot = psutil.boot_time()
        fresh: dict[tuple[int, int, str], tuple[str, ...]] = {}
        for entry in os.scandir(_PROC):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in exclude:
                continue
            stat = _read_stat(pid)
            if stat is None:
                continue
            ppid, state, ticks, comm = stat
            key = (pid, ticks, comm)
            cmdline = self._cmdlines.get(key)
            if cmdline is None:
                cmdline = _read_cmdline(pid)
                if cmdline is None:
                    continue
            fresh[key] = cmdline
            yield JobProcess(pid, ppid, boot + ticks / _CLK_TCK, cmdline,
                             _STATES.get(state, "unknown"))
        self._cmdlines = fresh

    def match(self) -> dict[str, list[JobProcess]]:
        """``{job name: [JobProcess, ...]}`` with every configured job as a key.

        Matched processes come first (oldest first), then their descendants.  A process
        that vanishes or denies access mid-pass is skipped silently: that is normal on
        a busy host, not an error.
        """
        exclude = self._exclude | {os.getpid()}
        seen: dict[int, JobProcess] = {}
        children: dict[int, list[int]] = {}
        roots: dict[str, list[int]] = {t.name: [] for t in self._targets}
        for jp in self._scan(exclude):
            seen[jp.pid] = jp
            children.setdefault(jp.ppid, []).append(jp.pid)
            if not jp.cmdline:
                continue
            joined = "\x00".join(jp.cmdline)
            cwd: str | None = None
            cwd_read = False
            for t in self._targets:
                if not any(n in joined for n in t.needles):
                    continue
                if not cwd_read:
                    cwd, cwd_read = _cwd_of(jp.pid), True
                if _matches(t, jp.cmdline, cwd):
                    roots[t.name].append(jp.pid)
        result: dict[str, list[JobProcess]] = {}
        for name, pids in roots.items():
            result[name] = _with_descendants(pids, seen, children)
        return result


def _with_descendants(roots: list[int], seen: dict[int, JobProcess],
                      children: dict[int, list[int]]) -> list[JobProcess]:
    ordered = sorted(roots, key=lambda p: (seen[p].create_time, p))
    out: list[JobProcess] = []
    done: set[int] = set()
    queue = list(ordered)
    while queue:
        pid = queue.pop(0)
        if pid in done or pid not in seen:
            continue
        done.add(pid)
        out.append(seen[pid])
        # A child is born after its parent; a younger "parent" means a recycled ppid.
        queue.extend(c for c in children.get(pid, ())
                     if seen[c].create_time >= seen[pid].create_time - _CREATE_TIME_TOLERANCE)
    return out


def job_processes(job: JobConfig) -> list[JobProcess]:
    """The processes of one job right now: matching ones, then their descendants."""
    return ProcessMatcher([job]).match()[job.name]


def alive(processes: Iterable[JobProcess]) -> list[JobProcess]:
    """Only the processes that still run (zombies have exited already)."""
    return [p for p in processes if p.alive]


def same_process(pid: int, create_time: float) -> bool:
    """True when ``pid`` is still the very process seen earlier (not a recycled pid).

    The killer calls this right before each signal: between a scan and a kill the
    process may have exited and the kernel may have given its pid to something else.
    """
    try:
        current = psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return False
    return abs(current - create_time) <= _CREATE_TIME_TOLERANCE


def refresh(proc: JobProcess) -> JobProcess | None:
    """The same process re-read now (new status), or None once it is gone or replaced."""
    try:
        p = psutil.Process(proc.pid)
        with p.oneshot():
            if abs(p.create_time() - proc.create_time) > _CREATE_TIME_TOLERANCE:
                return None
            return JobProcess(proc.pid, p.ppid(), proc.create_time, proc.cmdline, p.status())
    except (psutil.Error, OSError):
        return None

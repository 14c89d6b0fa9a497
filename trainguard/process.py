"""Which processes belong to a training job: the one rule trainguard reports and kills by.

A job's processes are its **training roots** and their descendants.  A root is a process
that runs

1. the job's launch script or the resumed copy the remediator writes beside it
   (:func:`resumed_script_path`): a shell (``bash``, ``sh``...) or ``cmd /c`` whose
   *script argument* is that file;
2. the job's configured ``command`` (the same program and arguments, from the job's
   workdir; the flags a resume sets are left out of the comparison); or
3. a training command (``python``/``accelerate``/``torchrun``/``deepspeed`` running a
   ``.py`` file or a ``-m`` module, also behind ``uv run``, ``conda run``...: the test of
   :func:`trainguard.script.is_training_command`) whose *output argument*
   (``--output_dir`` and the usual spellings, or the job's ``output_flags``) names the
   job's ``output_dir``.

Anything else that merely mentions a path in the folder is a **bystander**, never counted
and never signalled: ``python -m http.server --directory outputs/a``, ``rsync -a outputs/a/
backup/``, ``cp -r``, ``less …/model.safetensors``, ``vi outputs/a/train.sh``, ``tail -f
train.log``, ``tensorboard --logdir outputs/a``, ``watch ls outputs/a``, an exporter whose
``--config`` sits in the folder.  The old rule ("any argument inside output_dir, plus
descendants") signalled every one of them, and one such bystander kept the job "up" after
the trainer died, so ``TrainingProcessDown`` never fired.

When output folders nest (a second job writes to ``outputs/a/sub``), a process belongs to
the most specific job only: a process that is itself a root of one job is never counted
for another job through descent, and a root of two jobs goes to the one whose output_dir
is deepest.  Paths compare after resolving symlinks and ``.`` on both sides (the config
loader resolves, and each process's relative arguments are resolved against its *own*
working directory), so an output_dir written through a symlink or as ``.`` matches.

The exporter reports ``trainguard_job_process_*`` from :class:`ProcessMatcher`; the
remediator kills by the same matcher (over all jobs, so nesting is judged the same way)
and calls :func:`same_process` right before each signal, so a pid recycled by the kernel
is never signalled.  A descendant stays the job's after its parent dies (membership is
decided once per process and kept for its life), so the workers of a killed launcher are
still stopped; a process first seen after its root already died belongs to the job only
if it is a root itself, which every sd-scripts, diffusers and Trainer process is (they
all pass ``--output_dir``).

Cost, per scrape: one listing of ``/proc``, compared with the last one as a set (C
speed: a known process costs nothing more); ``stat``/``cmdline`` only for pids not seen
before (identity = pid + start time), for pids the kernel may have handed out again since
the last pass (it allocates pids cyclically; ``/proc/loadavg`` names the last one and
``/proc/stat`` counts forks, so the range that can hold new processes is known, and is
walked when it is shorter than the listing), for processes started in the last
:data:`YOUNG_SECONDS` (a shell may still ``exec`` into the trainer) and for the jobs' own
processes (their state and parent change).  A verdict is computed once per process.
``cwd`` (a readlink) is read only for shells running a script and for training commands.
At ~1,100 host processes a pass costs about a millisecond, most of it the listing
(bench/bench_ownership.py, bench/bench_peers.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from trainguard.config import JobConfig
from trainguard.script import SHELLS, flag_values, is_training_command, program

log = logging.getLogger(__name__)

ZOMBIE = psutil.STATUS_ZOMBIE
# Two create_time readings of one process agree to the clock tick (1/100 s); a recycled
# pid is a process started later, far more than this apart in practice.
_CREATE_TIME_TOLERANCE = 0.05
# A process started this recently is re-read on each pass: a shell that was caught
# between fork and exec becomes the trainer under the same pid.
YOUNG_SECONDS = 30.0
# Flags a resume may add to a configured command (the resume flag itself, and the
# starting point trainer profiles pass): left out when recognising that command.
RESUME_SET_FLAGS = ("--initial_epoch", "--initial_step", "--skip_until_initial_step")
# Shell options that take the next word as their value, so it is not the script.
_SHELL_OPTS_WITH_VALUE = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})


@dataclass(frozen=True)
class JobProcess:
    """One process of a job, as seen during one pass.

    ``status`` is psutil's (``running``, ``sleeping``, ``zombie``...).  A zombie has
    already exited and waits for its parent to reap it: it is listed (so people see
    it) but it is not :attr:`alive`, holds no GPU memory and cannot be killed.  ``root``
    says whether it is a training root of the job (not merely a descendant).
    """

    pid: int
    ppid: int
    create_time: float
    cmdline: tuple[str, ...]
    status: str
    root: bool = False

    @property
    def alive(self) -> bool:
        return self.status != ZOMBIE


def resumed_script_path(script: Path) -> Path:
    """Where the remediator writes the resumed copy of ``script``: beside it, named so
    it is unmistakably trainguard's.  Defined here because it is part of the job rule:
    the copy's own shell process is a root of the job."""
    return script.with_name(f"{script.stem}.trainguard-resume{script.suffix}")


def _real(path: str | Path) -> str:
    return os.path.realpath(path)


@dataclass(frozen=True)
class _Rule:
    """What one job's roots look like, precomputed once (all paths real)."""

    name: str
    output_dir: str
    depth: int                              # path components: deeper = more specific
    scripts: frozenset[str]                 # launch script and its resumed copy
    command: tuple[str, ...] | None         # configured command, resume flags left out
    workdir: str | None
    output_flags: tuple[str, ...]
    dropped: tuple[str, ...]                # flags a resume sets


def _rule(job: JobConfig) -> _Rule:
    out = _real(job.output_dir)
    scripts: frozenset[str] = frozenset()
    command: tuple[str, ...] | None = None
    workdir: str | None = None
    dropped: tuple[str, ...] = RESUME_SET_FLAGS
    if job.launch is not None:
        workdir = _real(job.launch.workdir)
        dropped = (job.launch.resume_flag, *RESUME_SET_FLAGS)
        if job.launch.script is not None:
            scripts = frozenset({_real(job.launch.script),
                                 _real(resumed_script_path(job.launch.script))})
        if job.launch.command is not None:
            command = _without_flags(job.launch.command, dropped)
    return _Rule(job.name, out, len(Path(out).parts), scripts, command, workdir,
                 job.output_flags, dropped)


def _without_flags(words: Sequence[str], flags: Sequence[str]) -> tuple[str, ...]:
    """``words`` minus every ``--flag value`` / ``--flag=value`` / bare ``--flag``."""
    out: list[str] = []
    skip = False
    for k, w in enumerate(words):
        if skip:
            skip = False
            continue
        if w in flags:
            skip = k + 1 < len(words) and not words[k + 1].startswith("-")
            continue
        if any(w.startswith(f + "=") for f in flags):
            continue
        out.append(w)
    return tuple(out)


def _resolve(arg: str, cwd: str | None) -> str | None:
    """The argument as a real absolute path, or None when it cannot be resolved here."""
    if not arg or "\x00" in arg:
        return None
    if not os.path.isabs(arg):
        if cwd is None:
            return None
        arg = os.path.join(cwd, arg)
    try:
        return _real(arg)
    except (OSError, ValueError):
        return None


def shell_script_argument(argv: Sequence[str]) -> str | None:
    """The script file a shell (or ``cmd /c``) runs, or None if ``argv`` is not that.

    ``bash -x train.sh`` -> ``train.sh``; ``bash -c '...'`` runs a string, not a file.
    """
    if not argv:
        return None
    prog = program(argv[0])
    if prog in ("cmd", "cmd.exe"):
        rest = [a for a in argv[1:] if a.lower() not in ("/c", "/k", "/d", "/q")]
        return rest[0] if rest else None
    if prog not in SHELLS:
        return None
    i = 1
    if prog == "busybox":
        if len(argv) < 2 or program(argv[1]) not in SHELLS - {"busybox"}:
            return None
        i = 2
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if a in _SHELL_OPTS_WITH_VALUE:
            i += 2
            continue
        if a.startswith(("-", "+")):
            if a.startswith("-") and not a.startswith("--") and "c" in a[1:]:
                return None  # -c: a command string, no script file
            i += 1
            continue
        break
    return argv[i] if i < len(argv) else None


def _candidate(argv: Sequence[str]) -> bool:
    """Cheap pre-test: could this argv be a root of any job at all?"""
    return shell_script_argument(argv) is not None or is_training_command(argv)


def _roots_of(rules: Sequence[_Rule], argv: Sequence[str], cwd: str | None) -> list[_Rule]:
    """Every job this process is a root of (see the module doc)."""
    script = shell_script_argument(argv)
    script_real = _resolve(script, cwd) if script is not None else None
    training = is_training_command(argv)

    def runs_script(r: _Rule) -> bool:
        return script_real is not None and script_real in r.scripts

    def runs_command(r: _Rule) -> bool:
        return r.command is not None and cwd == r.workdir and _runs_command(argv, r)

    def writes_output(r: _Rule) -> bool:
        return training and any(_resolve(v, cwd) == r.output_dir
                                for v in flag_values(argv, r.output_flags))

    return [r for r in rules if runs_script(r) or runs_command(r) or writes_output(r)]


def _same_program(a: str, b: str) -> bool:
    """``python`` and ``python3.11`` are one program; otherwise the names must agree."""
    pa, pb = program(a), program(b)
    return pa == pb or (pa.startswith("python") and pb.startswith("python"))


def _runs_command(argv: Sequence[str], r: _Rule) -> bool:
    """Whether ``argv`` is the configured command (``accelerate`` may show as ``python
    /venv/bin/accelerate``), resume flags left out of the comparison."""
    assert r.command is not None
    head, tail = r.command[0], r.command[1:]
    for k, word in enumerate(argv[:3]):
        if _same_program(word, head):
            return _without_flags(argv[k + 1:], r.dropped) == tail
    return False


@dataclass
class _Entry:
    """What is known about one process, kept across passes while it lives."""

    ticks: int                  # start time in clock ticks since boot: identity with pid
    comm: str                   # changes on exec
    ppid: int
    state: str
    cmdline: tuple[str, ...]
    started: float              # wall-clock start (boot time + ticks)
    roots: tuple[str, ...] = ()  # jobs it is a root of (most specific first)
    member: str | None = None    # the job it belongs to; decided once, kept
    decided: bool = False


_PROC = "/proc"
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_STATES = {"R": psutil.STATUS_RUNNING, "S": psutil.STATUS_SLEEPING,
           "D": psutil.STATUS_DISK_SLEEP, "T": psutil.STATUS_STOPPED,
           "t": psutil.STATUS_TRACING_STOP, "Z": psutil.STATUS_ZOMBIE,
           "X": psutil.STATUS_DEAD, "x": psutil.STATUS_DEAD, "I": psutil.STATUS_IDLE,
           "W": psutil.STATUS_WAKING, "K": "wake-kill", "P": psutil.STATUS_PARKED}


def _read_stat(pid: int | str) -> tuple[int, str, int, str] | None:
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


def _read_cmdline(pid: int | str) -> tuple[str, ...] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return None
    if not data:
        return ()
    return tuple(a.decode("utf-8", "surrogateescape") for a in data.rstrip(b"\0").split(b"\0"))


def _cwd_of(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _read_small(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


class _PidClock:
    """Which pids the kernel may have handed out since the last pass.

    Linux allocates pids cyclically (``idr_alloc_cyclic``): after ``last`` comes
    ``last+1``, wrapping to 300 past ``pid_max``.  So between two passes only pids in the
    cyclic range (last before, last now] can belong to new processes, unless more than
    the whole pid space was used (``/proc/stat``'s ``processes`` counts forks).  Both
    files are read in this namespace, like ``/proc`` itself.
    """

    def __init__(self) -> None:
        self.before: int | None = None
        self.last: int | None = None
        self.forks: int | None = None
        self.wrapped = True  # first pass: everything is new
        try:
            self.pid_max = int(_read_small("/proc/sys/kernel/pid_max") or b"32768")
        except ValueError:
            self.pid_max = 32768

    def advance(self) -> None:
        forks: int | None = None
        for line in _read_small("/proc/stat").splitlines():
            if line.startswith(b"processes "):
                forks = int(line.split()[1])
                break
        try:
            last: int | None = int(_read_small("/proc/loadavg").split()[4])
        except (IndexError, ValueError):
            last = None
        self.wrapped = (self.last is None or last is None or forks is None
                        or self.forks is None or forks - self.forks >= self.pid_max - 300)
        self.before, self.last, self.forks = self.last, last, forks

    def may_be_new(self, pid: int) -> bool:
        if self.wrapped or self.before is None or self.last is None:
            return True
        a, b = self.before, self.last
        if a == b:
            return False
        return a < pid <= b if a < b else (pid > a or pid <= b)

    def among(self, present: set[str]) -> set[str]:
        """The names in ``present`` (a /proc listing) whose pid :meth:`may_be_new`.

        Walks the range of new pids when it is the shorter (the forks since the last pass,
        usually a handful), else the listing."""
        if self.wrapped or self.before is None or self.last is None:
            return {n for n in present if n.isdigit()}
        a, b = self.before, self.last
        span = b - a if a <= b else self.pid_max - a + b
        if span > len(present):
            return {n for n in present if n.isdigit() and self.may_be_new(int(n))}
        pids = range(a + 1, b + 1) if a <= b else \
            itertools.chain(range(a + 1, self.pid_max + 1), range(1, b + 1))
        return {name for pid in pids if (name := str(pid)) in present}


class ProcessMatcher:
    """Finds the processes of every configured job; build once, call :meth:`match` often.

    Thread-safe: the remediator's workers share one matcher.
    """

    def __init__(self, jobs: Sequence[JobConfig], *, exclude_pids: Iterable[int] = ()) -> None:
        self._rules = [_rule(j) for j in jobs]
        self._names = [j.name for j in jobs]
        self._exclude = set(exclude_pids)
        # Keyed by the /proc entry's name (the pid as text): a pass compares listings as
        # sets of names without converting a thousand of them to numbers.
        self._table: dict[str, _Entry] = {}
        # Re-read on every pass: the jobs' own processes and young ones (see the module doc).
        self._watch: set[str] = set()
        self._clock = _PidClock()
        self._lock = threading.Lock()
        self._boot = psutil.boot_time()
        self.reads = 0  # stat reads in the last pass (for benchmarks and tests)

    def match(self) -> dict[str, list[JobProcess]]:
        """``{job name: [JobProcess, ...]}`` with every configured job as a key.

        Roots come first (oldest first), then their descendants.  A process that
        vanishes or denies access mid-pass is skipped silently: that is normal on a
        busy host, not an error.
        """
        with self._lock:
            if not os.path.isdir(_PROC):
                return self._match_psutil()
            self._refresh()
            return self._result()

    # ------------------------------------------------------------------ the table

    def _refresh(self) -> None:
        self._clock.advance()
        now = time.time()
        table, watch = self._table, self._watch
        present = set(os.listdir(_PROC))
        present.difference_update(str(p) for p in self._exclude | {os.getpid()})
        for name in table.keys() - present:
            del table[name]
        watch.intersection_update(present)
        todo = {n for n in present - table.keys() if n.isdigit()}  # never seen
        todo |= watch
        todo |= self._clock.among(present)  # a known pid the kernel may have reused
        fresh: list[str] = []
        for name in todo:
            entry = table.get(name)
            stat = _read_stat(name)
            if stat is None:
                table.pop(name, None)  # gone since the listing
                continue
            ppid, state, ticks, comm = stat
            if entry is not None and entry.ticks == ticks and entry.comm == comm:
                entry.ppid, entry.state = ppid, state  # same process: state may change
                continue
            cmdline = _read_cmdline(name)
            if cmdline is None:
                table.pop(name, None)
                continue
            if entry is not None and entry.ticks == ticks:
                # exec() under the same pid: a new command line, same membership so far
                table[name] = _Entry(ticks, comm, ppid, state, cmdline, entry.started,
                                     member=entry.member)
            else:
                table[name] = _Entry(ticks, comm, ppid, state, cmdline,
                                     self._boot + ticks / _CLK_TCK)
            fresh.append(name)
        for name in fresh:
            self._judge_roots(name, table[name])
        for name in fresh:
            self._decide(name, set())
        young = now - YOUNG_SECONDS
        for name in todo:
            entry = table.get(name)
            if entry is not None and (entry.member is not None or entry.started >= young):
                watch.add(name)
            else:
                watch.discard(name)  # a known bystander: nothing about it can change for us
        self.reads = len(todo)

    def _judge_roots(self, name: str, entry: _Entry) -> None:
        if not entry.cmdline or not _candidate(entry.cmdline):
            entry.roots = ()
            return
        found = _roots_of(self._rules, entry.cmdline, _cwd_of(name))
        found.sort(key=lambda r: -r.depth)
        entry.roots = tuple(r.name for r in found)
        if found:
            entry.member = found[0].name
            entry.decided = True

    def _decide(self, name: str, seen: set[str]) -> str | None:
        """The job ``name``'s process belongs to: its own root verdict, else its parent's."""
        entry = self._table.get(name)
        if entry is None:
            return None
        if entry.decided or name in seen:
            return entry.member
        seen.add(name)
        ppid = str(entry.ppid)
        parent = self._table.get(ppid)
        inherited = None
        # A child is born after its parent; a younger "parent" means a recycled ppid.
        if parent is not None and parent.ticks <= entry.ticks:
            inherited = self._decide(ppid, seen)
        if inherited is not None:
            entry.member = inherited
        entry.decided = True
        return entry.member

    def _result(self) -> dict[str, list[JobProcess]]:
        out: dict[str, list[JobProcess]] = {n: [] for n in self._names}
        for name in self._watch:  # every member is watched
            e = self._table[name]
            if e.member is None or e.member not in out:
                continue
            out[e.member].append(JobProcess(
                int(name), e.ppid, self._boot + e.ticks / _CLK_TCK, e.cmdline,
                _STATES.get(e.state, "unknown"), root=bool(e.roots) and e.roots[0] == e.member))
        for procs in out.values():
            procs.sort(key=lambda p: (not p.root, p.create_time, p.pid))
        return out

    def _match_psutil(self) -> dict[str, list[JobProcess]]:
        """Without /proc (macOS, tests of other platforms): psutil, no caching."""
        out: dict[str, list[JobProcess]] = {n: [] for n in self._names}
        procs: dict[int, tuple[JobProcess, list[str]]] = {}
        for proc in psutil.process_iter(["pid", "ppid", "cmdline", "create_time", "status"]):
            info = proc.info
            if info["pid"] == os.getpid():
                continue
            argv = tuple(info.get("cmdline") or ())
            roots: list[str] = []
            if argv and _candidate(argv):
                try:
                    cwd = proc.cwd()
                except (psutil.Error, OSError):
                    cwd = None
                roots = [r.name for r in sorted(_roots_of(self._rules, argv, cwd),
                                                key=lambda r: -r.depth)]
            procs[info["pid"]] = (JobProcess(info["pid"], int(info.get("ppid") or 0),
                                             float(info.get("create_time") or 0.0), argv,
                                             str(info.get("status") or "unknown"),
                                             root=bool(roots)), roots)
        memo: dict[int, str | None] = {}

        def member(pid: int, depth: int = 0) -> str | None:
            if pid in memo:
                return memo[pid]
            jp, roots = procs[pid]
            memo[pid] = None
            parent = procs.get(jp.ppid)
            result = roots[0] if roots else (
                member(jp.ppid, depth + 1) if parent is not None and depth < 512 else None)
            memo[pid] = result
            return result

        for pid, (jp, _roots) in procs.items():
            if (name := member(pid)) is not None:
                out[name].append(jp)
        for procs_ in out.values():
            procs_.sort(key=lambda p: (not p.root, p.create_time, p.pid))
        return out


def job_processes(job: JobConfig, jobs: Sequence[JobConfig] | None = None
                  ) -> list[JobProcess]:
    """The processes of one job right now (one fresh pass).

    Pass every configured job as ``jobs`` so that nesting is judged as the exporter
    judges it; the remediator keeps one :class:`ProcessMatcher` instead.
    """
    return ProcessMatcher(list(jobs) if jobs is not None else [job]).match()[job.name]


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
            return JobProcess(proc.pid, p.ppid(), proc.create_time, proc.cmdline, p.status(),
                              proc.root)
    except (psutil.Error, OSError):
        return None


def environment_of(pid: int) -> dict[str, str] | None:
    """The environment a process was started with (``/proc/PID/environ``), or None.

    The remediator resumes a run with the environment the killed run had (its PATH,
    VIRTUAL_ENV, CONDA_PREFIX, CUDA_VISIBLE_DEVICES...), not its own.
    """
    try:
        return {k: v for k, v in psutil.Process(pid).environ().items()}
    except (psutil.Error, OSError):
        return None

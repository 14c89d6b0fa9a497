"""Why a run died, from the end of its log: a small table of real error text.

Why: every exit without completion used to be resumed until the restart budget was
spent.  A run that dies at start with ``ModuleNotFoundError``, an argparse error or a
missing dataset dies the same way every time; three restarts waste GPU hours and the
person learns nothing.  Transient failures (an NCCL timeout, a CUDA error after an Xid,
a signal, the OOM killer) are what restarts fix.

How: when a run's process is gone, :func:`classify_log` reads the last
:data:`TAIL_BYTES` of the job's log (never the whole file), keeps only what the dead
run wrote after it last made progress, and looks for the rows of :data:`PATTERNS` in
order; the first row that matches names the class.  Nothing matched: ``unknown``.

What is "after it last made progress": trainguard writes ``# trainguard: starting ...``
into the log before each run it launches (remediator.actions.launch), so text before the
last such header belongs to an older run; and within a run, text before the line where
the step last *changed* happened while the run still went on (a warning that printed a
``ModuleNotFoundError`` at start-up did not stop a run that then trained for hours).
The line where the step last changed, not the last bar line: tqdm redraws the bar once
more when the process exits, after the traceback (seen in tests/fixtures/
sd_scripts_sim.py's real output), and that redraw must not hide the error.

Classes and what the remediator does (remediator.decide):

* ``configuration`` — the same start fails the same way: not relaunched, a person is told
  what to fix (:data:`RETRIES` 0);
* ``resume`` — the resume itself failed on the checkpoint (``KeyError: 'step'``, the
  ``weights_only`` refusal): the checkpoint doctor's repair path applies (the prepared
  resume carries the repair or environment fix the doctor's verdict asks for); once, and
  if the same error comes back, stop;
* ``resources`` — CUDA out of memory, a full disk, too little shared memory: one retry
  (fragmentation, another process that has gone), then stop;
* ``transient`` — NCCL/collective timeouts and errors, CUDA errors after an Xid, signals,
  segfaults, the OOM killer: resumed within the restart budget, as are ``unknown`` ones.

Every row cites where its text comes from; tests/remediator/test_failures.py has a test
per row with the text as the upstream code prints it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainguard.config import JobConfig
from trainguard.progress import STEP_PATTERN

TAIL_BYTES = 64 << 10      # the end of the log that is read: a traceback is a few KiB
MAX_LINE = 300             # the error line kept for messages
HEADER = "# trainguard: starting "   # remediator.actions.launch._header

CONFIGURATION = "configuration"
RESUME = "resume"
RESOURCES = "resources"
TRANSIENT = "transient"
UNKNOWN = "unknown"
CLASSES = (CONFIGURATION, RESUME, RESOURCES, TRANSIENT, UNKNOWN)

# How many times trainguard relaunches a run that keeps failing with this class before
# it stops (None: the restart budget alone decides).
RETRIES: dict[str, int | None] = {CONFIGURATION: 0, RESUME: 1, RESOURCES: 1,
                                  TRANSIENT: None, UNKNOWN: None}


@dataclass(frozen=True)
class Pattern:
    """One row of the table."""

    cause: str       # stable id, also the ``cause`` label of the remediator's gauge
    cls: str         # one of CLASSES
    regex: str       # searched in each line (re.search), case-sensitive
    what: str        # what it means, for a person
    todo: str        # what a person should do
    source: str      # where the text comes from upstream

    @property
    def compiled(self) -> re.Pattern[str]:
        return _compiled(self.regex)


_CACHE: dict[str, re.Pattern[str]] = {}


def _compiled(regex: str) -> re.Pattern[str]:
    c = _CACHE.get(regex)
    if c is None:
        c = _CACHE[regex] = re.compile(regex)
    return c


# In priority order: the first row that matches anywhere in the dead run's text wins, so
# a root cause beats the launcher's report of it (accelerate re-raises every failure as
# CalledProcessError; torchrun as ChildFailedError), and the signal rows come last.
PATTERNS: tuple[Pattern, ...] = (
    # -------------------------------------------------------------- resume errors
    Pattern("accelerate-rng-step", RESUME, r"^KeyError: 'step'$",
            "accelerate could not load the checkpoint's RNG file and then failed on its "
            "step (accelerate 0.32-0.33; with torch >= 2.6 the weights_only default "
            "refuses the numpy objects in it)",
            "trainguard resumes with the doctor's fix for this environment (a rewritten "
            "RNG file or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1); if it fails again, upgrade "
            "accelerate to >= 1.1 in the run's environment",
            "accelerate v0.32.0 accelerator.py:3147 `self.step = override_attributes"
            "[\"step\"]` after checkpointing.py:250-264 swallowed the RNG load error; "
            "seeds 000-002"),
    Pattern("torch-weights-only", RESUME, r"Weights only load failed\.",
            "torch refused to load a checkpoint file with weights_only=True (its default "
            "since 2.6): the file holds objects outside torch's allowlist",
            "trainguard resumes with the doctor's fix for this environment; if it fails "
            "again, upgrade accelerate (>= 1.1 loads RNG files with an allowlist) or set "
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for a checkpoint you trust",
            "torch/serialization.py (2.13) `_get_wo_message`: \"Weights only load failed. "
            "...\""),
    # -------------------------------------------------------------- configuration
    Pattern("module-not-found", CONFIGURATION, r"^ModuleNotFoundError: No module named ",
            "a Python module the training script imports is not installed in the run's "
            "environment",
            "install it into the Python the run uses (FluxGym: its env, `pip install -r "
            "requirements.txt` in sd-scripts and in FluxGym), then start the run again",
            "CPython Lib/importlib/_bootstrap.py:1117 _ERR_MSG_PREFIX = 'No module named '"),
    Pattern("import-error", CONFIGURATION, r"^ImportError: cannot import name ",
            "an installed package does not have what the training script imports: two "
            "packages of the run's environment do not fit together",
            "install the versions the trainer's requirements file names (sd-scripts: "
            "requirements.txt), then start the run again",
            "CPython Lib/importlib/_bootstrap.py `cannot import name %r from %r`"),
    Pattern("file-not-found", CONFIGURATION,
            r"^FileNotFoundError: \[Errno 2\] No such file or directory: ",
            "a file the run needs (a model, the dataset config, an image folder) is not "
            "where the command line says",
            "check the paths in the training script (train.sh) and dataset.toml; FluxGym "
            "downloads the models into its models/ folder on first use",
            "CPython: OSError(ENOENT) of open()/os.stat(): `[Errno 2] No such file or "
            "directory: 'PATH'`"),
    Pattern("argument-error", CONFIGURATION,
            r"^\S+: error: (?:unrecognized arguments: |the following arguments are required"
            r": |argument \S+: )",
            "the training script rejected its command line",
            "fix the flag named in the error in the training script (train.sh), then start "
            "the run again",
            "CPython Lib/argparse.py:2630 `%(prog)s: error: %(message)s` with the "
            "messages of :1871, :2142, :2541"),
    Pattern("no-training-data", CONFIGURATION, r"No data found\.",
            "sd-scripts found no images: train_data_dir or the dataset config points to "
            "the wrong folder (it must be the parent of the image folders)",
            "check image_dir in the dataset config (FluxGym: outputs/<name>/dataset.toml) "
            "and that the images are there, then start the run again",
            "kohya-ss/sd-scripts sd3 train_network.py:575-579 logger.error(\"No data "
            "found. Please verify arguments ...\") and return"),
    Pattern("safetensors-damaged", CONFIGURATION,
            r"SafetensorError: Error while deserializing header",
            "a .safetensors file the run loads is damaged (an interrupted download or "
            "copy)",
            "find the file in the traceback above the error, download or copy it again, "
            "then start the run again",
            "safetensors (Rust) SafetensorError \"Error while deserializing header: ...\""),
    Pattern("no-cuda", CONFIGURATION,
            r"Torch not compiled with CUDA enabled|No CUDA GPUs are available"
            r"|Found no NVIDIA driver on your system",
            "the run's Python cannot use a GPU: a CPU-only torch, no visible GPU "
            "(CUDA_VISIBLE_DEVICES) or no driver",
            "install the CUDA build of torch in the run's environment, or make the GPU "
            "visible to it (driver, CUDA_VISIBLE_DEVICES, the container's GPU option)",
            "torch/cuda/__init__.py:522 AssertionError(\"Torch not compiled with CUDA "
            "enabled\"); c10 \"No CUDA GPUs are available\"; torch/cuda \"Found no NVIDIA "
            "driver on your system\""),
    # -------------------------------------------------------------- resources
    Pattern("cuda-out-of-memory", RESOURCES,
            r"CUDA out of memory\.|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED",
            "the GPU ran out of memory",
            "make the run need less GPU memory (smaller batch size or resolution, gradient "
            "checkpointing, fp8; in FluxGym the lower VRAM option) or stop what else uses "
            "the GPU, then start the run again",
            "c10/cuda/CUDACachingAllocator.cpp TORCH_CHECK_WITH(OutOfMemoryError, ..., "
            "\"CUDA out of memory. Tried to allocate \", ...) raised as torch.OutOfMemoryError"
            " (torch.cuda.OutOfMemoryError, RuntimeError before 1.13)"),
    Pattern("disk-full", RESOURCES, r"\[Errno 28\] No space left on device",
            "the disk filled up (a save that does not fit leaves a half-written checkpoint)",
            "free space on the output folder's disk (old checkpoints you do not need, "
            "caches), then start the run again",
            "CPython OSError(ENOSPC) `[Errno 28] No space left on device`"),
    Pattern("shared-memory", RESOURCES,
            r"Unexpected bus error encountered in worker\. This might be caused by "
            r"insufficient shared memory",
            "a DataLoader worker ran out of shared memory (/dev/shm)",
            "give the container more shared memory (docker --shm-size) or use fewer data "
            "loader workers (--max_data_loader_n_workers 0), then start the run again",
            "torch/csrc/DataLoader.cpp \"ERROR: Unexpected bus error encountered in "
            "worker. This might be caused by insufficient shared memory (shm).\""),
    # -------------------------------------------------------------- transient
    Pattern("nccl-timeout", TRANSIENT, r"Watchdog caught collective operation timeout",
            "a collective operation (NCCL) timed out: one rank stopped answering",
            "nothing if the resume works; if it repeats, look for a stuck rank or a "
            "network problem (NCCL_DEBUG=INFO)",
            "torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp WorkNCCL::checkTimeout "
            "\"Watchdog caught collective operation timeout: WorkNCCL(...) ran for N "
            "milliseconds before timing out.\""),
    Pattern("nccl-error", TRANSIENT,
            r"NCCL error|NCCL communicator was aborted|DistBackendError",
            "NCCL reported an error (a peer or the network failed)",
            "nothing if the resume works; if it repeats, run with NCCL_DEBUG=INFO",
            "torch/csrc/distributed/c10d/NCCLUtils.hpp C10D_NCCL_CHECK \"NCCL error in: "
            "...\"; ProcessGroupNCCL.cpp \"NCCL communicator was aborted\""),
    Pattern("cuda-error", TRANSIENT,
            r"CUDA error: (?:an illegal memory access was encountered|unspecified launch "
            r"failure|uncorrectable ECC error encountered|unknown error|misaligned address"
            r"|the launch timed out and was terminated)",
            "the GPU reported an error (often with an Xid in the kernel log: a hardware or "
            "driver fault)",
            "nothing if the resume works; if it repeats, check `dmesg | grep -i xid` and the "
            "GPU's health",
            "c10/cuda/CUDAException.cpp c10_cuda_check_implementation \"CUDA error: \" + "
            "cudaGetErrorString()"),
    Pattern("dataloader-worker", TRANSIENT,
            r"DataLoader worker \(pid\(?s?\)? [\d, ]+\) (?:is killed by signal|exited "
            r"unexpectedly)",
            "a DataLoader worker process died",
            "nothing if the resume works",
            "torch/csrc/DataLoader.cpp \"DataLoader worker (pid {}) is killed by signal: "
            "{}.\"; torch/utils/data/dataloader.py:1305 \"DataLoader worker (pid(s) ...) "
            "exited unexpectedly\""),
    Pattern("fatal-signal", TRANSIENT,
            r"Fatal Python error: (?:Segmentation fault|Bus error|Aborted)",
            "the Python process crashed (a segfault in native code)",
            "nothing if the resume works; if it repeats, the traceback above names the "
            "library",
            "CPython faulthandler \"Fatal Python error: Segmentation fault\""),
    Pattern("killed-by-signal", TRANSIENT,
            r"died with <Signals\.SIG[A-Z]+: \d+>"
            r"|Signal \d+ \(SIG[A-Z]+\) received by PID \d+"
            r"|line \d+: +\d+ (?:Killed|Segmentation fault|Aborted|Bus error|Terminated)\b",
            "the training process was killed by a signal (SIGKILL is what the kernel's OOM "
            "killer sends when the machine runs out of RAM)",
            "nothing if the resume works; if it repeats with SIGKILL, the machine runs out "
            "of RAM (`dmesg | grep -i oom`)",
            "CPython Lib/subprocess.py:142 \"Command '%s' died with %r.\" raised by "
            "accelerate commands/launch.py simple_launcher; torch/distributed/elastic/"
            "multiprocessing/errors/__init__.py:141-143 \"Signal N (SIGNAME) received by "
            "PID\"; bash's job report \"line N: PID Killed\""),
)


@dataclass(frozen=True)
class Failure:
    """How a run ended, as its log tells it."""

    cls: str                 # one of CLASSES
    cause: str | None        # the matching row's id (None: unknown)
    line: str                # the error line (unknown: the last line the run wrote)
    what: str
    todo: str
    log: str | None = None   # the log read
    at: float = 0.0          # the log's mtime: when the dead run last wrote

    @property
    def retries(self) -> int | None:
        return RETRIES[self.cls]

    def describe(self) -> str:
        """One sentence: what was seen and what it means."""
        if self.cause is None:
            if not self.line:
                return "the run's log is empty"
            return f"the run's log ends with {self.line!r} ({self.what})"
        return f"the run's log says {self.line!r}: {self.what} ({self.cls}: {self.cause})"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SPLIT = re.compile(r"[\r\n]")


def lines_of(text: str) -> list[str]:
    """The log's lines as a terminal would show them: tqdm redraws split on ``\\r``,
    colour escapes gone, trailing blanks stripped."""
    return [ln.rstrip() for ln in _SPLIT.split(_ANSI.sub("", text))]


def last_run(lines: Sequence[str], step_pattern: str | None = None) -> list[str]:
    """What the last run wrote after it last made progress (see the module doc)."""
    start = 0
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(HEADER):
            start = i + 1
            break
    step_re = re.compile(step_pattern) if step_pattern else re.compile(STEP_PATTERN, re.I)
    cut = start
    last: str | None = None
    for i in range(start, len(lines)):
        m = step_re.search(lines[i])
        if m is None:
            continue
        step = m.group("step")
        if step != last:
            last = step
            cut = i + 1
    return [ln for ln in lines[cut:] if ln.strip()]


def classify(text: str, step_pattern: str | None = None) -> Failure:
    """The class of what ``text`` (the end of a log) says; ``unknown`` when no row matches."""
    lines = last_run(lines_of(text), step_pattern)
    for pattern in PATTERNS:
        rx = pattern.compiled
        for line in reversed(lines):
            if rx.search(line):
                return Failure(pattern.cls, pattern.cause, _clip(line.strip()), pattern.what,
                               pattern.todo)
    last = _clip(lines[-1].strip()) if lines else ""
    return Failure(UNKNOWN, None, last, "no error trainguard knows",
                   "look at the end of the run's log if it keeps happening")


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[:MAX_LINE - 3] + "..."


def read_tail(path: Path, limit: int = TAIL_BYTES) -> tuple[str, float] | None:
    """The last ``limit`` bytes of ``path`` (decoded leniently) and its mtime; None when
    it cannot be read.  One ``seek`` and one bounded ``read``: never the whole file."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size > limit:
                f.seek(st.st_size - limit)
            data = f.read(limit)
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    if st.st_size > limit:
        text = text.split("\n", 1)[-1]   # the first line was cut; drop it
    return text, st.st_mtime


def log_of(job: JobConfig) -> Path:
    """Where the job's output goes: its log_file, else the resume log trainguard writes
    (remediator.actions.launch.log_path: the same choice)."""
    from .actions.launch import log_path

    return log_path(job)[0]


def classify_log(job: JobConfig, limit: int = TAIL_BYTES) -> Failure | None:
    """The dead run's failure from the end of its log; None when there is no log."""
    path = log_of(job)
    got = read_tail(path, limit)
    if got is None:
        return None
    text, mtime = got
    f = classify(text, job.step_pattern)
    return Failure(f.cls, f.cause, f.line, f.what, f.todo, str(path), mtime)


def pattern(cause: str) -> Pattern:
    """The row with this id (KeyError when there is none)."""
    for p in PATTERNS:
        if p.cause == cause:
            return p
    raise KeyError(cause)

"""Step progress and completion, read incrementally from a training log.

Why incrementally: the exporter asks on every Prometheus scrape, and a week-long run's
log grows to gigabytes of tqdm redraws.  :class:`LogFollower` keeps its byte offset and
reads only what was appended; a ``stat`` that shows nothing new costs no ``open``.  On
first sight of a big log it reads only the last :data:`TAIL_BYTES` to find the current
step.  When the file shrinks below the offset (truncated, e.g. ``tee`` without ``-a``
starting a new run) or its inode changes (rotated, replaced) it starts over on the new
content; the last known step is kept (the next bar redraw corrects it within seconds)
but ``completed`` is cleared, because something new is writing.

What is a step line: tqdm redraws its bar with ``\\r`` and no newline, so lines are split
on both ``\\r`` and ``\\n``, and the unterminated tail (the bar being shown right now) is
parsed too.  Only the bar whose description is ``steps`` (any case) at the start of a line
counts: that is sd-scripts' training bar (``tqdm(..., desc="steps")``), the diffusers
examples' (``desc="Steps"``) and the tiny trainer's; a job's ``step_pattern`` replaces
it for other trainers.  Other bars are ignored on purpose: caching bars have no ``steps:`` desc,
sd-scripts' ``validation steps:`` bar counts validation batches, and ``epoch 1/16``
text lines count epochs; none of them is the global step the checkpoints record.

Completion: sd-scripts logs ``model saved.`` after writing the final weights, the last
thing a successful run does (``train_network.py``: save_state_on_train_end, save_model,
``logger.info("model saved.")``).  A run (re)starting in the same log clears it:
``running training`` (sd-scripts' start banner), ``resume training from local state``
(its resume message), or a ``steps`` bar going backwards.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from trainguard.config import JobConfig
from trainguard.script import ScriptError, flag_value, read_script

log = logging.getLogger(__name__)

TAIL_BYTES = 1 << 20          # first look at an existing log: its last 1 MiB
MAX_PARTIAL = 64 << 10        # an unterminated line longer than this keeps only its end
READ_CHUNK = 4 << 20          # at most this much per read() call
DEFAULT_OUTPUT_NAME = "last"  # sd-scripts' name when --output_name is not given

# "steps:  45%|████▌     | 162/360 [00:10<00:12, 1.2it/s, avr_loss=0.1]" (sd-scripts),
# "Steps:  45%|████▌     | 450/1000 [01:00<01:13, 7.5it/s, loss=0.1]" (diffusers examples)
STEP_PATTERN = r"^\s*steps:\s*\d+%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+|\?)"
_STEP_RE = re.compile(STEP_PATTERN, re.IGNORECASE)
_COMPLETED_RE = re.compile(r"(?:^|\s)model saved\.(?:\s|$)")
_START_RE = re.compile(r"running training|resume training from local state")
_SPLIT_RE = re.compile(rb"[\r\n]")


@dataclass(frozen=True)
class Progress:
    """What the log says now.

    ``last_progress`` is the wall-clock time the step last *changed* (for the step found
    on first opening an existing log: the file's mtime, the best estimate there is).
    ``completed`` means the completion marker was seen after the latest run start.
    ``run_started`` is when a run start was seen while following (None when unknown).
    """

    step: int | None
    total: int | None
    last_progress: float | None
    completed: bool
    lines_read: int
    run_started: float | None = None


class LogFollower:
    """Follows one log file; call :meth:`poll` as often as you like."""

    def __init__(self, path: Path, step_pattern: str | None = None) -> None:
        self.path = Path(path)
        self._step_re = _STEP_RE if step_pattern is None else re.compile(step_pattern)
        self.offset = 0               # next byte to read in the current file
        self.bytes_read = 0           # total bytes read over this follower's life
        self.reopened = 0             # truncations and rotations seen
        self._ident: tuple[int, int] | None = None   # (st_dev, st_ino) of the file read
        self._partial = b""
        self._step: int | None = None
        self._total: int | None = None
        self._last_progress: float | None = None
        self._completed = False
        self._lines = 0
        self._run_started: float | None = None

    @classmethod
    def for_job(cls, job: JobConfig) -> LogFollower | None:
        """A follower of the job's log with the job's step pattern; None without a log."""
        return None if job.log_file is None else cls(job.log_file, job.step_pattern)

    def poll(self, now: float | None = None) -> Progress:
        """Read what was appended since the last poll and return the current picture."""
        now = time.time() if now is None else now
        try:
            st = os.stat(self.path)
        except OSError:
            return self._progress()  # not there (yet, or mid-rotation): keep what we knew
        ident = (st.st_dev, st.st_ino)
        first_sight = self._ident is None
        if ident != self._ident or st.st_size < self.offset:
            if not first_sight:
                self.reopened += 1
                self._completed = False
                log.info("log %s was %s; reading it from the start", self.path,
                         "truncated" if ident == self._ident else "replaced")
            self._ident = ident
            self._partial = b""
            self.offset = 0
            if st.st_size > TAIL_BYTES:
                self.offset = st.st_size - TAIL_BYTES
        if st.st_size > self.offset:
            # Lines found while catching up on an existing file happened at mtime or before.
            when = min(st.st_mtime, now) if first_sight else now
            self._read(st.st_size, when, skip_first=first_sight and self.offset > 0)
        return self._progress()

    def _progress(self) -> Progress:
        return Progress(self._step, self._total, self._last_progress, self._completed,
                        self._lines, self._run_started)

    def _read(self, size: int, when: float, skip_first: bool) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                while self.offset < size:
                    chunk = f.read(min(READ_CHUNK, size - self.offset))
                    if not chunk:
                        break
                    self.offset += len(chunk)
                    self.bytes_read += len(chunk)
                    if skip_first:
                        # We landed mid-line after seeking to the tail: drop that fragment.
                        m = _SPLIT_RE.search(chunk)
                        if m is None:
                            continue
                        chunk = chunk[m.end():]
                        skip_first = False
                    self._feed(chunk, when)
        except OSError as exc:
            log.warning("cannot read log %s: %s", self.path, exc)

    def _feed(self, chunk: bytes, when: float) -> None:
        pieces = _SPLIT_RE.split(self._partial + chunk)
        partial = pieces.pop()
        for raw in pieces:
            if raw:
                self._lines += 1
                self._line(raw.decode("utf-8", "replace"), when, complete=True)
        if len(partial) > MAX_PARTIAL:
            partial = partial[-MAX_PARTIAL:]
        self._partial = partial
        if partial:
            # The bar on screen right now has no terminator until the next redraw.
            self._line(partial.decode("utf-8", "replace"), when, complete=False)

    def _line(self, text: str, when: float, complete: bool) -> None:
        m = self._step_re.search(text)
        if m is not None:
            if not complete and m.end() >= len(text.rstrip()):
                return  # a bar cut mid-write ("162/36"): wait for what follows the numbers
            try:
                step = int(m["step"])
            except (TypeError, ValueError):
                return  # a user pattern whose step group caught something else
            raw_total = m.groupdict().get("total")
            total = int(raw_total) if raw_total and raw_total.isdigit() else None
            if (self._step is not None and step < self._step) or self._completed:
                self._new_run(when)
            if step != self._step:
                self._last_progress = when
            self._step, self._total = step, total
            return
        if not complete:
            return
        if _COMPLETED_RE.search(text):
            self._completed = True
        elif _START_RE.search(text):
            self._new_run(when)

    def _new_run(self, when: float) -> None:
        self._completed = False
        self._run_started = when


# --------------------------------------------------------------------------- completion

_output_name_cache: dict[tuple[str, int, int], str] = {}


def output_name(job: JobConfig) -> str:
    """``--output_name`` from the job's launch script or command; sd-scripts' default otherwise.

    Cached by the script's (path, mtime, size): the exporter asks on every scrape.
    """
    launch = job.launch
    if launch is None:
        return DEFAULT_OUTPUT_NAME
    if launch.command is not None:
        return flag_value(launch.command, "--output_name") or DEFAULT_OUTPUT_NAME
    if launch.script is None:
        return DEFAULT_OUTPUT_NAME
    try:
        st = launch.script.stat()
    except OSError:
        return DEFAULT_OUTPUT_NAME
    key = (str(launch.script), st.st_mtime_ns, st.st_size)
    cached = _output_name_cache.get(key)
    if cached is None:
        try:
            cached = flag_value(read_script(launch.script).command, "--output_name")
        except ScriptError:
            cached = None
        cached = cached or DEFAULT_OUTPUT_NAME
        _output_name_cache[key] = cached
    return cached


def _newest_save(output_dir: Path, weights_name: str) -> float:
    """mtime of the newest intermediate save (state folder or other weights file)."""
    newest = 0.0
    try:
        entries = list(os.scandir(output_dir))
    except OSError:
        return newest
    for e in entries:
        if e.name == weights_name:
            continue
        if e.name.endswith("-state") or e.name.startswith("checkpoint-") \
                or e.name.endswith(".safetensors"):
            try:
                newest = max(newest, e.stat().st_mtime)
            except OSError:
                continue
    return newest


def job_completed(job: JobConfig, progress: Progress | None, process_alive: bool) -> bool:
    """Did the job's latest run finish normally?

    Yes when the log showed the completion marker after the latest start; or, once no
    process is alive, when the final weights ``{output_name}.safetensors`` exist and are
    newer than the latest start seen in the log and than every other save in output_dir
    (sd-scripts writes them last; a later run's saves mean a later run); or when the
    step reached the total and the process exited.  While a process is alive only the
    marker counts: old final weights from an earlier run prove nothing about this one.
    """
    if progress is not None and progress.completed:
        return True
    if process_alive:
        return False
    if progress is not None and progress.step is not None and progress.total \
            and progress.step >= progress.total:
        return True
    weights_name = f"{output_name(job)}.safetensors"
    try:
        weights_mtime = (job.output_dir / weights_name).stat().st_mtime
    except OSError:
        return False
    if progress is not None and progress.run_started is not None \
            and weights_mtime < progress.run_started:
        return False
    return weights_mtime >= _newest_save(job.output_dir, weights_name)

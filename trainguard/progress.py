"""Step progress, phases, rhythm and completion, read incrementally from a training log.

Why incrementally: the exporter asks on every Prometheus scrape, and a week-long run's
log grows to gigabytes of tqdm redraws.  :class:`LogFollower` keeps its byte offset and
reads only what was appended; a ``stat`` that shows nothing new costs no ``open``.  On
first sight of a big log it reads only the last :data:`TAIL_BYTES` to find the current
step.  When the file shrinks below the offset (truncated, e.g. ``tee`` without ``-a``
starting a new run) or its inode changes (rotated, replaced) it starts over on the new
content; the last known step is kept (the next bar redraw corrects it within seconds)
but ``completed`` is cleared, because something new is writing.

What the log holds is told apart by :mod:`trainguard.logparse` (bars, nested bars, rich
logger records wrapped over several lines, late ``print()`` lines); what it means by
:mod:`trainguard.phases`.

Steps: only the bar whose description is ``steps`` (any case) at the start of a line
counts by default: sd-scripts' training bar (``tqdm(..., desc="steps")``), the diffusers
examples' (``desc="Steps"``) and the tiny trainer's; a job's ``step_pattern`` replaces it
for other trainers.  A *nested* bar (drawn under another, ending with a cursor-up) never
counts: the HF Trainer's evaluation bar and sd-scripts' validation and sampling bars are
not the global step.  The bar on screen right now has no terminator yet; it is read at
once with the default pattern (no nested bar is called ``steps:``), but with a job's own
pattern only when it is the same bar (description and total) as the last finished redraw,
because tqdm writes a nested bar's cursor-up in a separate write that may not be there yet.

Runs: a log is shared by a run and its resumes.  A new run is a start line
(:data:`trainguard.phases.START_RE`) or the step bar going backwards; a start line while
the run it opened has not drawn its bar yet is the same run (sd-scripts logs ``preparing
accelerator``, then ``resume training from local state``, then its buffered banner
arrives with the bar).  Completion: ``model saved.`` (sd-scripts' last line).  sd-scripts
never closes its bar, so tqdm redraws it once more at exit, after ``model saved.``
(``tqdm.close`` from ``__del__``, which also flushes stdout first): a redraw that does not
go backwards keeps ``completed``.

True cumulative step: the diffusers examples and the HF Trainer count on from the step
they resumed at; sd-scripts does not (train_network.py, sd3 branch 48d368fa, ~1233-1357):
without ``--skip_until_initial_step`` it skips whole epochs and restarts ``global_step``
and its bar at 0; with it the bar still starts at 0 (its total shrinks).  The follower
learns the offset from the run's own logger lines, which arrive before its bar:

* ``skipping N steps`` (train_network.py:1265, only with ``--skip_until_initial_step``):
  the run continues after N optimizer steps, exactly.
* otherwise ``load train state from DIR/train_state.json: {'current_epoch', 'current_step'}``
  (:969): the run resumes at the start of an epoch after the state DIR.  If this follower saw
  that state being saved (``save train state to DIR/... at epoch E`` (:946) is logged as
  the save begins), the offset is the cumulative step it published at that moment: right
  after any number of resumes, and with ``--initial_epoch``, for epoch states (FluxGym's).
  If not (the exporter started later), ``current_step`` from the file: right for a state of
  a run that was itself not resumed, an undercount after that (sd-scripts' own count,
  issue 11); a mid-epoch step state resumed without ``--skip_until_initial_step`` restarts
  its epoch, so the step shown is ahead by the steps redone until that epoch ends.

``trainguard_job_step`` is that cumulative step and ``total`` the run's total (for a skipping
resume, whose bar total shrinks, the larger of it and the total before the resume).

Rhythm: per run, the gaps between step advances while training (a gap that spans another
phase is that phase's, not a step gap; the run's first step, warm-up included, is not a
sample), as the longest and the mean seconds per step; per job (kept across its runs: a
resume repeats its predecessor's work), the longest duration of each phase other than
training.  Only what was seen live is learned: lines read while catching up on an existing
file all carry its mtime.  Times are those of the poll that saw a line, so a gap is
overstated by up to one scrape interval: the safe direction for a threshold.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from trainguard import phases
from trainguard.config import JobConfig
from trainguard.logparse import Bar, LogParser, Plain, Record, compact
from trainguard.script import ScriptError, flag_value, read_script

log = logging.getLogger(__name__)

TAIL_BYTES = 1 << 20          # first look at an existing log: its last 1 MiB
MAX_PARTIAL = 64 << 10        # an unterminated line longer than this keeps only its end
READ_CHUNK = 4 << 20          # at most this much per read() call
DEFAULT_OUTPUT_NAME = "last"  # sd-scripts' name when --output_name is not given
MAX_SAVES_REMEMBERED = 1024   # state folders whose cumulative step at save time is kept

# "steps:  45%|████▌     | 162/360 [00:10<00:12, 1.2it/s, avr_loss=0.1]" (sd-scripts),
# "Steps:  45%|████▌     | 450/1000 [01:00<01:13, 7.5it/s, loss=0.1]" (diffusers examples)
STEP_PATTERN = r"^\s*steps:\s*\d+%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+|\?)"
_STEP_RE = re.compile(STEP_PATTERN, re.IGNORECASE)
_PIECE_RE = re.compile(rb"([^\r\n]*)([\r\n])")
_SPLIT_RE = re.compile(rb"[\r\n]")


@dataclass(frozen=True)
class Progress:
    """What the log says now.

    ``step`` is the true cumulative step (see the module docstring), ``run_step`` the bar's
    own count.  ``last_progress`` is the wall-clock time the step last *advanced* (for the
    step found on first opening an existing log: the file's mtime, the best estimate there
    is); a new run's first bar is not an advance, its first step is.  ``completed`` means
    the completion marker was seen after the latest run start.  ``run_started`` is when a
    run start was seen while following (None when unknown).  ``phase`` is one of
    :data:`trainguard.phases.PHASES` (None until a line says), since ``phase_started``.
    ``step_gap_max`` / ``step_seconds``: this run's longest gap between step advances and
    mean seconds per step (None until two advances were seen live); ``phase_max``: the
    longest duration of each finished phase other than training seen so far.
    """

    step: int | None
    total: int | None
    last_progress: float | None
    completed: bool
    lines_read: int
    run_started: float | None = None
    phase: str | None = None
    phase_started: float | None = None
    step_gap_max: float | None = None
    step_seconds: float | None = None
    phase_max: tuple[tuple[str, float], ...] = ()
    run_step: int | None = None


class LogFollower:
    """Follows one log file; call :meth:`poll` as often as you like."""

    def __init__(self, path: Path, step_pattern: str | None = None) -> None:
        self.path = Path(path)
        self._own_pattern = step_pattern is not None
        self._step_re = _STEP_RE if step_pattern is None else re.compile(step_pattern)
        self.offset = 0               # next byte to read in the current file
        self.bytes_read = 0           # total bytes read over this follower's life
        self.reopened = 0             # truncations and rotations seen
        self._ident: tuple[int, int] | None = None   # (st_dev, st_ino) of the file read
        self._missing_seen = False    # polled before the log existed
        self._partial = b""
        self._parser = LogParser()
        self._after_newline = True
        self._live = False            # lines now read happened at the time given
        self._lines = 0
        # the step
        self._n: int | None = None           # the bar's own count
        self._offset = 0                     # cumulative = offset + bar count
        self._total: int | None = None
        self._total_floor: int | None = None
        self._bar_key: tuple[str, int | None] | None = None   # last finished step redraw
        self._last_progress: float | None = None
        self._completed = False
        # the run
        self._run_started: float | None = None
        self._run_open = False               # opened by a start line, bar not drawn yet
        self._pending_offset: int | None = None
        self._saves: dict[str, int] = {}     # compact state dir -> cumulative step at save
        self._fired: set[tuple[int, str]] = set()
        # phases and rhythm
        self._phase: str | None = None
        self._phase_started: float | None = None
        self._phase_live = False
        self._phase_max: dict[str, float] = {}
        self._gap_from: float | None = None
        self._gap_max: float | None = None
        self._gap_sum = 0.0
        self._gap_steps = 0

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
            self._missing_seen = True
            return self._progress()  # not there (yet, or mid-rotation): keep what we knew
        ident = (st.st_dev, st.st_ino)
        first_sight = self._ident is None
        # Catching up on a log that was there before us (its lines are as old as its mtime
        # at most, and teach no rhythm); one that appeared while we watched is being
        # written now.
        catch_up = first_sight and not self._missing_seen
        if ident != self._ident or st.st_size < self.offset:
            if not first_sight:
                self.reopened += 1
                self._completed = False
                log.info("log %s was %s; reading it from the start", self.path,
                         "truncated" if ident == self._ident else "replaced")
            self._ident = ident
            self._partial = b""
            self._parser = LogParser()
            self._after_newline = True
            self.offset = 0
            if st.st_size > TAIL_BYTES:
                self.offset = st.st_size - TAIL_BYTES
        if st.st_size > self.offset:
            self._live = not catch_up
            when = min(st.st_mtime, now) if catch_up else now
            self._read(st.st_size, when, skip_first=first_sight and self.offset > 0)
        return self._progress()

    def _progress(self) -> Progress:
        step = None if self._n is None else self._offset + self._n
        seconds = self._gap_sum / self._gap_steps if self._gap_steps else None
        return Progress(step, self._total, self._last_progress, self._completed, self._lines,
                        self._run_started, self._phase, self._phase_started, self._gap_max,
                        seconds, tuple(sorted(self._phase_max.items())), self._n)

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
                        chunk = chunk[m.start():]
                        skip_first = False
                        self._after_newline = False
                    self._feed(chunk, when)
        except OSError as exc:
            log.warning("cannot read log %s: %s", self.path, exc)

    def _feed(self, chunk: bytes, when: float) -> None:
        data = self._partial + chunk
        # Only up to the last terminator: _PIECE_RE tried at every offset of a long
        # unterminated tail would fail at each one, quadratic (a 64 KiB line cost 9 s).
        end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        for m in _PIECE_RE.finditer(data, 0, end):
            raw = m.group(1)
            if raw:
                self._lines += 1
                for event in self._parser.piece(raw.decode("utf-8", "replace"),
                                                self._after_newline):
                    self._event(event, when)
            self._after_newline = m.group(2) == b"\n"
        partial = data[end:]
        if len(partial) > MAX_PARTIAL:
            partial = partial[-MAX_PARTIAL:]
        self._partial = partial
        if partial:
            # The bar on screen right now has no terminator until the next redraw.
            bar = self._parser.tail(partial.decode("utf-8", "replace"))
            if bar is not None:
                self._step_text(bar.text, when, complete=False, bar=bar)

    # ------------------------------------------------------------------ events

    def _event(self, event: Bar | Record | Plain, when: float) -> None:
        if isinstance(event, Bar):
            if event.nested or not self._step_text(event.text, when, complete=True, bar=event):
                self._bar_phase(event, when)
        elif isinstance(event, Record):
            if not self._step_text(event.message, when, complete=True):
                self._record(event, when)
        elif not self._step_text(event.text, when, complete=True):
            if phases.COMPLETED_RE.search(event.text):
                self._complete(when)
            elif phases.START_RE.search(event.text.strip()):
                self._start(when)

    def _bar_phase(self, bar: Bar, when: float) -> None:
        # A finished run's bars draw once more at exit: that is no new phase.
        if self._phase != phases.FINISHED:
            self._enter(phases.bar_phase(bar.desc, bar.nested, self._phase), when)

    def _step_text(self, text: str, when: float, complete: bool, bar: Bar | None = None,
                   ) -> bool:
        """Handle ``text`` if it shows the step; True when it was a step line."""
        m = self._step_re.search(text)
        if m is None:
            return False
        if not complete:
            if m.end() >= len(text.rstrip()):
                return True  # a bar cut mid-write ("162/36"): wait for what follows
            if self._own_pattern and bar is not None and self._bar_key is not None \
                    and (bar.desc, bar.total) != self._bar_key:
                return True  # maybe a nested bar whose cursor-up is not written yet
        try:
            n = int(m["step"])
        except (TypeError, ValueError):
            return True  # a user pattern whose step group caught something else
        raw_total = m.groupdict().get("total")
        total = int(raw_total) if raw_total and raw_total.isdigit() else None
        if complete and bar is not None:
            self._bar_key = (bar.desc, bar.total)
        self._step(n, total, when)
        return True

    def _step(self, n: int, total: int | None, when: float) -> None:
        if self._run_open or self._n is None or n < self._n:
            if not self._run_open and self._n is not None:
                self._new_run(when)   # going backwards with no start line seen
            self._begin_counting(n, total, when)
            return
        advance = n - self._n
        self._n = n
        self._total = total if self._total_floor is None or total is None \
            else max(total, self._total_floor)
        if advance > 0:
            self._advanced(when)

    def _begin_counting(self, n: int, total: int | None, when: float) -> None:
        """The run's step bar is drawn: its offset is known by now (see the docstring)."""
        first_ever = self._n is None
        self._run_open = False
        self._offset = self._pending_offset or 0
        self._pending_offset = None
        self._total_floor = self._total if self._offset and self._total else None
        self._n = n
        self._total = total if self._total_floor is None or total is None \
            else max(total, self._total_floor)
        self._enter(phases.TRAINING, when)
        self._gap_from = None          # the first step (warm-up) is not a rhythm sample
        if first_ever:
            self._last_progress = when

    def _advanced(self, when: float) -> None:
        if self._phase != phases.TRAINING:
            self._enter(phases.TRAINING, when)
        elif self._gap_from is not None and self._live:
            gap = when - self._gap_from
            self._gap_max = gap if self._gap_max is None else max(self._gap_max, gap)
            self._gap_sum += gap
            self._gap_steps += 1
        self._gap_from = when
        self._last_progress = when

    def _record(self, record: Record, when: float) -> None:
        text = record.message

        def once(kind: str) -> bool:
            key = (record.serial, kind)
            if key in self._fired:
                return False
            self._fired.add(key)
            if len(self._fired) > 4096:
                self._fired = {k for k in self._fired if k[0] >= record.serial - 64}
            return True

        if phases.COMPLETED_RE.search(text):
            if once("completed"):
                self._complete(when)
            return
        if phases.START_RE.search(text) and once("start"):
            self._start(when)
        flat = compact(text)
        if (m := phases.SKIP_STEPS_RE.search(flat)) and once("skip"):
            self._pending_offset = int(m["n"])
        elif (m := phases.LOAD_STATE_RE.search(flat)) and once("load"):
            saved = self._saves.get(m["dir"])
            s = phases.STATE_STEP_RE.search(m["data"])
            if saved is not None:
                self._pending_offset = saved
            elif s is not None:
                self._pending_offset = int(s["n"])
        elif (m := phases.SAVE_STATE_RE.search(flat)) and once("save") \
                and self._n is not None:
            self._saves[m["dir"]] = self._offset + self._n
            while len(self._saves) > MAX_SAVES_REMEMBERED:
                del self._saves[next(iter(self._saves))]
        phase = phases.record_phase(text)
        if phase is not None and once("phase"):
            self._enter(phase, when)

    def _enter(self, phase: str | None, when: float) -> None:
        if phase is None or phase == self._phase:
            return
        if self._phase not in (None, phases.TRAINING, phases.FINISHED) \
                and self._phase_started is not None and self._phase_live and self._live:
            took = max(0.0, when - self._phase_started)
            self._phase_max[self._phase] = max(self._phase_max.get(self._phase, 0.0), took)
        self._phase, self._phase_started, self._phase_live = phase, when, self._live
        if phase != phases.TRAINING:
            self._gap_from = None    # a gap that spans another phase is not a step gap

    def _complete(self, when: float) -> None:
        self._completed = True
        self._enter(phases.FINISHED, when)

    def _start(self, when: float) -> None:
        # No phase here: a start line may be sd-scripts' late print() banner (flushed when
        # the first tqdm bar of the run is created, e.g. sampling before step 1); the start
        # records set the start-up phase through phases.RECORD_PHASES.
        if not self._run_open:
            self._new_run(when)
            self._run_open = True

    def _new_run(self, when: float) -> None:
        self._completed = False
        self._run_started = when
        self._pending_offset = None
        self._gap_from = None
        self._gap_max = None
        self._gap_sum = 0.0
        self._gap_steps = 0


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

"""Checkpoint collector: newest usable checkpoint, counts per status, save in progress.

One :class:`trainguard.checkpoint.CheckpointScanner` per job; a scan pays for what changed
(old folders are trusted from their own stat and re-checked in rotation, see its module
doc), and on top of that this collector rescans a job at most every
``exporter.checkpoint_rescan_seconds`` (a scrape in between is served from the last scan).

``/metrics`` answers at once even when a scan is long (the first scan of an output folder
holding 20,000 checkpoints takes seconds, past Prometheus' scrape timeout): a scrape
inspects for at most :data:`INLINE_SECONDS` in all; a scan not done by then goes on in one
background thread, and until it is done the job's series show its last finished scan (0
before the first) with ``trainguard_checkpoint_scan_in_progress`` 1.  The collector still
reports success 1 meanwhile: it works, it has not finished.  An error in a background
scan is reported by the next scrape (success 0, the message in the log).

Every job gets every series on every scrape: ``trainguard_checkpoints`` carries every
status label (0 when none), so a rule on ``{status="invalid"} > 0`` never sees a series
appear from nowhere; latest step and timestamp are 0 while no usable checkpoint exists.
``trainguard_checkpoint_writing`` is 1 while a save is in progress, which the alert rules
use to stay quiet: a save looks exactly like an idle hang (DESIGN.md §4).
``trainguard_checkpoint_latest_size_bytes`` is the newest usable checkpoint's bytes, from
the scanner's own stat pass (no walk of its own): what the next save will need, for
TrainingDiskLow.  It is taken with the scan that found that checkpoint, as the other
series are (a background scan may be using the scanner meanwhile).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.collectors.base import Scrape
from trainguard.checkpoint import CheckpointInfo, CheckpointScanner, Status
from trainguard.config import JobConfig

# How long one scrape may spend inspecting checkpoints, all jobs together, before the
# rest of a scan goes to the background (a steady scan takes milliseconds).
INLINE_SECONDS = 0.25


@dataclass
class _Job:
    name: str
    scanner: CheckpointScanner
    last: list[CheckpointInfo] | None = None  # the last finished scan
    size: int | None = None                   # its newest usable checkpoint's bytes
    at: float | None = None                   # when it finished (collector clock)
    busy: bool = False                        # the background thread has the scanner
    error: str | None = None                  # a background scan's failure, not reported yet


class CheckpointCollector:
    name = "checkpoint"

    def __init__(self, jobs: Sequence[JobConfig], *, rescan_seconds: float = 5.0,
                 writing_fresh_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic,
                 inline_seconds: float = INLINE_SECONDS) -> None:
        self._jobs = [_Job(j.name, CheckpointScanner(j.output_dir, writing_fresh_seconds))
                      for j in jobs]
        self._rescan = rescan_seconds
        self._clock = clock
        self._inline = inline_seconds
        self._lock = threading.Lock()   # guards the _Job fields and the queue
        self._queue: deque[_Job] = deque()
        self._worker: threading.Thread | None = None

    def _scan(self, job: _Job, deadline: float) -> tuple[list[CheckpointInfo] | None, bool]:
        """(checkpoints to report or None when none known yet, scan in progress)."""
        with self._lock:
            if job.busy:
                return job.last, True
            error, job.error = job.error, None
        if error is not None:
            raise OSError(error)
        now = self._clock()
        if job.last is not None and job.at is not None and now - job.at < self._rescan:
            return job.last, False
        infos = job.scanner.scan_until(deadline)
        if infos is None:
            self._background(job)
            return job.last, True
        job.last, job.at, job.size = infos, now, _latest_size(job.scanner, infos)
        return infos, False

    def _background(self, job: _Job) -> None:
        with self._lock:
            job.busy = True
            self._queue.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, daemon=True,
                                                name="checkpoint-scan")
                self._worker.start()

    def _work(self) -> None:
        """Finish queued scans, one at a time; exits when the queue is empty."""
        while True:
            with self._lock:
                if not self._queue:
                    self._worker = None
                    return
                job = self._queue.popleft()
            infos: list[CheckpointInfo] | None = None
            error: str | None = None
            size: int | None = None
            try:
                infos = job.scanner.scan()
                size = _latest_size(job.scanner, infos)
            except Exception as exc:  # reported by the next scrape; the thread goes on
                error = str(exc) if isinstance(exc, OSError) \
                    else f"{type(exc).__name__}: {exc}"
            with self._lock:
                if infos is not None:
                    job.last, job.at, job.size = infos, self._clock(), size
                job.error = error
                job.busy = False

    def collect(self, scrape: Scrape) -> Iterator[Metric]:
        jl = ["training_job"]
        step = GaugeMetricFamily("trainguard_checkpoint_latest_step",
                                 "Step of the newest usable checkpoint (by true "
                                 "progress); 0 when none.", labels=jl)
        stamp = GaugeMetricFamily("trainguard_checkpoint_latest_timestamp_seconds",
                                  "When the newest usable checkpoint was written; "
                                  "0 when none.", labels=jl)
        counts = GaugeMetricFamily("trainguard_checkpoints", "Checkpoints per status.",
                                   labels=["training_job", "status"])
        writing = GaugeMetricFamily("trainguard_checkpoint_writing",
                                    "1 while a checkpoint save is in progress.", labels=jl)
        scanning = GaugeMetricFamily("trainguard_checkpoint_scan_in_progress",
                                     "1 while the job's checkpoints are being scanned in "
                                     "the background; the other checkpoint series show "
                                     "the last finished scan meanwhile (0 before the "
                                     "first).", labels=jl)
        size = GaugeMetricFamily("trainguard_checkpoint_latest_size_bytes",
                                 "Bytes of the newest usable checkpoint (what the next save "
                                 "needs); 0 when none.", labels=jl)
        deadline = time.monotonic() + self._inline
        errors: list[str] = []
        for job in self._jobs:
            try:
                infos, busy = self._scan(job, deadline)
            except OSError as exc:  # one unreadable output_dir must not hide the others
                errors.append(f"{job.name}: {exc}")
                continue
            scanning.add_metric([job.name], 1.0 if busy else 0.0)
            # Furthest first (the scanner's order); the first usable one wins.
            latest: CheckpointInfo | None = None
            tally = dict.fromkeys(Status, 0)
            for info in infos or ():
                tally[info.status] += 1
                if latest is None and info.usable:
                    latest = info
            step.add_metric([job.name], float(latest.step or 0) if latest else 0.0)
            stamp.add_metric([job.name], latest.mtime if latest else 0.0)
            size.add_metric([job.name], float(job.size or 0) if latest else 0.0)
            for status, n in tally.items():
                counts.add_metric([job.name, status.value], float(n))
            writing.add_metric([job.name], 1.0 if tally[Status.WRITING] else 0.0)
        yield from (step, stamp, counts, writing, size, scanning)
        if errors:
            raise OSError("; ".join(errors))


def _latest_size(scanner: CheckpointScanner, infos: list[CheckpointInfo]) -> int | None:
    """Bytes of the newest usable checkpoint of a scan just finished by ``scanner``."""
    latest = next((i for i in infos if i.usable), None)
    return scanner.size(latest) if latest is not None else None

"""Checkpoint collector: newest usable checkpoint, counts per status, save in progress.

One :class:`trainguard.checkpoint.CheckpointScanner` per job; it re-inspects only the
folders whose stat changed, and on top of that this collector rescans a job at most every
``exporter.checkpoint_rescan_seconds`` (a scrape in between is served from the last
scan), so 200 checkpoints of 10 jobs cost nothing on most scrapes.

Every job gets every series on every scrape: ``trainguard_checkpoints`` carries every
status label (0 when none), so a rule on ``{status="invalid"} > 0`` never sees a series
appear from nowhere; latest step and timestamp are 0 while no usable checkpoint exists.
``trainguard_checkpoint_writing`` is 1 while a save is in progress, which the alert rules
use to stay quiet: a save looks exactly like an idle hang (DESIGN.md §4).
``trainguard_checkpoint_latest_size_bytes`` is the newest usable checkpoint's bytes, from
the scanner's own stat pass (no walk of its own): what the next save will need, for
TrainingDiskLow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.collectors.base import Scrape
from trainguard.checkpoint import CheckpointInfo, CheckpointScanner, Status
from trainguard.config import JobConfig


class CheckpointCollector:
    name = "checkpoint"

    def __init__(self, jobs: Sequence[JobConfig], *, rescan_seconds: float = 5.0,
                 writing_fresh_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._jobs = [j.name for j in jobs]
        self._scanners = {j.name: CheckpointScanner(j.output_dir, writing_fresh_seconds)
                          for j in jobs}
        self._rescan = rescan_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, list[CheckpointInfo]]] = {}

    def _scan(self, job: str) -> list[CheckpointInfo]:
        now = self._clock()
        cached = self._cache.get(job)
        if cached is not None and now - cached[0] < self._rescan:
            return cached[1]
        infos = self._scanners[job].scan()
        self._cache[job] = (now, infos)
        return infos

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
        size = GaugeMetricFamily("trainguard_checkpoint_latest_size_bytes",
                                 "Bytes of the newest usable checkpoint (what the next save "
                                 "needs); 0 when none.", labels=jl)
        errors: list[str] = []
        for job in self._jobs:
            try:
                infos = self._scan(job)
            except OSError as exc:  # one unreadable output_dir must not hide the others
                errors.append(f"{job}: {exc}")
                continue
            # Furthest first (the scanner's order); the first usable one wins.
            latest = next((i for i in infos if i.usable), None)
            step.add_metric([job], float(latest.step or 0) if latest else 0.0)
            stamp.add_metric([job], latest.mtime if latest else 0.0)
            nbytes = self._scanners[job].size(latest) if latest else None
            size.add_metric([job], float(nbytes or 0))
            for status in Status:
                counts.add_metric([job, status.value],
                                  float(sum(1 for i in infos if i.status is status)))
            busy = any(i.status is Status.WRITING for i in infos)
            writing.add_metric([job], 1.0 if busy else 0.0)
        yield from (step, stamp, counts, writing, size)
        if errors:
            raise OSError("; ".join(errors))

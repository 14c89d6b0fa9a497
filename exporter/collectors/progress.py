"""Progress collector: step, phase and rhythm from each job's log, and completion.

One :class:`trainguard.progress.LogFollower` per job with a ``log_file``, polled on every
scrape; it reads only what was appended since the last poll, so a multi-gigabyte log
costs nothing once caught up.  ``trainguard_job_completed`` is present for every job
(it also needs the process liveness the scrape shares); step, total and last progress
are omitted until the log has shown a step (HACKING.md), because 0 would read as "the
run went back to step 0".  The phase series are omitted until the log has shown a phase,
and the rhythm series until it was measured: the rules then fall back to their fixed
thresholds, exactly as for a job without a log (FluxGym started from its web UI).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.collectors.base import Scrape
from trainguard.config import JobConfig
from trainguard.phases import PHASES
from trainguard.progress import LogFollower, Progress, job_completed


class ProgressCollector:
    name = "progress"

    def __init__(self, jobs: Sequence[JobConfig],
                 clock: Callable[[], float] = time.time) -> None:
        self._jobs = list(jobs)
        self._clock = clock   # a test's clock: rhythms are durations between scrapes
        self._followers = {j.name: f for j in jobs
                           if (f := LogFollower.for_job(j)) is not None}

    def collect(self, scrape: Scrape) -> Iterator[Metric]:
        jl = ["training_job"]
        step = GaugeMetricFamily("trainguard_job_step",
                                 "Latest training step shown in the job's log.", labels=jl)
        total = GaugeMetricFamily("trainguard_job_total_steps",
                                  "Total steps of the run, as the log says.", labels=jl)
        last = GaugeMetricFamily("trainguard_job_last_progress_timestamp_seconds",
                                 "When the step last advanced.", labels=jl)
        followed = GaugeMetricFamily("trainguard_job_log_followed",
                                     "1 when the job has a log the exporter follows (its step "
                                     "and phase can be known), 0 without one.", labels=jl)
        done = GaugeMetricFamily("trainguard_job_completed",
                                 "1 once the job's latest run finished normally.", labels=jl)
        phase = GaugeMetricFamily("trainguard_job_phase",
                                  "1 for the phase the job's log says it is in, 0 for the others.",
                                  labels=[*jl, "phase"])
        phase_start = GaugeMetricFamily("trainguard_job_phase_start_timestamp_seconds",
                                        "When the current phase began.", labels=jl)
        phase_max = GaugeMetricFamily("trainguard_job_phase_max_duration_seconds",
                                      "Longest finished occurrence of each phase seen so far "
                                      "(the job's runs together).", labels=[*jl, "phase"])
        gap_max = GaugeMetricFamily("trainguard_job_step_gap_max_seconds",
                                    "Longest gap between two steps while training, this run.",
                                    labels=jl)
        gap_typical = GaugeMetricFamily("trainguard_job_step_gap_typical_seconds",
                                        "Mean seconds per step while training, this run.",
                                        labels=jl)
        now = self._clock()
        procs = scrape.processes()
        errors: list[str] = []
        for job in self._jobs:
            progress: Progress | None = None
            follower = self._followers.get(job.name)
            if follower is not None:
                try:
                    progress = follower.poll(now)
                except OSError as exc:  # one unreadable log must not hide the others
                    errors.append(f"{job.name}: {exc}")
            if progress is not None and progress.step is not None:
                step.add_metric([job.name], float(progress.step))
                if progress.total is not None:
                    total.add_metric([job.name], float(progress.total))
                if progress.last_progress is not None:
                    last.add_metric([job.name], progress.last_progress)
            if progress is not None and progress.phase is not None:
                for name in PHASES:
                    phase.add_metric([job.name, name], 1.0 if name == progress.phase else 0.0)
                if progress.phase_started is not None:
                    phase_start.add_metric([job.name], progress.phase_started)
            if progress is not None:
                for name, seconds in progress.phase_max:
                    phase_max.add_metric([job.name, name], seconds)
                if progress.step_gap_max is not None:
                    gap_max.add_metric([job.name], progress.step_gap_max)
                if progress.step_seconds is not None:
                    gap_typical.add_metric([job.name], progress.step_seconds)
            followed.add_metric([job.name], 0.0 if follower is None else 1.0)
            alive = any(p.alive for p in procs.get(job.name, ()))
            done.add_metric([job.name], 1.0 if job_completed(job, progress, alive) else 0.0)
        yield from (step, total, last, done, followed, phase, phase_start, phase_max, gap_max,
                    gap_typical)
        if errors:
            raise OSError("; ".join(errors))

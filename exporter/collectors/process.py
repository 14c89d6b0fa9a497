"""Process collector: is each configured job's process tree alive, how big, since when.

Every configured job gets all three series on every scrape (0 when nothing runs), so
``TrainingProcessDown`` can tell "the job died" from "the exporter is gone".  Zombies are
not counted: they have exited and only wait to be reaped.  The start time is the oldest
live process's, i.e. when the current run (or resume) began; rules use it for the
start-up grace, together with ``trainguard_job_startup_grace_seconds``: the job's own
grace from the config, published only for jobs that set one (the rules otherwise use
their global tunable).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.collectors.base import Scrape


class ProcessCollector:
    name = "process"

    def __init__(self, jobs: Sequence[str], grace: Mapping[str, float] | None = None) -> None:
        self._jobs = list(jobs)
        self._grace = dict(grace or {})  # job -> configured start-up grace (seconds)

    def collect(self, scrape: Scrape) -> Iterator[Metric]:
        jl = ["training_job"]
        up = GaugeMetricFamily("trainguard_job_process_up",
                               "1 while any process of the job lives.", labels=jl)
        count = GaugeMetricFamily("trainguard_job_processes",
                                  "Live processes of the job (launcher tree).", labels=jl)
        start = GaugeMetricFamily("trainguard_job_process_start_time_seconds",
                                  "Start time of the job's oldest live process "
                                  "(0 when none).", labels=jl)
        procs = scrape.processes()
        for job in self._jobs:
            live = [p for p in procs.get(job, ()) if p.alive]
            up.add_metric([job], 1.0 if live else 0.0)
            count.add_metric([job], float(len(live)))
            start.add_metric([job], min((p.create_time for p in live), default=0.0))
        grace = GaugeMetricFamily("trainguard_job_startup_grace_seconds",
                                  "The job's configured start-up grace.", labels=jl)
        for job, seconds in self._grace.items():
            grace.add_metric([job], seconds)
        yield from (up, count, start, grace)

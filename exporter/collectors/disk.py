"""Disk collector: free bytes on each job's output filesystem.

``trainguard_job_filesystem_avail_bytes{training_job}``: what an unprivileged writer can
still write where the job saves (trainguard.disk.available_bytes: ``df``'s "Available",
the nearest existing ancestor for an output folder not made yet).  With
``trainguard_checkpoint_latest_size_bytes`` the rules warn before a save that will not
fit (TrainingDiskLow): a full disk during a save is one of the seed's causes of
half-written checkpoints.  One ``statvfs`` per job per scrape: microseconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.collectors.base import Scrape
from trainguard.config import JobConfig
from trainguard.disk import available_bytes


class DiskCollector:
    name = "disk"

    def __init__(self, jobs: Sequence[JobConfig]) -> None:
        self._jobs = [(j.name, j.output_dir) for j in jobs]

    def collect(self, scrape: Scrape) -> Iterator[Metric]:
        avail = GaugeMetricFamily("trainguard_job_filesystem_avail_bytes",
                                  "Free bytes for an unprivileged writer on the filesystem "
                                  "of the job's output_dir.", labels=["training_job"])
        errors: list[str] = []
        for job, folder in self._jobs:
            try:
                avail.add_metric([job], float(available_bytes(folder)))
            except OSError as exc:  # one unreadable folder must not hide the others
                errors.append(f"{job}: {exc}")
        yield avail
        if errors:
            raise OSError("; ".join(errors))

"""The collector framework: node_exporter's model on top of client_python custom collectors.

* Each collector (one per module beside this one) yields metric families built fresh on
  every scrape; nothing is kept in global gauges that could go stale.
* :class:`CollectorSet` is the one object registered in our own ``CollectorRegistry``.
  Per scrape it builds a :class:`Scrape` context, runs every collector with it and adds
  ``trainguard_collector_success{collector}`` and
  ``trainguard_collector_duration_seconds{collector}``.  A collector that raises keeps
  the families it yielded before the error (as node_exporter keeps what a failing
  collector sent), reports success 0, and never fails the scrape or the process.
* The :class:`Scrape` context computes data several collectors need, once per scrape:
  the job -> processes map is used by the process collector (up/count), the GPU
  collector (which GPUs a job holds) and the progress collector (completion needs
  liveness), and walking ``/proc`` three times per scrape would triple its cost.
* Scrapes are serialised by a lock: the log followers and checkpoint caches the
  collectors keep are not thread-safe, and two Prometheus servers scraping at once
  must not interleave reads of one log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

from trainguard import __version__
from trainguard.process import JobProcess

log = logging.getLogger(__name__)

ProcessSource = Callable[[], dict[str, list[JobProcess]]]


class Scrape:
    """What one scrape shares between collectors, computed lazily and at most once."""

    def __init__(self, processes: ProcessSource) -> None:
        self._process_source = processes
        self._processes: dict[str, list[JobProcess]] | None = None
        self._process_error: Exception | None = None
        self.started = time.time()

    def processes(self) -> dict[str, list[JobProcess]]:
        """``{job: [its processes]}``; a failure is raised again to every caller."""
        if self._process_error is not None:
            raise self._process_error
        if self._processes is None:
            try:
                self._processes = self._process_source()
            except Exception as exc:
                self._process_error = exc
                raise
        return self._processes


class Collector(Protocol):
    """One source of metrics.  ``name`` is the ``collector`` label value."""

    name: str

    def collect(self, scrape: Scrape) -> Iterator[Metric]: ...


class CollectorSet:
    """Runs the collectors for a scrape; the only thing in the exporter's registry."""

    def __init__(self, collectors: Sequence[Collector], processes: ProcessSource) -> None:
        self._collectors = list(collectors)
        self._processes = processes
        self._lock = threading.Lock()
        self._failing: dict[str, str | None] = {c.name: None for c in self._collectors}

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return self._collect_locked()

    def _collect_locked(self) -> list[Metric]:
        scrape = Scrape(self._processes)
        out: list[Metric] = []
        success = GaugeMetricFamily(
            "trainguard_collector_success",
            "1 if the collector's last scrape worked, 0 if it failed.", labels=["collector"])
        duration = GaugeMetricFamily(
            "trainguard_collector_duration_seconds",
            "How long the collector took in this scrape.", labels=["collector"])
        for collector in self._collectors:
            start = time.perf_counter()
            error: str | None = None
            try:
                for family in collector.collect(scrape):
                    out.append(family)
            except Exception as exc:  # one failing collector never fails the scrape
                error = f"{type(exc).__name__}: {exc}"
            success.add_metric([collector.name], 0.0 if error else 1.0)
            duration.add_metric([collector.name], time.perf_counter() - start)
            self._note(collector.name, error)
        # Labels only through ``value``: passing value={} as well as add_metric() would
        # serve a second, unlabelled ``trainguard_exporter_build_info 1``.
        build = InfoMetricFamily("trainguard_exporter_build",
                                 "The trainguard exporter's version.",
                                 value={"version": __version__})
        out.extend([success, duration, build])
        return out

    def _note(self, name: str, error: str | None) -> None:
        """Log state changes only: a broken driver must not write a line per scrape."""
        before = self._failing.get(name)
        if error and error != before:
            log.warning("collector %s failing: %s (its other series are still served; "
                        "trainguard_collector_success{collector=%r} is 0)", name, error, name)
        elif before and not error:
            log.info("collector %s recovered", name)
        self._failing[name] = error

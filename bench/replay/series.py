"""Scrape a timeline the way Prometheus scrapes the exporter, every 15 s.

The progress series are the real exporter's: the log text the timeline writes is appended
to a real file and read by the real :class:`exporter.collectors.progress.ProgressCollector`
(its follower, phases and rhythm) at each scrape time.  The process, GPU and checkpoint
series are what those collectors would publish for the timeline's host facts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from helpers.upstream_log import UpstreamLog
from prometheus_client.core import Metric

from exporter.collectors.base import CollectorSet
from exporter.collectors.progress import ProgressCollector
from replay.timeline import LIMIT_W, Timeline
from trainguard.config import JobConfig
from trainguard.process import JobProcess

SCRAPE = 15.0
JOB = "lora"
TARGET = {"instance": "127.0.0.1:9842", "job": "trainguard-exporter"}

Series = dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, float]]


def scrape(tl: Timeline, folder: Path, end: float, log: bool = True,
           step_pattern: str | None = None) -> tuple[Series, int]:
    """Every scrape until ``end``: ``{(metric, labels): {scrape index: value}}``, count."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    logfile = folder / "train.log"
    logfile.write_bytes(b"")
    job = JobConfig(name=JOB, output_dir=folder, log_file=logfile if log else None,
                    step_pattern=step_pattern)
    up = UpstreamLog(clock=0.0)
    now = [0.0]

    def processes() -> dict[str, list[JobProcess]]:
        if not tl.alive(now[0]):
            return {JOB: []}
        return {JOB: [JobProcess(4242, 1, tl.start_time(now[0]), ("python",), "running")]}

    collectors = CollectorSet([ProgressCollector([job], clock=lambda: now[0])], processes)
    events = sorted(tl.events, key=lambda e: e[0])
    series: Series = {}
    done = 0
    count = int(end // SCRAPE) + 1
    for i in range(count):
        t = now[0] = i * SCRAPE
        while done < len(events) and events[done][0] <= t:
            up.clock = events[done][0]
            events[done][1](up)
            done += 1
        for when, name in tl.files:
            if when <= t and not (folder / name).exists():
                (folder / name).write_bytes(b"weights")
        with open(logfile, "ab") as f:
            f.write(up.take())
        for metric in collectors.collect():
            for name, labels, value in _samples(metric):
                if name.startswith("trainguard_job_"):
                    series.setdefault((name, labels), {})[i] = value
        for name, labels, value in _host(tl, t):
            series.setdefault((name, labels), {})[i] = value
    return series, count


def _samples(metric: Metric) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
    for s in metric.samples:
        yield s.name, tuple(sorted(s.labels.items())), s.value


def _host(tl: Timeline, t: float) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
    yield "up", (), 1.0     # the exporter is scraped throughout
    job = (("training_job", JOB),)
    alive = tl.alive(t)
    yield "trainguard_job_process_up", job, 1.0 if alive else 0.0
    yield "trainguard_job_process_start_time_seconds", job, tl.start_time(t)
    yield "trainguard_checkpoint_writing", job, 1.0 if alive and tl.is_writing(t) else 0.0
    gpu = tl.gpu_at(t)
    yield "trainguard_job_gpus", job, 1.0 if gpu else 0.0
    if gpu is not None:
        util, watts = gpu
        yield "trainguard_job_gpu_utilization_ratio", job, util
        yield "trainguard_job_gpu_power_watts", job, watts
        yield "trainguard_job_gpu_power_limit_watts", job, LIMIT_W


def promtool_values(points: dict[int, float], count: int) -> str:
    """promtool's expanding notation, written out: one value or ``_`` per scrape."""
    return " ".join(_fmt(points[i]) if i in points else "_" for i in range(count))


def _fmt(v: float) -> str:
    return str(int(v)) if v == int(v) else repr(v)


def series_selector(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    lbl = {**TARGET, **dict(labels)}
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(lbl.items()))
    return f"{name}{{{inner}}}"

"""GPU collector: every GPU's NVML readings, and which GPUs each job's processes hold.

Per GPU (labels gpu=index, uuid): utilization, memory used/total, power, power limit,
temperature, plus ``trainguard_gpu_info``.  A value the board does not support is left
out rather than reported as 0 (0 W would read as "idle").

Per job, the attribution rules need: a job holds a GPU when one of NVML's compute
processes on it is one of the job's processes (the launcher tree from
:class:`trainguard.process.ProcessMatcher`).  On the GPUs it holds: utilization is the
mean, power and power limit the sums (so rules can compare power to the limit, DESIGN.md
§4: a spinning hang is 100 % busy at idle power), memory the sum of what the job's own
processes hold (NVML's per-process figure; the GPU's total use where NVML cannot say),
so two jobs sharing a GPU are not both charged for it.

Containers (RunPod and the like) break the pid match: NVML reports host pids, which the
container cannot see.  Two remedies, in order: a job's configured ``gpus`` (indexes,
UUIDs or ``all``) are its GPUs whatever NVML's process list says; and when NVML's
compute processes on a GPU are all invisible in this pid namespace, nobody claims that
GPU, and exactly one job has live processes, that GPU is the job's (the single-run pod,
the common case).  With two live jobs and invisible pids nothing is guessed.

``trainguard_job_gpus`` is present for every job (0 when it holds none, or on a host
without GPUs); the others only while the job holds a GPU.

No NVML library at all is a normal host, not a failure: no GPU series, success 1.
NVML present but failing makes this collector fail (success 0) while every other
collector still reports; one lost GPU is left out, the others reported, success 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import psutil
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.collectors.base import Scrape
from exporter.nvml import GpuReading, GpuSnapshot, NvmlSession


class GpuErrors(Exception):
    """Some GPUs could not be read; the rest were reported."""


def _gauge(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class GpuCollector:
    name = "gpu"

    def __init__(self, jobs: Sequence[str], session: NvmlSession | None = None,
                 assigned: Mapping[str, Sequence[str]] | None = None) -> None:
        self._jobs = list(jobs)
        self.session = session or NvmlSession()
        # job -> configured GPUs (indexes or UUIDs as strings, or "all")
        self._assigned = {job: frozenset(gpus) for job, gpus in (assigned or {}).items()}

    def collect(self, scrape: Scrape) -> Iterator[Metric]:
        snap = self.session.read()
        yield from self._per_gpu(snap)
        yield from self._per_job(snap, scrape)
        if snap.errors:
            raise GpuErrors("; ".join(snap.errors))

    def _per_gpu(self, snap: GpuSnapshot) -> Iterator[Metric]:
        gl = ["gpu", "uuid"]
        info = _gauge("trainguard_gpu_info", "1 per GPU NVML reports.", ["gpu", "uuid", "name"])
        fams: list[tuple[GaugeMetricFamily, str]] = [
            (_gauge("trainguard_gpu_utilization_ratio",
                    "Fraction of the last sample window in which any kernel ran (NVML).",
                    gl), "utilization"),
            (_gauge("trainguard_gpu_memory_used_bytes", "GPU memory in use.", gl),
             "memory_used"),
            (_gauge("trainguard_gpu_memory_total_bytes", "GPU memory in all.", gl),
             "memory_total"),
            (_gauge("trainguard_gpu_power_watts", "Power draw.", gl), "power_watts"),
            (_gauge("trainguard_gpu_power_limit_watts", "Enforced power limit.", gl),
             "power_limit_watts"),
            (_gauge("trainguard_gpu_temperature_celsius", "GPU core temperature.", gl),
             "temperature_celsius"),
        ]
        for g in snap.gpus:
            labels = [str(g.index), g.uuid]
            info.add_metric([*labels, g.name], 1.0)
            for fam, attr in fams:
                value = getattr(g, attr)
                if value is not None:
                    fam.add_metric(labels, float(value))
        yield info
        for fam, _ in fams:
            yield fam

    def _per_job(self, snap: GpuSnapshot, scrape: Scrape) -> Iterator[Metric]:
        jl = ["training_job"]
        count = _gauge("trainguard_job_gpus", "How many GPUs the job's processes hold.", jl)
        held = _gauge("trainguard_job_gpu", "1 per GPU the job's processes hold.",
                      ["training_job", "gpu", "uuid"])
        util = _gauge("trainguard_job_gpu_utilization_ratio",
                      "Mean utilization of the GPUs the job holds.", jl)
        mem = _gauge("trainguard_job_gpu_memory_used_bytes",
                     "GPU memory held by the job's processes.", jl)
        power = _gauge("trainguard_job_gpu_power_watts",
                       "Summed power draw of the GPUs the job holds.", jl)
        limit = _gauge("trainguard_job_gpu_power_limit_watts",
                       "Summed power limits of the GPUs the job holds.", jl)
        # Only walk /proc-derived data when some GPU has a compute process at all.
        busy = any(g.processes for g in snap.gpus)
        procs = scrape.processes() if busy or self._assigned else {}
        live = {job: {p.pid for p in procs.get(job, ()) if p.alive} for job in self._jobs}
        owned = {job: [g for g in snap.gpus if self._configured(job, g)
                       or live[job].intersection(g.processes)] for job in self._jobs}
        self._adopt_invisible(snap, live, owned)
        for job in self._jobs:
            pids = live[job]
            gpus = owned[job]
            count.add_metric([job], float(len(gpus)))
            if not gpus:
                continue
            for g in gpus:
                held.add_metric([job, str(g.index), g.uuid], 1.0)
            utils = [g.utilization for g in gpus if g.utilization is not None]
            if utils:
                util.add_metric([job], sum(utils) / len(utils))
            mem.add_metric([job], float(sum(_job_memory(g, pids) for g in gpus)))
            powers = [g.power_watts for g in gpus if g.power_watts is not None]
            if powers:
                power.add_metric([job], sum(powers))
            limits = [g.power_limit_watts for g in gpus if g.power_limit_watts is not None]
            if limits:
                limit.add_metric([job], sum(limits))
        yield from (count, held, util, mem, power, limit)


    def _configured(self, job: str, g: GpuReading) -> bool:
        mine = self._assigned.get(job, frozenset())
        return "all" in mine or str(g.index) in mine or g.uuid in mine

    def _adopt_invisible(self, snap: GpuSnapshot, live: Mapping[str, set[int]],
                         owned: dict[str, list[GpuReading]]) -> None:
        """Give GPUs whose compute pids this namespace cannot see to the only live job."""
        running = [job for job in self._jobs if live[job]]
        if len(running) != 1:
            return
        claimed = {g.index for gpus in owned.values() for g in gpus}
        for g in snap.gpus:
            if g.index in claimed or not g.processes:
                continue
            if not any(psutil.pid_exists(pid) for pid in g.processes):
                owned[running[0]].append(g)


def _job_memory(g: GpuReading, pids: set[int]) -> int:
    mine = [g.processes[p] for p in pids if p in g.processes]
    if any(m is None for m in mine):
        return g.memory_used or 0
    return sum(m for m in mine if m is not None)

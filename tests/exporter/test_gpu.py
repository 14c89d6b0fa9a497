"""The GPU collector through the real pynvml bindings over the fake libnvidia-ml."""

from __future__ import annotations

import os

import pynvml
import pytest
from exporter_testlib import metrics_of, value
from helpers.fakenvml import FakeGPUs

from exporter.collectors.base import CollectorSet, Scrape
from exporter.collectors.gpu import GpuCollector
from exporter.collectors.process import ProcessCollector
from exporter.nvml import NvmlSession
from trainguard.process import JobProcess


def proc(pid: int, status: str = "sleeping") -> JobProcess:
    return JobProcess(pid=pid, ppid=1, create_time=1000.0 + pid, cmdline=("python",),
                      status=status)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def session() -> object:
    s = NvmlSession(clock=Clock())
    yield s
    s.close()


def make_set(session: NvmlSession, jobs: dict[str, list[JobProcess]]) -> CollectorSet:
    names = list(jobs)
    return CollectorSet([ProcessCollector(names), GpuCollector(names, session)],
                        processes=lambda: jobs)


def test_per_gpu_values_in_base_units(fake_gpus: FakeGPUs, session: NvmlSession) -> None:
    fake_gpus.add(1, utilization=97, memory_used=8 << 30, power_mw=480500,
                  power_limit_mw=700000, temperature=61, name="NVIDIA H100 80GB HBM3")
    fake_gpus.add(1, utilization=3)
    m = metrics_of(make_set(session, {"a": []}))
    uuid0 = fake_gpus.read(0)["uuid"]
    g0 = {"gpu": "0", "uuid": uuid0}
    assert value(m, "trainguard_gpu_info", name="NVIDIA H100 80GB HBM3", **g0) == 1
    assert value(m, "trainguard_gpu_utilization_ratio", **g0) == pytest.approx(0.97)
    assert value(m, "trainguard_gpu_memory_used_bytes", **g0) == 8 << 30
    assert value(m, "trainguard_gpu_memory_total_bytes", **g0) == 80 << 30
    assert value(m, "trainguard_gpu_power_watts", **g0) == pytest.approx(480.5)
    assert value(m, "trainguard_gpu_power_limit_watts", **g0) == pytest.approx(700.0)
    assert value(m, "trainguard_gpu_temperature_celsius", **g0) == 61
    assert value(m, "trainguard_gpu_utilization_ratio", gpu="1",
                 uuid=fake_gpus.read(1)["uuid"]) == pytest.approx(0.03)
    assert value(m, "trainguard_collector_success", collector="gpu") == 1
    # Values are read fresh each scrape: the file changed, the metric follows.
    fake_gpus.update(0, utilization=0, power_mw=122000)
    m = metrics_of(make_set(session, {"a": []}))
    assert value(m, "trainguard_gpu_utilization_ratio", **g0) == 0
    assert value(m, "trainguard_gpu_power_watts", **g0) == pytest.approx(122.0)


def test_job_attribution_by_compute_process_pids(fake_gpus: FakeGPUs,
                                                 session: NvmlSession) -> None:
    fake_gpus.add(3, power_limit_mw=700000)
    fake_gpus.update(0, utilization=90, power_mw=400000, memory_used=30 << 30)
    fake_gpus.update(1, utilization=50, power_mw=200000, memory_used=20 << 30)
    fake_gpus.update(2, utilization=100, power_mw=124000, memory_used=10 << 30)
    # job a: worker pids 101 (gpu0) and 102 (gpu1); job b shares gpu1 with pid 201
    # and owns gpu2 only through a zombie (exited, so it holds nothing).
    fake_gpus.set_processes(0, {101: 20 << 30})
    fake_gpus.set_processes(1, {102: 5 << 30, 201: 7 << 30})
    fake_gpus.set_processes(2, {202: 10 << 30})
    jobs = {"a": [proc(100), proc(101), proc(102)],
            "b": [proc(200), proc(201), proc(202, status="zombie")],
            "idle": [proc(300)]}
    m = metrics_of(make_set(session, jobs))
    assert value(m, "trainguard_job_gpus", training_job="a") == 2
    assert value(m, "trainguard_job_gpu_utilization_ratio", training_job="a") == \
        pytest.approx((0.90 + 0.50) / 2)
    assert value(m, "trainguard_job_gpu_power_watts", training_job="a") == pytest.approx(600)
    assert value(m, "trainguard_job_gpu_power_limit_watts", training_job="a") == \
        pytest.approx(1400)
    assert value(m, "trainguard_job_gpu_memory_used_bytes", training_job="a") == 25 << 30
    held_a = {dict(lbl)["gpu"] for (n, lbl) in m
              if n == "trainguard_job_gpu" and dict(lbl)["training_job"] == "a"}
    assert held_a == {"0", "1"}
    assert value(m, "trainguard_job_gpus", training_job="b") == 1
    assert value(m, "trainguard_job_gpu_memory_used_bytes", training_job="b") == 7 << 30
    assert value(m, "trainguard_job_gpu_utilization_ratio", training_job="b") == \
        pytest.approx(0.5)
    assert value(m, "trainguard_job_gpus", training_job="idle") == 0
    assert value(m, "trainguard_job_gpu_utilization_ratio", training_job="idle") is None


def test_lost_gpu_fails_collector_but_keeps_the_others(fake_gpus: FakeGPUs,
                                                        session: NvmlSession) -> None:
    fake_gpus.add(2, utilization=40)
    cs = make_set(session, {"a": []})
    assert value(metrics_of(cs), "trainguard_collector_success", collector="gpu") == 1
    fake_gpus.lose(1)
    m = metrics_of(cs)
    assert value(m, "trainguard_collector_success", collector="gpu") == 0
    assert value(m, "trainguard_collector_success", collector="process") == 1
    assert value(m, "trainguard_gpu_utilization_ratio", gpu="0",
                 uuid=fake_gpus.read(0)["uuid"]) == pytest.approx(0.4)
    assert not [k for k in m if k[0] == "trainguard_gpu_info" and dict(k[1])["gpu"] == "1"]
    fake_gpus.update(1, lost=0)
    m = metrics_of(cs)
    assert value(m, "trainguard_collector_success", collector="gpu") == 1
    assert [k for k in m if k[0] == "trainguard_gpu_info" and dict(k[1])["gpu"] == "1"]


def test_driver_failure_then_recovery_with_backoff(fake_gpus: FakeGPUs) -> None:
    fake_gpus.add(1, utilization=10)
    clock = Clock()
    session = NvmlSession(clock=clock, min_backoff=5.0)
    try:
        cs = make_set(session, {"a": [proc(1)]})
        assert value(metrics_of(cs), "trainguard_collector_success", collector="gpu") == 1
        fake_gpus.fail_driver()
        m = metrics_of(cs)
        assert value(m, "trainguard_collector_success", collector="gpu") == 0
        assert value(m, "trainguard_job_process_up", training_job="a") == 1
        assert not [k for k in m if k[0].startswith("trainguard_gpu_")]
        fake_gpus.restore_driver()
        # Inside the backoff window NVML is not re-initialised, even though it would work.
        clock.t = 4.0
        assert value(metrics_of(cs), "trainguard_collector_success", collector="gpu") == 0
        clock.t = 5.5
        m = metrics_of(cs)
        assert value(m, "trainguard_collector_success", collector="gpu") == 1
        assert value(m, "trainguard_gpu_utilization_ratio", gpu="0",
                     uuid=fake_gpus.read(0)["uuid"]) == pytest.approx(0.1)
    finally:
        session.close()


def test_init_failure_at_start_is_a_failure_not_absence(fake_gpus: FakeGPUs,
                                                        session: NvmlSession) -> None:
    fake_gpus.add(1)
    fake_gpus.fail_driver()
    m = metrics_of(make_set(session, {"a": []}))
    assert value(m, "trainguard_collector_success", collector="gpu") == 0
    assert value(m, "trainguard_job_gpus", training_job="a") is None


def test_no_nvml_library_is_a_normal_host(monkeypatch: pytest.MonkeyPatch,
                                          session: NvmlSession) -> None:
    # The one way to make the library absent inside a process that may have loaded it.
    def no_library(name: str, *a: object, **k: object) -> object:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", no_library)
    m = metrics_of(make_set(session, {"a": [proc(os.getpid())]}))
    assert value(m, "trainguard_collector_success", collector="gpu") == 1
    assert value(m, "trainguard_job_gpus", training_job="a") == 0
    assert not [k for k in m if k[0].startswith("trainguard_gpu_")]


def test_scrape_shares_one_process_pass(fake_gpus: FakeGPUs, session: NvmlSession) -> None:
    fake_gpus.add(1, pids="5:1")
    calls = []

    def source() -> dict[str, list[JobProcess]]:
        calls.append(1)
        return {"a": [proc(5)]}

    cs = CollectorSet([ProcessCollector(["a"]), GpuCollector(["a"], session)],
                      processes=source)
    m = metrics_of(cs)
    assert value(m, "trainguard_job_gpus", training_job="a") == 1
    assert len(calls) == 1


def test_failing_process_source_is_reported_by_each_user() -> None:
    def broken() -> dict[str, list[JobProcess]]:
        raise PermissionError("no /proc")

    scrape = Scrape(broken)
    with pytest.raises(PermissionError):
        scrape.processes()
    with pytest.raises(PermissionError):
        scrape.processes()


# A pid no process here can have (above Linux's pid_max): how host pids look from
# inside a container, where NVML reports the host's pid namespace.
INVISIBLE = 99_999_999


def test_configured_gpus_belong_to_the_job_without_pids(fake_gpus: FakeGPUs,
                                                        session: NvmlSession) -> None:
    fake_gpus.add(2)
    fake_gpus.update(1, utilization=40, power_mw=300000)
    jobs = {"a": [proc(100)], "b": [proc(200)]}
    cs = CollectorSet([ProcessCollector(list(jobs)),
                       GpuCollector(list(jobs), session, {"a": ["1"], "b": ["all"]})],
                      processes=lambda: jobs)
    m = metrics_of(cs)
    assert value(m, "trainguard_job_gpus", training_job="a") == 1
    assert value(m, "trainguard_job_gpu", training_job="a", gpu="1",
                 uuid=fake_gpus.read(1)["uuid"]) == 1
    assert value(m, "trainguard_job_gpu_utilization_ratio", training_job="a") == \
        pytest.approx(0.40)
    assert value(m, "trainguard_job_gpus", training_job="b") == 2


def test_invisible_pids_go_to_the_only_live_job(fake_gpus: FakeGPUs,
                                                session: NvmlSession) -> None:
    fake_gpus.add(1, utilization=97, power_mw=480000)
    fake_gpus.set_processes(0, {INVISIBLE: 8 << 30})
    jobs = {"a": [proc(os.getpid())], "b": []}
    m = metrics_of(make_set(session, jobs))
    assert value(m, "trainguard_job_gpus", training_job="a") == 1
    assert value(m, "trainguard_job_gpus", training_job="b") == 0
    assert value(m, "trainguard_job_gpu_power_watts", training_job="a") == pytest.approx(480.0)


def test_invisible_pids_are_not_guessed_between_two_live_jobs(fake_gpus: FakeGPUs,
                                                              session: NvmlSession) -> None:
    fake_gpus.add(1, utilization=97)
    fake_gpus.set_processes(0, {INVISIBLE: 8 << 30})
    jobs = {"a": [proc(os.getpid())], "b": [proc(os.getppid())]}
    m = metrics_of(make_set(session, jobs))
    assert value(m, "trainguard_job_gpus", training_job="a") == 0
    assert value(m, "trainguard_job_gpus", training_job="b") == 0

"""The GPU collector against the REAL NVIDIA driver (no fake library anywhere).

Runs only with ``TRAINGUARD_REAL_NVML=1`` on a machine with a GPU (conftest deselects it
otherwise).  The exporter runs as its own process with this environment minus any
fake-NVML settings, so pynvml loads the driver's ``libnvidia-ml.so.1``:

    TRAINGUARD_REAL_NVML=1 .venv/bin/pytest tests/exporter -m gpu -q
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from exporter_testlib import ExporterProcess, series, value, write_config
from helpers.common import free_port, wait_for

pytestmark = pytest.mark.gpu


@pytest.fixture
def real_exporter(tmp_path: Path) -> Iterator[ExporterProcess]:
    (tmp_path / "out").mkdir()
    cfg = write_config(tmp_path / "c.yaml", [{"name": "j", "output_dir": "out"}])
    env = {k: v for k, v in os.environ.items() if k != "FAKE_NVML_DIR"}
    proc = ExporterProcess(cfg, free_port(), env, tmp_path / "exporter.log")
    wait_for(proc.ready, timeout=30, what="exporter")
    yield proc
    proc.stop()


def test_real_driver_values_flow_through(real_exporter: ExporterProcess) -> None:
    m = real_exporter.scrape()
    assert value(m, "trainguard_collector_success", collector="gpu") == 1, \
        real_exporter.log.read_text()
    info = series(m, "trainguard_gpu_info")
    assert len(info) > 0, "no GPU reported by the real driver"
    for labels in info:
        lab = dict(labels)
        g = {"gpu": lab["gpu"], "uuid": lab["uuid"]}
        assert lab["uuid"].startswith(("GPU-", "MIG-")) and lab["name"]
        util = value(m, "trainguard_gpu_utilization_ratio", **g)
        assert util is not None and 0.0 <= util <= 1.0
        power = value(m, "trainguard_gpu_power_watts", **g)
        assert power is not None and power > 0
        limit = value(m, "trainguard_gpu_power_limit_watts", **g)
        assert limit is not None and limit >= 50
        total = value(m, "trainguard_gpu_memory_total_bytes", **g)
        assert total is not None and total > 1 << 30
        used = value(m, "trainguard_gpu_memory_used_bytes", **g)
        assert used is not None and 0 <= used <= total
        temp = value(m, "trainguard_gpu_temperature_celsius", **g)
        assert temp is not None and 0 < temp < 120
    duration = value(m, "trainguard_collector_duration_seconds", collector="gpu")
    print(f"real NVML: {len(info)} GPU(s), gpu collector {duration * 1000:.2f} ms")  # type: ignore[operator]

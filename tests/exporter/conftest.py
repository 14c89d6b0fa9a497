"""Fixtures for the exporter's tests: the fake NVML, in this process or for a child.

``gpu``-marked tests need a real NVIDIA driver: they are deselected (not skipped) unless
``TRAINGUARD_REAL_NVML=1``, so a CI run without a GPU reports nothing it did not check.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.fakenvml import FakeGPUs, build_fake_nvml, load_in_process

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # for exporter_testlib
    sys.path.insert(0, str(HERE))


GPU_DESELECTED: list[str] = []  # node ids, for the note in the terminal summary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TRAINGUARD_REAL_NVML") == "1":
        return
    drop = [i for i in items
            if i.get_closest_marker("gpu") is not None and HERE in Path(i.path).parents]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if i not in drop]
        GPU_DESELECTED.extend(i.nodeid for i in drop)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say what "N deselected" in the last line is, so nobody wonders what was left out."""
    if GPU_DESELECTED:
        terminalreporter.write_line(
            f"note: {len(GPU_DESELECTED)} deselected = the gpu-marked test(s) "
            f"({', '.join(GPU_DESELECTED)}), which need a real NVIDIA driver; on a GPU "
            "machine run TRAINGUARD_REAL_NVML=1 pytest tests/exporter -m gpu")


@pytest.fixture(scope="session")
def fake_nvml_lib() -> Path:
    """The compiled fake ``libnvidia-ml.so.1`` (built once per session)."""
    return build_fake_nvml()


@pytest.fixture
def fake_gpus(tmp_path: Path, fake_nvml_lib: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGPUs]:
    """An empty fake machine that pynvml in *this* process reads; add GPUs with ``.add()``."""
    gpus = FakeGPUs(tmp_path / "gpus")
    monkeypatch.setenv("FAKE_NVML_DIR", str(gpus.root))
    load_in_process(gpus.root)
    yield gpus


"""Checkpoint collector over real accelerate state folders written by the tiny trainer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exporter_testlib import Samples, metrics_of, value
from helpers.common import TINY_TRAIN, wait_for

from exporter.collectors.base import CollectorSet
from exporter.collectors.checkpoint import CheckpointCollector
from trainguard.checkpoint import CheckpointScanner
from trainguard.config import JobConfig


@pytest.fixture(scope="module")
def real_states(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """t-step00000002-state, t-step00000004-state: real ``save_state`` output."""
    out = tmp_path_factory.mktemp("states")
    subprocess.run([sys.executable, str(TINY_TRAIN), "--output_dir", str(out),
                    "--max_train_steps", "5", "--save_every_n_steps", "2", "--save_state",
                    "--step_seconds", "0", "--output_name", "t"],
                   check=True, capture_output=True, timeout=120)
    return out


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_latest_counts_writing_and_throttle(real_states: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(real_states, out)
    jobs = [JobConfig(name="a", output_dir=out),
            JobConfig(name="empty", output_dir=tmp_path / "nothing-yet")]
    clock = Clock()
    cs = CollectorSet([CheckpointCollector(jobs, rescan_seconds=5.0, clock=clock)],
                      lambda: {})
    m = metrics_of(cs)
    usable = value(m, "trainguard_checkpoint_latest_step", training_job="a")
    assert usable == 5  # the end-of-training t-state holds step 5, newest
    assert value(m, "trainguard_checkpoint_latest_timestamp_seconds", training_job="a") == \
        pytest.approx(max(f.stat().st_mtime for f in (out / "t-state").iterdir()), abs=1e-3)
    assert value(m, "trainguard_checkpoints", training_job="a", status="valid") == 3
    assert value(m, "trainguard_checkpoint_writing", training_job="a") == 0
    for status in ("valid", "repairable", "invalid", "writing"):
        assert value(m, "trainguard_checkpoints", training_job="empty", status=status) == 0
    assert value(m, "trainguard_checkpoint_latest_step", training_job="empty") == 0
    assert value(m, "trainguard_collector_success", collector="checkpoint") == 1

    # A save in progress (no RNG file yet, fresh) and a cut model in an older one.
    shutil.rmtree(out / "t-state")
    half = out / "t-step00000006-state"
    shutil.copytree(out / "t-step00000004-state", half)
    (half / "random_states_0.pkl").unlink()
    model = out / "t-step00000002-state" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-100])
    old = time.time() - 3600  # cut long ago: broken, not a save in progress
    for f in [*model.parent.iterdir(), model.parent]:
        os.utime(f, (old, old))
    # Within the throttle window the last scan is served.
    assert value(metrics_of(cs), "trainguard_checkpoint_writing", training_job="a") == 0
    clock.t = 5.1
    m = metrics_of(cs)
    assert value(m, "trainguard_checkpoint_writing", training_job="a") == 1
    assert value(m, "trainguard_checkpoints", training_job="a", status="writing") == 1
    assert value(m, "trainguard_checkpoints", training_job="a", status="invalid") == 1
    assert value(m, "trainguard_checkpoints", training_job="a", status="valid") == 1
    assert value(m, "trainguard_checkpoint_latest_step", training_job="a") == 4


def test_a_long_scan_goes_on_in_the_background_and_metrics_answer_meanwhile(
        real_states: Path, tmp_path: Path) -> None:
    """A scan that does not fit a scrape's inspection budget (here: none at all) finishes
    in the background; meanwhile the scrape answers at once with the scan in progress,
    zeros for a job never scanned, and the collector still working.  Later scrapes show
    the last finished scan (with no budget at all, every scan is a background one)."""
    out = tmp_path / "out"
    shutil.copytree(real_states, out)
    jobs = [JobConfig(name="big", output_dir=out)]
    collector = CheckpointCollector(jobs, rescan_seconds=0.0, inline_seconds=0.0)
    cs = CollectorSet([collector], lambda: {})
    m = metrics_of(cs)
    assert value(m, "trainguard_checkpoint_scan_in_progress", training_job="big") == 1
    assert value(m, "trainguard_checkpoints", training_job="big", status="valid") == 0
    assert value(m, "trainguard_checkpoint_latest_step", training_job="big") == 0
    assert value(m, "trainguard_collector_success", collector="checkpoint") == 1

    def finished() -> Samples | None:
        m = metrics_of(cs)
        return m if value(m, "trainguard_checkpoints", training_job="big",
                          status="valid") else None

    m = wait_for(finished, timeout=60, what="the background scan")
    assert value(m, "trainguard_checkpoints", training_job="big", status="valid") == 3
    assert value(m, "trainguard_checkpoint_latest_step", training_job="big") == 5


def test_a_background_scan_that_fails_is_reported_by_the_next_scrape(
        real_states: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    shutil.copytree(real_states, out)
    collector = CheckpointCollector([JobConfig(name="big", output_dir=out)],
                                    rescan_seconds=0.0, inline_seconds=0.0)
    cs = CollectorSet([collector], lambda: {})

    def broken(self: object) -> list[object]:
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(CheckpointScanner, "scan", broken)
    assert value(metrics_of(cs), "trainguard_collector_success", collector="checkpoint") == 1
    m = wait_for(lambda: (m := metrics_of(cs)) and value(
        m, "trainguard_collector_success", collector="checkpoint") == 0 and m,
        timeout=30, what="the failure reported")
    assert value(m, "trainguard_collector_success", collector="checkpoint") == 0


def test_latest_size_comes_from_the_scanners_stat_pass(real_states: Path, tmp_path: Path
                                                       ) -> None:
    """trainguard_checkpoint_latest_size_bytes: the bytes of the newest usable state, kept
    in step with its files, without re-inspecting folders whose stat did not change."""
    out = tmp_path / "out"
    shutil.copytree(real_states, out)
    clock = Clock()
    collector = CheckpointCollector([JobConfig(name="a", output_dir=out),
                                     JobConfig(name="none", output_dir=tmp_path / "n")],
                                    rescan_seconds=0.0, clock=clock)
    cs = CollectorSet([collector], lambda: {})

    def files_of(state: str) -> int:
        return sum(f.stat().st_size for f in (out / state).rglob("*") if f.is_file())

    m = metrics_of(cs)
    assert value(m, "trainguard_checkpoint_latest_size_bytes", training_job="a") == \
        files_of("t-state")
    assert value(m, "trainguard_checkpoint_latest_size_bytes", training_job="none") == 0
    scanner = collector._jobs[0].scanner
    inspected = scanner.inspections
    metrics_of(cs)
    assert scanner.inspections == inspected  # nothing changed, nothing re-inspected
    extra = out / "t-state" / "notes.txt"
    extra.write_bytes(b"x" * 12345)
    m = metrics_of(cs)
    assert value(m, "trainguard_checkpoint_latest_size_bytes", training_job="a") == \
        files_of("t-state")
    assert scanner.inspections == inspected + 1
    shutil.rmtree(out / "t-state")
    m = metrics_of(cs)
    assert value(m, "trainguard_checkpoint_latest_size_bytes", training_job="a") == \
        files_of("t-step00000004-state")

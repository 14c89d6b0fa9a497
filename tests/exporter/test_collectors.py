"""Process and progress collectors against real processes and real log files."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from exporter_testlib import metrics_of, series, value
from helpers.common import SLEEPER, wait_for

from exporter.collectors.base import CollectorSet
from exporter.collectors.process import ProcessCollector
from exporter.collectors.progress import ProgressCollector
from trainguard.config import JobConfig
from trainguard.phases import PHASES
from trainguard.process import ProcessMatcher

BAR = "steps: {pct:3d}%|#####     | {step}/{total} [00:02<00:06, 4.8it/s, avr_loss=0.1]"


def job(tmp_path: Path, name: str, log: bool = True) -> JobConfig:
    out = tmp_path / name
    out.mkdir(parents=True, exist_ok=True)
    return JobConfig(name=name, output_dir=out,
                     log_file=(out / "train.log") if log else None)


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real 'trainer' whose arguments name job a's output_dir (a parent with a child)."""
    out = tmp_path / "a"
    out.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, str(SLEEPER), "--child", "--seconds", "60",
                          "--output_dir", str(out)])
    # wait until the child exists, so the tree is complete
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not psutil.Process(p.pid).children():
        time.sleep(0.02)
    children = psutil.Process(p.pid).children(recursive=True)
    yield p
    for c in children:
        if c.is_running():
            c.kill()
    p.kill()
    p.wait()


def exited(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_process_up_count_and_start_time(tmp_path: Path,
                                         sleeper: subprocess.Popen[bytes]) -> None:
    jobs = [job(tmp_path, "a"), job(tmp_path, "b")]
    cs = CollectorSet([ProcessCollector(["a", "b"])], ProcessMatcher(jobs).match)
    m = metrics_of(cs)
    assert value(m, "trainguard_job_process_up", training_job="a") == 1
    assert value(m, "trainguard_job_processes", training_job="a") == 2
    assert value(m, "trainguard_job_process_start_time_seconds", training_job="a") == \
        pytest.approx(psutil.Process(sleeper.pid).create_time(), abs=0.05)
    # a job with nothing running still has all three series, at 0
    assert value(m, "trainguard_job_process_up", training_job="b") == 0
    assert value(m, "trainguard_job_processes", training_job="b") == 0
    assert value(m, "trainguard_job_process_start_time_seconds", training_job="b") == 0
    children = psutil.Process(sleeper.pid).children(recursive=True)
    for c in children:
        c.kill()
    sleeper.kill()
    sleeper.wait()
    # SIGKILL is not instant: a killed child still shows "running" until the kernel has
    # torn it down (then it is a zombie, or gone once reaped).
    wait_for(lambda: all(map(exited, children)), timeout=10, what="the killed child to exit")
    m = metrics_of(cs)
    assert value(m, "trainguard_job_process_up", training_job="a") == 0
    assert value(m, "trainguard_collector_success", collector="process") == 1


def test_progress_follows_the_log(tmp_path: Path) -> None:
    a, b = job(tmp_path, "a"), job(tmp_path, "b", log=False)
    assert a.log_file is not None
    cs = CollectorSet([ProgressCollector([a, b])], lambda: {"a": [], "b": []})
    m = metrics_of(cs)
    # no log yet: no step series, completed present at 0
    assert value(m, "trainguard_job_step", training_job="a") is None
    assert value(m, "trainguard_job_completed", training_job="a") == 0
    assert value(m, "trainguard_job_completed", training_job="b") == 0
    with open(a.log_file, "w") as f:
        f.write("running training\n" + BAR.format(pct=25, step=10, total=40) + "\r")
    before = time.time()
    m = metrics_of(cs)
    assert value(m, "trainguard_job_step", training_job="a") == 10
    assert value(m, "trainguard_job_total_steps", training_job="a") == 40
    first = value(m, "trainguard_job_last_progress_timestamp_seconds", training_job="a")
    assert first is not None and first <= time.time()
    with open(a.log_file, "a") as f:
        f.write(BAR.format(pct=50, step=20, total=40) + "\r")
    m = metrics_of(cs)
    assert value(m, "trainguard_job_step", training_job="a") == 20
    last = value(m, "trainguard_job_last_progress_timestamp_seconds", training_job="a")
    assert last is not None and last >= before
    with open(a.log_file, "a") as f:
        f.write(BAR.format(pct=100, step=40, total=40) + "\nmodel saved.\n")
    m = metrics_of(cs)
    assert value(m, "trainguard_job_completed", training_job="a") == 1
    assert value(m, "trainguard_collector_success", collector="progress") == 1


def test_phase_and_rhythm_series(tmp_path: Path) -> None:
    """The follower's phase and rhythm become the series the rules read (HACKING.md)."""
    from helpers.upstream_log import UpstreamLog

    a, b = job(tmp_path, "a"), job(tmp_path, "b", log=False)
    assert a.log_file is not None
    clock = [1000.0]
    cs = CollectorSet([ProgressCollector([a, b], clock=lambda: clock[0])],
                      lambda: {"a": [], "b": []})
    up = UpstreamLog()

    def scrape(at: float) -> dict[frozenset[tuple[str, str]], float]:
        clock[0] = up.clock = at
        with open(a.log_file, "ab") as f:   # type: ignore[arg-type]
            f.write(up.take())
        m = metrics_of(cs)
        assert not series(m, "trainguard_job_phase").keys() & {
            frozenset({("training_job", "b"), ("phase", p)}) for p in PHASES}
        return {k: v for k, v in m.items() if k[0].startswith("trainguard_job_")}

    m = scrape(1000.0)
    assert value(m, "trainguard_job_phase", training_job="a", phase="training") is None
    up.rich("preparing accelerator", "preparing accelerator")
    bar = up.bar(100)
    m = scrape(1010.0)
    on = {dict(k[1])["phase"]: v for k, v in m.items() if k[0] == "trainguard_job_phase"}
    assert on == {p: (1.0 if p == "training" else 0.0) for p in PHASES}
    assert value(m, "trainguard_job_phase_start_timestamp_seconds", training_job="a") == 1010
    assert value(m, "trainguard_job_step_gap_max_seconds", training_job="a") is None
    for i in range(1, 5):
        up.steps(bar)
        m = scrape(1010.0 + 3 * i)
    assert value(m, "trainguard_job_step_gap_max_seconds", training_job="a") == 3.0
    assert value(m, "trainguard_job_step_gap_typical_seconds", training_job="a") == 3.0
    up.rich("generating sample images at step / サンプル画像生成 ステップ: 4", "sample")
    m = scrape(1030.0)
    assert value(m, "trainguard_job_phase", training_job="a", phase="sampling") == 1
    assert value(m, "trainguard_job_phase_start_timestamp_seconds", training_job="a") == 1030
    up.steps(bar)
    m = scrape(1100.0)
    assert value(m, "trainguard_job_phase_max_duration_seconds", training_job="a",
                 phase="sampling") == 70.0
    assert value(m, "trainguard_job_phase", training_job="a", phase="training") == 1


def test_startup_grace_is_published_only_for_jobs_that_set_it(tmp_path: Path) -> None:
    jobs = [job(tmp_path, "a"), job(tmp_path, "b")]
    cs = CollectorSet([ProcessCollector(["a", "b"], {"a": 1800.0})], ProcessMatcher(jobs).match)
    m = metrics_of(cs)
    assert value(m, "trainguard_job_startup_grace_seconds", training_job="a") == 1800
    assert value(m, "trainguard_job_startup_grace_seconds", training_job="b") is None

"""The killer: only the job's tree, never a recycled pid, and it waits for GPU memory.

GPU release runs the killer in a child process whose pynvml loads the fake
``libnvidia-ml.so.1`` (tests/fakenvml): the real bindings, a GPU file listing the job's
pid, and a "driver" thread here that drops the pid only some time after it died, as the
real driver does when the CUDA context is torn down.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers.common import SLEEPER, wait_for

from remediator.actions.kill import kill_job
from trainguard.config import JobConfig, LaunchConfig
from trainguard.process import JobProcess

pytestmark = pytest.mark.slow


def sleeper(tmp_path: Path, name: str) -> tuple[JobConfig, subprocess.Popen[bytes]]:
    """A job whose only process is a sleeping "trainer" writing to its output_dir."""
    out = tmp_path / name
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(SLEEPER), "--output_dir", str(out)],
                            start_new_session=True)
    job = JobConfig(name=name, output_dir=out, launch=LaunchConfig(workdir=tmp_path,
                                                                   command=("true",)))
    return job, proc


def test_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    job, own = sleeper(tmp_path, "job")
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        p = psutil.Process(stranger.pid)
        # What a scan saw earlier under this pid: a process that started before this one.
        ghost = JobProcess(stranger.pid, p.ppid(), p.create_time() - 50.0, ("old",), "sleeping")
        res = kill_job(job, grace=1, gpu_timeout=1, processes=[ghost])
        assert stranger.poll() is None, "a pid that now belongs to someone else was signalled"
        assert stranger.pid not in res.terminated + res.killed
        # The job's own process was found by the re-scan and stopped.
        assert own.wait(5) is not None
        assert res.ok
    finally:
        stranger.kill()
        own.kill()
        stranger.wait()


def test_term_then_kill_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "stubborn"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(SLEEPER), "--ignore_term", "--output_dir",
                             str(out)], start_new_session=True)
    job = JobConfig(name="stubborn", output_dir=out)
    time.sleep(0.3)
    t0 = time.monotonic()
    res = kill_job(job, grace=1.0, gpu_timeout=1)
    proc.wait(5)  # (psutil reaped it already, so the exit status is lost to Popen)
    assert not psutil.pid_exists(proc.pid)
    assert res.ok and proc.pid in res.terminated and proc.pid in res.killed
    assert time.monotonic() - t0 >= 1.0


KILLER = """
import json, sys, time
from pathlib import Path
from remediator.actions.kill import kill_job
from trainguard.config import JobConfig
out = Path(sys.argv[1])
t0 = time.time()
res = kill_job(JobConfig(name="g", output_dir=out), grace=2, gpu_timeout=float(sys.argv[2]))
print(json.dumps({"ok": res.ok, "gpu_released": res.gpu_released, "t0": t0,
                  "t1": time.time(), "detail": res.detail}))
"""


@pytest.mark.parametrize("release_after, timeout, released", [(1.5, 10.0, True),
                                                               (None, 1.0, False)])
def test_waits_until_gpu_memory_is_released(tmp_path: Path, release_after: float | None,
                                            timeout: float, released: bool) -> None:
    from helpers.fakenvml import FakeGPUs, env_for

    gpus = FakeGPUs(tmp_path / "gpus")
    gpus.add(1)
    out = tmp_path / "g"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(SLEEPER), "--output_dir", str(out)],
                            start_new_session=True)
    gpus.set_processes(0, {proc.pid: 8 << 30})
    died: list[float] = []

    def driver() -> None:
        proc.wait()
        died.append(time.time())
        if release_after is not None:
            time.sleep(release_after)
            gpus.set_processes(0, {})

    t = threading.Thread(target=driver, daemon=True)
    t.start()
    res = subprocess.run([sys.executable, "-c", KILLER, str(out), str(timeout)],
                         capture_output=True, text=True, timeout=60, env=env_for(tmp_path / "gpus"))
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    wait_for(lambda: died, timeout=5, what="the process to die")
    assert got["gpu_released"] is released, got
    # The processes are gone either way: memory the driver still holds is reported, and
    # does not fail the kill (the pipeline resumes rather than leave the run dead).
    assert got["ok"] is True
    assert f"GPU memory released: {released}" in got["detail"]
    if released:
        assert release_after is not None
        assert got["t1"] >= died[0] + release_after - 0.1, "returned before memory was freed"
    else:
        assert got["t1"] - got["t0"] >= timeout

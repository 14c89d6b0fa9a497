"""THE integration test: a real exporter process watching a real FluxGym-shaped training run.

``bash outputs/my-lora/train.sh`` (FluxGym's shape: run from the FluxGym root, paths
relative to it) -> ``accelerate launch`` -> the tiny sd-scripts-shaped trainer, which saves
accelerate states every 3 steps and keeps a fake-NVML GPU file in step with itself (its pid
as the compute process).  Everything is read back through HTTP from
``trainguard exporter``: process up, step advancing, latest checkpoint, GPU attributed to
the job; then the run is killed (process down, GPU no longer attributed) and the driver
breaks (gpu collector fails, the scrape and the other collectors do not).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from exporter_testlib import ExporterProcess, Samples, http_get, value, write_config
from helpers.common import TINY_TRAIN, free_port, wait_for
from helpers.fakenvml import FakeGPUs, env_for

JOB = "my-lora"


def train_sh(root: Path, gpu_file: Path) -> Path:
    script = root / "outputs" / JOB / "train.sh"
    script.parent.mkdir(parents=True)
    (root / "sd-scripts").mkdir()
    shutil.copy(TINY_TRAIN, root / "sd-scripts" / "flux_train_network.py")
    script.write_text(
        "accelerate launch \\\n"
        "  --mixed_precision bf16 \\\n"
        "  --num_cpu_threads_per_process 1 \\\n"
        "  sd-scripts/flux_train_network.py \\\n"
        f'  --output_dir "{root}/outputs/{JOB}" \\\n'
        f"  --output_name {JOB} \\\n"
        "  --max_train_steps 2000 --step_seconds 0.05 \\\n"
        "  --save_every_n_steps 3 \\\n"
        f'  --fake_gpu "{gpu_file}" \\\n'
        "  --loss_type l2 \\\n"
        "  --save_state\n")
    return script


@pytest.mark.slow
def test_exporter_watches_a_real_training_run(tmp_path: Path, fake_nvml_lib: Path) -> None:
    root = tmp_path / "fluxgym"
    root.mkdir()
    gpus = FakeGPUs(tmp_path / "gpus")
    gpus.add(2)  # the trainer takes gpu0; gpu1 stays idle
    train_sh(root, gpus.path(0))
    cfg = write_config(root / "trainguard.yaml", [{
        "name": JOB, "output_dir": f"outputs/{JOB}",
        "launch": {"script": f"outputs/{JOB}/train.sh", "workdir": "."},
        "log_file": f"outputs/{JOB}/train.log"}],
        {"checkpoint_rescan_seconds": 0.2})
    env = env_for(gpus.root)
    exporter = ExporterProcess(cfg, free_port(), env, tmp_path / "exporter.log")
    train_env = {k: v for k, v in os.environ.items() if k != "FAKE_NVML_DIR"}
    # `accelerate` is found on PATH, as in a FluxGym venv.
    train_env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                     PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    train = subprocess.Popen(
        ["bash", "-c", f"bash outputs/{JOB}/train.sh 2>&1 | tee -a outputs/{JOB}/train.log"],
        cwd=root, env=train_env, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(exporter.ready, timeout=20, what="exporter /healthz")

        def get(name: str, **labels: str) -> float | None:
            return value(exporter.scrape(), name, **labels)

        def job(name: str) -> float | None:
            return get(name, training_job=JOB)

        assert wait_for(lambda: job("trainguard_job_process_up") == 1, timeout=10,
                        what="process up")
        step1 = wait_for(lambda: job("trainguard_job_step"), timeout=45, what="a step")
        assert job("trainguard_job_total_steps") == 2000
        step2 = wait_for(lambda: (s := job("trainguard_job_step")) and s > step1 and s,
                         timeout=20, what="the step advancing")
        assert step2 > step1
        latest = wait_for(lambda: job("trainguard_checkpoint_latest_step"), timeout=20,
                          what="a usable checkpoint")
        assert latest % 3 == 0
        m: Samples = {}

        def attributed() -> bool:
            nonlocal m
            m = exporter.scrape()
            return value(m, "trainguard_job_gpus", training_job=JOB) == 1

        wait_for(attributed, timeout=10, what="GPU attributed to the job")
        gpu0 = {"gpu": "0", "uuid": gpus.read(0)["uuid"]}
        assert value(m, "trainguard_job_gpu", training_job=JOB, **gpu0) == 1
        assert value(m, "trainguard_job_gpu_utilization_ratio", training_job=JOB) == \
            pytest.approx(0.97)
        assert value(m, "trainguard_job_gpu_power_watts", training_job=JOB) == \
            pytest.approx(480.0)
        assert value(m, "trainguard_job_gpu_memory_used_bytes", training_job=JOB) == 8 << 30
        assert value(m, "trainguard_job_processes", training_job=JOB) >= 3  # type: ignore[operator]
        assert value(m, "trainguard_job_completed", training_job=JOB) == 0
        assert value(m, "trainguard_checkpoints", training_job=JOB, status="valid") >= 1  # type: ignore[operator]

        # The run dies hard (no chance to update its GPU file: NVML still lists the pid).
        os.killpg(train.pid, signal.SIGKILL)
        train.wait(10)
        assert wait_for(lambda: job("trainguard_job_process_up") == 0, timeout=10,
                        what="process down")
        m = exporter.scrape()
        assert value(m, "trainguard_job_gpus", training_job=JOB) == 0
        assert value(m, "trainguard_job_completed", training_job=JOB) == 0

        # The driver goes away: the gpu collector fails, nothing else does.
        gpus.fail_driver()
        status, _, body = http_get(exporter.url + "/metrics")
        assert status == 200
        from exporter_testlib import parse_exposition

        m = parse_exposition(body)
        assert value(m, "trainguard_collector_success", collector="gpu") == 0
        for other in ("process", "progress", "checkpoint"):
            assert value(m, "trainguard_collector_success", collector=other) == 1, other
        assert value(m, "trainguard_checkpoint_latest_step", training_job=JOB) >= latest  # type: ignore[operator]
        assert "Traceback" not in exporter.log.read_text()
    finally:
        if train.poll() is None:
            os.killpg(train.pid, signal.SIGKILL)
            train.wait()
        assert exporter.stop() == 0

"""The config's `host` (which host's alerts this remediator acts on) and `launch.slurm`."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from trainguard.config import ConfigError, load_config


def config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "train.sbatch").write_text("#!/bin/bash\naccelerate launch t.py\n")
    path = tmp_path / "trainguard.yaml"
    path.write_text(text)
    return path


JOB = "jobs: [{name: my-lora, output_dir: out}]\n"
SLURM_JOB = ("jobs: [{name: my-lora, output_dir: out, launch: {script: train.sbatch, "
             "slurm: SLURM}}]\n")


def test_host_defaults_to_the_short_host_name(tmp_path: Path) -> None:
    assert load_config(config(tmp_path, JOB)).host == socket.gethostname().split(".")[0]


def test_host_is_taken_as_written(tmp_path: Path) -> None:
    assert load_config(config(tmp_path, "host: gpu-a.lab\n" + JOB)).host == "gpu-a.lab"


@pytest.mark.parametrize("host", ["'gpu a'", "'gpu\"a'", "'-gpu'", "[a]", "''", "3"])
def test_a_host_that_cannot_be_a_label_matcher_is_an_error(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config(tmp_path, f"host: {host}\n" + JOB))
    assert info.value.keypath == "host", info.value


def test_slurm_section_defaults_the_job_name_to_the_jobs(tmp_path: Path) -> None:
    c = load_config(config(tmp_path, SLURM_JOB.replace("SLURM", "{}")))
    launch = c.jobs[0].launch
    assert launch is not None and launch.slurm is not None
    assert launch.slurm.job_name == "my-lora" and launch.slurm.start_timeout_seconds == 600
    c = load_config(config(tmp_path, SLURM_JOB.replace(
        "SLURM", "{job_name: lora-7, start_timeout_seconds: 30}")))
    slurm = c.jobs[0].launch.slurm  # type: ignore[union-attr]
    assert slurm is not None and (slurm.job_name, slurm.start_timeout_seconds) == ("lora-7", 30)


@pytest.mark.parametrize(("slurm", "keypath", "says"), [
    ("{jobname: x}", "jobs[0].launch.slurm.jobname", "unknown key"),
    ("{job_name: 'a b'}", "jobs[0].launch.slurm.job_name", "letters, digits"),
    ("{start_timeout_seconds: -1}", "jobs[0].launch.slurm.start_timeout_seconds", ">= 0"),
    ("yes-please", "jobs[0].launch.slurm", "expected a mapping"),
])
def test_slurm_section_errors_name_the_key(tmp_path: Path, slurm: str, keypath: str,
                                           says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config(tmp_path, SLURM_JOB.replace("SLURM", slurm)))
    assert info.value.keypath == keypath and says in info.value.message, info.value


def test_a_slurm_job_needs_its_batch_script(tmp_path: Path) -> None:
    text = "jobs: [{name: a, output_dir: out, launch: {command: [python, t.py], slurm: {}}}]\n"
    with pytest.raises(ConfigError) as info:
        load_config(config(tmp_path, text))
    assert info.value.keypath == "jobs[0].launch.slurm" and "batch script" in info.value.message

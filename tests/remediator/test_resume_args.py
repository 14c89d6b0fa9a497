"""``trainguard resume-args --config FILE JOB``, as a batch script runs it: the real
command, real accelerate checkpoints, the Slurm variables a job sees.

It prints the remediator's choice only for the run the resume record was written for,
otherwise the newest checkpoint the run's environment loads; nothing (exit 0) when there
is none, so a first start runs; exit 2 with one line for what ``$ARGS`` would pass wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.checkpoints import make_accelerate_checkpoint, truncate

from remediator.slurm import RECORD_NAME, ResumeRecord
from trainguard.ledger import ResumeLedger

TRAINGUARD = str(Path(sys.executable).with_name("trainguard"))
VENV_BIN = str(Path(sys.executable).parent)


def setup(tmp_path: Path, out_name: str = "out") -> tuple[Path, Path]:
    out = tmp_path / out_name
    out.mkdir()
    script = tmp_path / "train.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --requeue\n"
                      "ARGS=$(trainguard resume-args --config trainguard.yaml lora)\n"
                      f"exec accelerate launch t.py --output_dir '{out}' $ARGS\n")
    config = tmp_path / "trainguard.yaml"
    config.write_text(yaml.safe_dump({"jobs": [{
        "name": "lora", "output_dir": str(out),
        "launch": {"script": str(script), "slurm": {}}}]}))
    return config, out


def resume_args(config: Path, *extra: str, env: dict[str, str] | None = None,
                job: str = "lora") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    base["PATH"] = VENV_BIN + os.pathsep + base.get("PATH", "")
    return subprocess.run([TRAINGUARD, "resume-args", "--config", str(config), job, *extra],
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          check=False)


def write_record(out: Path, checkpoint: Path | None, **changes: object) -> None:
    record = ResumeRecord(
        job="lora", host="gpu-a", checkpoint=str(checkpoint) if checkpoint else None,
        step=10, args=("--resume", str(checkpoint)) if checkpoint else (),
        slurm_job_id="7", cluster="tg", restart_count=1, written_at=0.0,
        ledger=ResumeLedger())
    data = {**record.to_json(), **changes}
    (out / RECORD_NAME).write_text(json.dumps(data))


RESTART_1 = {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1", "SLURM_CLUSTER_NAME": "tg"}


def test_nothing_to_resume_prints_nothing_and_lets_the_first_start_run(tmp_path: Path) -> None:
    config, _out = setup(tmp_path)
    proc = resume_args(config)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert "no checkpoint to resume" in proc.stderr


@pytest.fixture(scope="module")
def two_states(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("states")
    make_accelerate_checkpoint(base / "lora-step00000010-state", 10)
    make_accelerate_checkpoint(base / "lora-step00000020-state", 20)
    return base / "lora-step00000010-state", base / "lora-step00000020-state"


def copy_states(two_states: tuple[Path, Path], out: Path) -> tuple[Path, Path]:
    return tuple(Path(shutil.copytree(s, out / s.name)) for s in two_states)  # type: ignore[return-value]


def test_without_a_record_the_newest_loadable_checkpoint(
        tmp_path: Path, two_states: tuple[Path, Path]) -> None:
    config, out = setup(tmp_path)
    _ten, twenty = copy_states(two_states, out)
    proc = resume_args(config, env=RESTART_1)
    assert (proc.returncode, proc.stdout) == (0, f"--resume {twenty}\n"), proc.stderr
    assert "restart 1 of Slurm job 7: the newest checkpoint" in proc.stderr


def test_the_remediators_choice_for_this_very_restart_wins(
        tmp_path: Path, two_states: tuple[Path, Path]) -> None:
    config, out = setup(tmp_path)
    ten, twenty = copy_states(two_states, out)
    write_record(out, ten)
    proc = resume_args(config, env=RESTART_1)
    assert proc.stdout == f"--resume {ten}\n" and "the remediator's choice" in proc.stderr
    # Any other run (a later requeue by Slurm itself, another cluster's job 7, the first
    # run) chooses afresh: the newest.
    for env in ({**RESTART_1, "SLURM_RESTART_COUNT": "2"},
                {**RESTART_1, "SLURM_CLUSTER_NAME": "other"},
                {"SLURM_JOB_ID": "7", "SLURM_CLUSTER_NAME": "tg"}):
        assert resume_args(config, env=env).stdout == f"--resume {twenty}\n", env


def test_a_record_saying_from_scratch_prints_nothing(tmp_path: Path,
                                                     two_states: tuple[Path, Path]) -> None:
    config, out = setup(tmp_path)
    copy_states(two_states, out)
    write_record(out, None)
    proc = resume_args(config, env=RESTART_1)
    assert (proc.returncode, proc.stdout) == (0, "") and "from scratch" in proc.stderr


def test_a_chosen_checkpoint_cut_since_is_not_resumed_from(
        tmp_path: Path, two_states: tuple[Path, Path]) -> None:
    config, out = setup(tmp_path)
    ten, twenty = copy_states(two_states, out)
    write_record(out, twenty)
    truncate(twenty / "model.safetensors", 100)
    proc = resume_args(config, env=RESTART_1)
    assert proc.stdout == f"--resume {ten}\n" and "no longer whole" in proc.stderr


def test_a_damaged_record_is_said_and_ignored(tmp_path: Path,
                                              two_states: tuple[Path, Path]) -> None:
    config, out = setup(tmp_path)
    _ten, twenty = copy_states(two_states, out)
    (out / RECORD_NAME).write_text("{not json")
    proc = resume_args(config, env=RESTART_1)
    assert proc.stdout == f"--resume {twenty}\n" and "damaged resume record" in proc.stderr


def test_a_path_the_shell_would_split_is_an_error_unless_lines(
        tmp_path: Path, two_states: tuple[Path, Path]) -> None:
    config, out = setup(tmp_path, "my outputs")
    _ten, twenty = copy_states(two_states, out)
    proc = resume_args(config)
    assert proc.returncode == 2 and proc.stdout == "" and "mapfile -t" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    lines = resume_args(config, "--lines")
    assert (lines.returncode, lines.stdout) == (0, f"--resume\n{twenty}\n")
    # What a batch script does with it: mapfile, then "${ARGS[@]}".
    got = subprocess.run(["bash", "-c", 'mapfile -t ARGS < <("$@"); printf "<%s>" "${ARGS[@]}"',
                          "_", TRAINGUARD, "resume-args", "--lines", "--config", str(config),
                          "lora"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ["PATH"]})
    assert got.stdout == f"<--resume><{twenty}>"


@pytest.mark.parametrize(("job", "says"), [("nope", "no job named 'nope'")])
def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, job: str, says: str) -> None:
    config, _out = setup(tmp_path)
    proc = resume_args(config, job=job)
    assert proc.returncode == 2 and says in proc.stderr and proc.stdout == ""
    proc = resume_args(tmp_path / "missing.yaml")
    assert proc.returncode == 2 and "no such file" in proc.stderr

"""Hugging Face Trainer checkpoints: real ones, written by a real Trainer on the CPU.

Before the doctor knew this layout every Trainer checkpoint looked like a save in
progress (no optimizer.bin, no random_states_0.pkl) and then like a dead half-save, so
a Trainer run could only ever be restarted from scratch.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers.checkpoints import set_mtime, truncate
from helpers.common import PYTHON, REPO

from trainguard.checkpoint import Status, inspect_checkpoint, latest_usable, list_checkpoints
from trainguard.checkpoint.compat import Environment, verdict

HF_TRAINER = REPO / "tests" / "fixtures" / "hf_trainer.py"
OLD = time.time() - 3600.0


def train(output_dir: Path, *extra: str) -> str:
    proc = subprocess.run([PYTHON, str(HF_TRAINER), str(output_dir), *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "out"
    train(out)
    for folder in out.iterdir():
        set_mtime(folder, OLD)
    return out


@pytest.fixture
def out(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(trained, copy)
    return copy


def test_trainer_checkpoints_are_whole_and_ordered_by_global_step(out: Path) -> None:
    infos = list_checkpoints(out)
    assert [(i.name, i.step, i.status) for i in infos] == [
        ("checkpoint-12", 12, Status.VALID), ("checkpoint-10", 10, Status.VALID),
        ("checkpoint-5", 5, Status.VALID)]
    assert {i.step_source for i in infos} == {"trainer_state.json"}
    assert {i.layout for i in infos} == {"trainer"}
    assert verdict(infos[0], Environment.current()).loads


@pytest.mark.parametrize("damage", [
    "trainer_state.json missing", "trainer_state.json empty", "rng_state.pth missing",
    "optimizer.pt missing", "optimizer.pt truncated", "model.safetensors truncated",
    "training_args.bin truncated"])
def test_a_damaged_newest_is_skipped(out: Path, damage: str) -> None:
    newest = out / "checkpoint-12"
    name, what = damage.split(" ", 1)
    if what == "missing":
        (newest / name).unlink()
    elif what == "empty":
        (newest / name).write_bytes(b"")
    else:
        truncate(newest / name, (newest / name).stat().st_size // 2)
    set_mtime(newest, OLD)
    info = inspect_checkpoint(newest)
    assert info.status is Status.INVALID
    assert any(name in p for p in info.problems), info.problems
    best = latest_usable(out)
    assert best is not None and best.name == "checkpoint-10"


def test_a_save_cut_after_the_optimizer_is_named_in_the_trainers_terms(out: Path) -> None:
    newest = out / "checkpoint-12"
    for name in ("scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"):
        (newest / name).unlink()
    set_mtime(newest, OLD)
    info = inspect_checkpoint(newest)
    assert info.status is Status.INVALID and info.layout == "trainer"
    assert not any("random_states" in p for p in info.problems), info.problems
    assert any("rng_state.pth is missing" in p for p in info.problems)


def test_a_fresh_save_without_trainer_state_is_being_written(out: Path) -> None:
    newest = out / "checkpoint-12"
    (newest / "trainer_state.json").unlink()
    set_mtime(newest, time.time())
    assert inspect_checkpoint(newest).status is Status.WRITING


def test_the_trainer_resumes_from_what_the_doctor_chose(out: Path) -> None:
    (out / "checkpoint-12" / "trainer_state.json").unlink()  # a save that died at the end
    best = latest_usable(out)
    assert best is not None and best.step == 10
    log = train(out, "--resume_from_checkpoint", str(best.path))
    assert re.search(r"trainguard-test: first step 10\b", log), log[-2000:]
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12

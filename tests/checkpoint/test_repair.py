"""Repair, then accelerate's own load_state restores the step the user expects."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import _accelerator, make_accelerate_checkpoint, set_mtime

from remediator.repair import RepairError, apply_repair, backup, plan_repair
from trainguard.checkpoint import inspect_checkpoint
from trainguard.checkpoint.compat import Environment

SENTINEL = 987654


def load_step(folder: Path) -> int:
    """accelerator.step after accelerate's real load_state on ``folder``."""
    st: dict[str, Any] = _accelerator()
    st["acc"].step = SENTINEL
    st["acc"].load_state(str(folder))
    return int(st["acc"].step)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_seed_000_state_loads_as_it_is_and_is_not_rewritten(tmp_path: Path) -> None:
    """Seed 000's state: accelerate restores its counter at 0, as it should be at an
    epoch end (sd-scripts never sets it); the old repair rewrote it to 360."""
    c = make_accelerate_checkpoint(tmp_path / "kristy-000030-state", 360, rng_step=0, epoch=30)
    before = snapshot(c)
    assert load_step(c) == 0
    plan = plan_repair(c)
    assert not plan.needed and plan.env_fixes == ()
    result = apply_repair(plan)
    assert result.changed == () and result.backups == ()
    assert snapshot(c) == before


def test_numpy_1x_file_fails_here_and_loads_after_repair(tmp_path: Path) -> None:
    c = make_accelerate_checkpoint(tmp_path / "checkpoint-50", 50, numpy_module="numpy.core")
    assert load_step(c) == SENTINEL  # RNG load failed and was swallowed (DESIGN.md §4)
    plan = plan_repair(c)
    assert [ch.set_numpy for ch in plan.changes] == ["numpy._core"]
    apply_repair(plan)
    assert inspect_checkpoint(c).numpy_module == "numpy._core"
    assert load_step(c) == 50


def test_repair_can_write_numpy_1x_names_for_an_old_environment(tmp_path: Path) -> None:
    c = make_accelerate_checkpoint(tmp_path / "checkpoint-7", 7, rng_step=0)
    old_env = Environment(torch="2.6.0", accelerate="1.2.1", numpy="1.26.4")
    apply_repair(plan_repair(c, old_env))
    info = inspect_checkpoint(c)
    assert (info.numpy_module, info.rng_step) == ("numpy.core", 0)  # the step is kept


def test_second_run_has_nothing_to_do(tmp_path: Path) -> None:
    c = make_accelerate_checkpoint(tmp_path / "checkpoint-9", 9, numpy_module="numpy.core")
    apply_repair(plan_repair(c))
    before = snapshot(c)
    plan = plan_repair(c)
    assert not plan.needed
    result = apply_repair(plan)
    assert result.changed == () and result.backups == ()
    assert snapshot(c) == before


def test_dry_run_touches_nothing(tmp_path: Path) -> None:
    c = make_accelerate_checkpoint(tmp_path / "checkpoint-9", 9, numpy_module="numpy.core")
    before = snapshot(c)
    result = apply_repair(plan_repair(c), dry_run=True)
    assert result.changed == () and any("-> numpy._core" in n for n in result.notes)
    assert snapshot(c) == before


@pytest.mark.parametrize("damage", ["half-save", "unsafe"])
def test_invalid_checkpoint_is_refused_and_untouched(tmp_path: Path, damage: str) -> None:
    c = make_accelerate_checkpoint(tmp_path / "checkpoint-9", 9, rng_step=0)
    if damage == "half-save":
        (c / "optimizer.bin").unlink()
        set_mtime(c, time.time() - 3600)
    else:
        from helpers.checkpoints import write_malicious_rng
        write_malicious_rng(c / "random_states_0.pkl", "os", "system", "true")
    before = snapshot(c)
    with pytest.raises(RepairError, match="invalid"):
        plan_repair(c)
    assert snapshot(c) == before


def test_file_changed_after_planning_is_not_touched(tmp_path: Path) -> None:
    c = make_accelerate_checkpoint(tmp_path / "checkpoint-9", 9, numpy_module="numpy.core")
    plan = plan_repair(c)
    os.utime(c / "random_states_0.pkl", (1, 1))
    with pytest.raises(RepairError, match="changed since"):
        apply_repair(plan)


def test_backup_never_overwrites_a_backup(tmp_path: Path) -> None:
    f = tmp_path / "random_states_0.pkl"
    f.write_bytes(b"one")
    first = backup(f, b"one")
    second = backup(f, b"two")
    assert first != second
    assert first.read_bytes() == b"one" and second.read_bytes() == b"two"


def test_result_reads_as_a_sentence_in_logs_and_the_api(tmp_path: Path) -> None:
    """The pipeline logs str(result) and keeps it as the incident's detail."""
    from helpers.checkpoints import rewrite_rng_numpy

    c = make_accelerate_checkpoint(tmp_path / "lora-step00000020-state", 20, rng_step=0)
    rewrite_rng_numpy(c / "random_states_0.pkl", "numpy.core")  # a numpy 1.x writer's file
    change = ("rewrite-rng-numpy: random_states_0.pkl: numpy.core.multiarray._reconstruct "
              "-> numpy._core.multiarray._reconstruct")
    planned = str(apply_repair(plan_repair(c), dry_run=True))
    assert planned == f"would repair {c}: {change}"
    done = apply_repair(plan_repair(c))
    (bak,) = done.backups
    assert str(done) == f"repaired {c}: {change} (originals kept as {bak.name})"
    again = str(apply_repair(plan_repair(c)))
    assert again == f"nothing to repair in {c}"
    for text in (planned, str(done), again):
        assert "RepairResult(" not in text and "PosixPath" not in text

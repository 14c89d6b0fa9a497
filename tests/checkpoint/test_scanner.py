"""Discovery, ordering, latest_usable and the scanner's cache on real output folders."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from helpers.checkpoints import (
    make_accelerate_checkpoint,
    make_automatic_checkpoints,
    set_mtime,
    truncate,
)

from trainguard.checkpoint import CheckpointScanner, Status, latest_usable, list_checkpoints

NOW = time.time()


def names(out: Path) -> list[str]:
    return [i.name for i in list_checkpoints(out)]


def test_checkpoint_n_is_ordered_numerically_not_by_mtime(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for n, age in ((2, 10), (10, 20), (100, 30)):  # higher step, OLDER mtime
        make_accelerate_checkpoint(out / f"checkpoint-{n}", n, train_state=False,
                                   mtime=NOW - age * 100)
    assert names(out) == ["checkpoint-100", "checkpoint-10", "checkpoint-2"]
    best = latest_usable(out)
    assert best is not None and best.name == "checkpoint-100" and best.step_source == "name"


def test_automatic_naming_is_ordered_by_save_counter_not_rng_step(tmp_path: Path) -> None:
    # accelerate's ProjectConfiguration(automatic_checkpoint_naming=True): 12 saves in
    # project/checkpoints/, whose RNG "step" restarts every epoch; the newest is the oldest
    # file on disk (restored from a backup, say).
    project = tmp_path / "project"
    rng = [5, 9, 0, 4, 8, 1, 6, 3, 7, 2, 5, 0]
    folders = make_automatic_checkpoints(project, rng)
    for i, folder in enumerate(folders):
        set_mtime(folder, NOW - 1000 + (-900 if i == 11 else i))
    expected = [f"checkpoint_{i}" for i in range(11, -1, -1)]
    assert names(project) == expected
    assert names(project / "checkpoints") == expected  # pointed at the folder itself
    best = latest_usable(project)
    assert best is not None and best.path == folders[11] and best.save_index == 11
    assert best.step == 0 and best.step_source == "random_states"

    # a dead half-save of the newest: the one before it is the one to resume from
    (folders[11] / "random_states_0.pkl").unlink()
    best = latest_usable(project)
    assert best is not None and best.path == folders[10]


def test_scanner_sees_a_new_automatic_checkpoint(tmp_path: Path) -> None:
    project = tmp_path / "project"
    make_automatic_checkpoints(project, [0, 0])
    scanner = CheckpointScanner(project)
    assert [i.name for i in scanner.scan()] == ["checkpoint_1", "checkpoint_0"]
    before = project.stat().st_mtime_ns
    make_accelerate_checkpoint(project / "checkpoints" / "checkpoint_2", 0, train_state=False)
    assert project.stat().st_mtime_ns == before  # only checkpoints/ changed
    assert [i.name for i in scanner.scan()] == ["checkpoint_2", "checkpoint_1", "checkpoint_0"]


def test_files_and_unrelated_folders_are_ignored(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_accelerate_checkpoint(out / "last-step00000010-state", 10)
    (out / "last.safetensors").write_bytes(b"x")
    (out / "sample").mkdir()
    (out / "logs-state.txt").write_text("not a folder")
    (out / "checkpoint-x").mkdir()
    assert names(out) == ["last-step00000010-state"]


def test_step_from_train_state_beats_name_and_epoch_names(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_accelerate_checkpoint(out / "lora-000001-state", 120, epoch=1, mtime=NOW - 50)
    make_accelerate_checkpoint(out / "lora-000002-state", 240, epoch=2, mtime=NOW - 500)
    make_accelerate_checkpoint(out / "lora-step00000200-state", 200, epoch=2, mtime=NOW)
    assert names(out) == ["lora-000002-state", "lora-step00000200-state", "lora-000001-state"]


def test_end_of_training_state_sorts_after_equal_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_accelerate_checkpoint(out / "lora-state", 40, mtime=NOW - 100)
    make_accelerate_checkpoint(out / "lora-step00000040-state", 40, mtime=NOW)
    make_accelerate_checkpoint(out / "lora-step00000030-state", 30, mtime=NOW)
    infos = list_checkpoints(out)
    assert [i.name for i in infos] == ["lora-state", "lora-step00000040-state",
                                       "lora-step00000030-state"]
    assert infos[0].final


def test_latest_skips_half_saves_and_picks_the_seed_case(tmp_path: Path) -> None:
    # The seed's states (RNG step 0 at every epoch end) are whole: valid, chosen as they are.
    out = tmp_path / "out"
    make_accelerate_checkpoint(out / "k-000029-state", 348, epoch=29, rng_step=0, mtime=NOW - 900)
    seed = make_accelerate_checkpoint(out / "k-000030-state", 360, epoch=30, rng_step=0,
                                      mtime=NOW - 800)
    dead = make_accelerate_checkpoint(out / "k-000031-state", 372, epoch=31)
    (dead / "random_states_0.pkl").unlink()
    set_mtime(dead, NOW - 700)
    cut = make_accelerate_checkpoint(out / "k-000032-state", 384, epoch=32)
    truncate(cut / "model.safetensors", 50)
    set_mtime(cut, NOW - 600)
    infos = list_checkpoints(out, now=NOW)
    assert [(i.step, i.status) for i in infos] == [
        (384, Status.INVALID), (372, Status.INVALID), (360, Status.VALID),
        (348, Status.VALID)]
    best = latest_usable(out, now=NOW)
    assert best is not None and best.path == seed


def test_fresh_half_save_is_writing_then_invalid_as_time_passes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_accelerate_checkpoint(out / "checkpoint-10", 10, mtime=NOW - 1000)
    half = make_accelerate_checkpoint(out / "checkpoint-20", 20)
    (half / "random_states_0.pkl").unlink()
    set_mtime(half, NOW)
    scanner = CheckpointScanner(out, writing_fresh_seconds=300)
    first = scanner.scan(now=NOW + 10)
    assert [i.status for i in first] == [Status.WRITING, Status.VALID]
    latest = scanner.latest_usable(now=NOW + 10)
    assert latest is not None and latest.step == 10
    later = scanner.scan(now=NOW + 400)  # nothing changed on disk, only the clock
    assert [i.status for i in later] == [Status.INVALID, Status.VALID]


def test_no_output_folder_is_an_empty_list(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path / "missing") == []
    assert latest_usable(tmp_path / "missing") is None


def test_scanner_reinspects_only_what_changed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for n in (1, 2, 3):
        make_accelerate_checkpoint(out / f"checkpoint-{n}", n, mtime=NOW - 1000)
    scanner = CheckpointScanner(out)
    assert len(scanner.scan()) == 3 and scanner.inspections == 3
    assert len(scanner.scan()) == 3 and scanner.inspections == 3  # warm: nothing re-read
    truncate(out / "checkpoint-2" / "optimizer.bin", 10)  # in place: folder mtime unchanged
    set_mtime(out / "checkpoint-2", NOW - 1000)
    infos = {i.name: i for i in scanner.scan()}
    assert scanner.inspections == 4
    assert infos["checkpoint-2"].status is Status.INVALID
    make_accelerate_checkpoint(out / "checkpoint-4", 4)
    assert [i.step for i in scanner.scan()] == [4, 3, 2, 1] and scanner.inspections == 5
    shutil.rmtree(out / "checkpoint-4")
    assert [i.step for i in scanner.scan()] == [3, 2, 1]


def test_a_save_that_died_before_its_scheduler_file_ranks_by_its_train_state(
        tmp_path: Path) -> None:
    """sd-scripts' hook writes train_state.json first, accelerate then the weights and
    optimizer, the scheduler and the RNG file last: a save cut after the weights has only
    train_state.json's count, and it is the newest thing its run wrote."""
    out = tmp_path / "out"
    make_accelerate_checkpoint(out / "l-step00000010-state", 10, mtime=NOW - 2000)
    half = make_accelerate_checkpoint(out / "l-step00000020-state", 20)
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        (half / name).unlink()
    set_mtime(half, NOW - 1000)  # long dead: invalid, not being written
    infos = list_checkpoints(out, now=NOW)
    assert [(i.name, i.status) for i in infos] == [("l-step00000020-state", Status.INVALID),
                                                   ("l-step00000010-state", Status.VALID)]

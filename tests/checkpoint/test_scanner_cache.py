"""The exporter's cached scanner: the work a scan does, and that it always agrees with a
fresh ``list_checkpoints`` (the doctor's own answer) over real accelerate states."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import time
from pathlib import Path

import pytest
from helpers.checkpoints import make_accelerate_checkpoint, set_mtime, truncate

import trainguard.checkpoint.scanner as scanner_mod
from trainguard.checkpoint import CheckpointInfo, CheckpointScanner, Status, list_checkpoints

OLD = time.time() - 3 * 86400


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The scheduler's count at 0: with each copy's own train_state.json, the copies rank
    # by their step (trainguard.checkpoint.order).
    return make_accelerate_checkpoint(tmp_path_factory.mktemp("template") / "t", 10,
                                      scheduler_step=0)


def fill(out: Path, state: Path, steps: range) -> list[Path]:
    """One copy of the real state per step, in sd-scripts' naming, written days ago."""
    made = []
    for step in steps:
        dst = out / f"run-step{step:08d}-state"
        shutil.copytree(state, dst)
        (dst / "train_state.json").write_text(f'{{"current_epoch": 1, "current_step": {step}}}')
        set_mtime(dst, OLD + step)
        made.append(dst)
    return made


def view(infos: list[CheckpointInfo]) -> list[tuple[object, ...]]:
    """What a scan says of each folder, without the age a problem mentions (a cached
    folder keeps the age it had when inspected: that is all a cache changes)."""
    return [(i.path, i.step, i.status, i.epoch, i.mtime,
             tuple(p for p in i.problems if not p.startswith("newest file is ")))
            for i in infos]


class Counting:
    """Counts calls of a scanner module function (monkeypatched)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.calls = 0
        real = getattr(scanner_mod, name)

        def counted(*args: object, **kw: object) -> object:
            self.calls += 1
            return real(*args, **kw)

        monkeypatch.setattr(scanner_mod, name, counted)


def test_old_folders_are_trusted_from_their_own_stat(
        tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    fill(out, state, range(10, 310, 10))  # 30 folders
    scanner = CheckpointScanner(out)
    scanner.scan()
    signatures = Counting(monkeypatch, "_signature")
    for _ in range(5):
        scanner.scan()
    # Only the rotation's slice has its files read: one folder per scan at this size.
    assert signatures.calls == 5
    assert scanner.inspections == 30


def test_a_file_removed_from_an_old_folder_is_seen_at_the_next_scan(
        tmp_path: Path, state: Path) -> None:
    out = tmp_path / "out"
    folders = fill(out, state, range(10, 310, 10))
    scanner = CheckpointScanner(out)
    assert {i.status for i in scanner.scan()} == {Status.VALID}
    (folders[-1] / "random_states_0.pkl").unlink()  # the folder's own stat changes
    assert [i.path for i in scanner.scan() if i.status is Status.INVALID] == [folders[-1]]


def test_a_file_rewritten_in_place_is_seen_within_one_turn_of_the_rotation(
        tmp_path: Path, state: Path) -> None:
    out = tmp_path / "out"
    folders = fill(out, state, range(10, 310, 10))
    scanner = CheckpointScanner(out)
    scanner.scan()
    own = folders[12].stat().st_ctime_ns
    truncate(folders[12] / "optimizer.bin", 10)  # in place: the folder itself is untouched
    os.utime(folders[12] / "optimizer.bin", (OLD, OLD))
    assert folders[12].stat().st_ctime_ns == own
    def status() -> Status:
        return next(i.status for i in scanner.scan() if i.path == folders[12])

    scans = 1
    while status() is Status.VALID:
        scans += 1
        assert scans <= 30, "never re-checked"
    assert view(scanner.scan()) == view(list_checkpoints(out))


def test_a_new_checkpoint_costs_its_own_name_and_inspection(
        tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    fill(out, state, range(10, 2010, 10))  # 200 folders
    (out / "run-step00000010.safetensors").write_bytes(b"x")  # the saves' model files
    scanner = CheckpointScanner(out)
    scanner.scan()
    parsed = Counting(monkeypatch, "parse_name")
    before = scanner.inspections
    fill(out, state, range(2010, 2020, 10))
    infos = scanner.scan()
    assert (parsed.calls, scanner.inspections - before) == (1, 1)
    assert infos[0].step == 2010
    assert view(infos) == view(list_checkpoints(out))


def test_a_scan_with_a_deadline_goes_on_where_it_stopped(
        tmp_path: Path, state: Path) -> None:
    out = tmp_path / "out"
    fill(out, state, range(10, 110, 10))
    scanner = CheckpointScanner(out)
    assert scanner.scan_until(deadline=0.0, clock=lambda: 1.0) is None
    assert scanner.inspections == 0
    calls = 0
    # A clock that ticks once per folder: three folders per call, then the deadline.
    while (infos := scanner.scan_until(deadline=2.5, clock=itertools.count().__next__)) \
            is None:
        calls += 1
        assert scanner.inspections == 3 * calls
    assert (calls, scanner.inspections) == (3, 10)
    assert view(infos) == view(list_checkpoints(out))


def test_the_cache_agrees_with_a_fresh_scan_through_every_change(
        tmp_path: Path, state: Path) -> None:
    """Saves, deletions, half-saves, cut files (dated again, as a copy would be), renames
    aside, a folder replaced under the same name: after each, the cached scanner answers
    what a fresh one answers."""
    out = tmp_path / "out"
    rng = random.Random(15)
    steps = list(range(10, 410, 10))
    folders = fill(out, state, steps)
    scanner = CheckpointScanner(out)
    next_step = 420
    for round_ in range(40):
        action = rng.choice(["save", "delete", "half", "cut", "aside", "replace", "none"])
        present = sorted(p for p in out.iterdir() if p.is_dir())
        victim = rng.choice(present)
        if action == "save":
            fill(out, state, range(next_step, next_step + 1))
            next_step += 10
        elif action == "delete":
            shutil.rmtree(victim)
        elif action == "half":
            (fill(out, state, range(next_step, next_step + 1))[0] / "random_states_0.pkl"
             ).unlink()
            next_step += 10
        elif action == "cut":
            truncate(victim / "model.safetensors", 40)
            set_mtime(victim, OLD + round_)
        elif action == "aside":
            victim.rename(victim.with_name(victim.name + f".trainguard-kept-{round_}"))
        elif action == "replace":
            shutil.rmtree(victim)
            shutil.copytree(folders[0] if folders[0].exists() else state, victim)
        assert view(scanner.scan()) == view(list_checkpoints(out)), \
            (round_, action, victim.name)

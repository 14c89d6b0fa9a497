"""Three hangs, three manual rescues, one FluxGym run: does it end where an uninterrupted
run ends?

A FluxGym-shaped run (FluxGym's exact train.sh shape, dataset.toml, ``bash
outputs/<name>/train.sh`` from the FluxGym root) of the faithful sd-scripts simulator
hangs three times at different points.  Each time the test does by hand what trainguard's
pipeline will do (issue 11): kill the run's process group, ask the doctor for the newest
usable checkpoint, ask the trainer profile for the resume edits, move aside the
step-named outputs the resumed run would write over, and launch the edited command.

With the profile the run takes the optimizer steps an uninterrupted run takes plus only
the work lost since each last save (within one epoch in all), every state an
uninterrupted run keeps exists at the end, none is written over, and every rescue starts
from the newest state by true position.  Without the profile (the resume flag alone, as
today) the same run over-trains: that is the bug the profile fixes.

Not the real stack (no exporter, rules or remediator): that e2e needs the new pipeline.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers.common import REPO, wait_for
from helpers.sdscripts import (
    events,
    note_rename,
    optimizer_steps,
    replay_states,
    upstream_kept,
)

from demo.fluxgym import FluxGymRun, make_run, start_run
from trainguard.checkpoint import inspect_checkpoint, list_checkpoints
from trainguard.checkpoint.names import kept_name
from trainguard.ledger import Resume, ResumeLedger
from trainguard.trainers import ResumeEdits, at_risk, resume_edits

pytestmark = pytest.mark.slow

IMAGES, EPOCHS = 10, 8            # 10 steps an epoch, 80 steps
TOTAL = IMAGES * EPOCHS
SCENARIOS = {
    # state names, the three hang points (true steps, each a few steps after a save)
    "epoch": (["--save_every_n_epochs", "2"], [23, 45, 64]),
    "step": (["--save_every_n_steps", "5"], [27, 48, 66]),
}


def script_words(script: Path) -> list[str]:
    """The command of a FluxGym train.sh (one command continued with `` \\``)."""
    return shlex.split(script.read_text().replace("\\\n", " "))


def _value_follows(words: Sequence[str], i: int) -> bool:
    return i + 1 < len(words) and not words[i + 1].startswith("--")


def apply_edits(words: Sequence[str], edits: ResumeEdits) -> list[str]:
    """The test's own tiny argv edit: drop every occurrence of each set or removed flag
    (with its value), then append the set flags at the end."""
    drop = {f for f, _ in edits.set_flags} | set(edits.remove_flags)
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in drop:
            i += 2 if _value_follows(words, i) else 1
            continue
        out.append(w)
        i += 1
    for flag, value in edits.set_flags:
        out += [flag] if value is None else [flag, value]
    return out


@dataclass
class Outcome:
    evs: list[dict[str, Any]]
    lost: int = 0                     # steps since the last save, redone after each hang
    chosen: list[tuple[str, int]] = field(default_factory=list)  # (name, position)
    newest: list[tuple[str, int]] = field(default_factory=list)  # the truth at that time
    notes: list[str] = field(default_factory=list)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with_pgid = os.getpgid(proc.pid)
    os.killpg(with_pgid, signal.SIGKILL)
    proc.wait(30)


def _launch(run: FluxGymRun, words: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(run.log, "ab") as log:
        return subprocess.Popen(words, cwd=run.root, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def rescue_cycles(tmp: Path, scenario: str, *, profile: bool) -> tuple[FluxGymRun, Outcome]:
    save, hangs = SCENARIOS[scenario]
    run = make_run(tmp / "fluxgym", f"lora-{scenario}", images=IMAGES, flags=[
        "--max_train_epochs", str(EPOCHS), *save, "--sim_step_seconds", "0.02",
        "--sim_sample_seconds", "0", "--once_marker", str(tmp / "once"),
        *[w for h in hangs for w in ("--hang_at_step", str(h))]])
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONUNBUFFERED", None)
    words = script_words(run.script)
    ledger = ResumeLedger()
    out = Outcome(evs=[])
    proc = start_run(run, env)
    try:
        for n in range(1, len(hangs) + 1):
            wait_for(lambda n=n: len(events(run.record, "hang")) >= n, timeout=180,
                     what=f"hang {n}")
            hang = events(run.record, "hang")[n - 1]
            _kill_group(proc)
            infos = list_checkpoints(run.output_dir, ledger=ledger)
            chosen = next(i for i in infos if i.usable)
            book = replay_states(events(run.record))
            truth = book.newest({i.name for i in infos if i.usable})
            assert truth is not None
            out.chosen.append((chosen.name, book.positions[chosen.name]))
            out.newest.append((truth, book.positions[truth]))
            out.lost += hang["step"] - 1 - book.positions[chosen.name]
            if profile:
                edits = resume_edits(words, "--resume", chosen, ledger)
                for name in at_risk(os.listdir(run.output_dir), edits):
                    src = run.output_dir / name
                    dst = run.output_dir / kept_name(name, f"r{n}")
                    src.rename(dst)
                    note_rename(run.record, src, dst)
                    if name == chosen.name:
                        chosen = inspect_checkpoint(dst)
                edits = resume_edits(words, "--resume", chosen, ledger)
            else:
                edits = ResumeEdits("none", (("--resume", str(chosen.path)),), (), "plain")
            out.notes.append(edits.note)
            ledger = ledger.with_resume(Resume(time.time(), chosen.name, chosen.step,
                                               chosen.epoch, edits.profile))
            proc = _launch(run, apply_edits(words, edits), env)
        wait_for(lambda: events(run.record, "finish"), timeout=300, what="the run to finish")
        proc.wait(60)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    out.evs = events(run.record)
    return run, out


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_three_rescues_with_the_profile_end_where_an_uninterrupted_run_ends(
        tmp_path: Path, scenario: str) -> None:
    run, out = rescue_cycles(tmp_path, scenario, profile=True)
    # Every rescue started from the newest state by true position.
    assert out.chosen == out.newest, out.notes
    # The steps an uninterrupted run takes, plus only the work lost since each last save.
    taken = optimizer_steps(out.evs)
    assert taken == TOTAL + out.lost, (taken, out.lost, out.notes)
    assert taken - TOTAL <= IMAGES, "more than one epoch over an uninterrupted run"
    print(f"{scenario}, with the profile: {taken} optimizer steps for {TOTAL} "
          f"(lost work {out.lost}); edits: {' | '.join(out.notes)}")
    # Every state an uninterrupted run keeps exists (by position), none was written over.
    book = replay_states(out.evs)
    save = SCENARIOS[scenario][0]
    kept = upstream_kept(steps_per_epoch=IMAGES, epochs=EPOCHS, output_name=run.name,
                         save_every_n_epochs=int(save[1]) if "epochs" in save[0] else None,
                         save_every_n_steps=int(save[1]) if "steps" in save[0] else None)
    assert book.overwritten == []
    assert sorted(set(book.positions.values())) == sorted(set(kept.values()))
    on_disk = {p.name for p in run.output_dir.iterdir() if p.is_dir()}
    assert set(book.positions) <= on_disk
    # The run ended as an uninterrupted one does.
    finish = events(run.record, "finish")
    assert len(finish) == 1 and finish[0]["step"] == TOTAL
    assert (run.output_dir / f"{run.name}.safetensors").is_file()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_same_rescues_without_the_profile_over_train(tmp_path: Path, scenario: str) -> None:
    """The resume flag alone: sd-scripts restarts from train_state.json's current_step,
    which a resumed run undercounts (train_network.py:1248-1275), so epochs run again and
    states are written over in place."""
    _run, out = rescue_cycles(tmp_path, scenario, profile=False)
    assert out.chosen == out.newest  # the doctor chose right; the trainer went back anyway
    taken = optimizer_steps(out.evs)
    assert taken > TOTAL + out.lost + IMAGES, (taken, out.lost)
    assert replay_states(out.evs).overwritten
    print(f"{scenario}: {taken} optimizer steps for {TOTAL} (lost work {out.lost})")

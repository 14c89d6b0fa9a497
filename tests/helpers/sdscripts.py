"""Building blocks for tests that run the faithful trainer simulators.

    run_sim(SD_SIM, [...], cwd=...)          # one real run (CPU, accelerate), to the end
    events(record)                            # the simulator's --record lines
    optimizer_steps(evs)                      # optimizer steps really taken, all runs
    replay_states(evs)                        # which state each folder holds now, and
                                              # which folders were written over
    note_rename(record, src, dst)             # a test moving a folder aside says so
    upstream_kept(...)                        # what an uninterrupted sd-scripts run keeps

Positions are TRUE positions: optimizer steps an uninterrupted run has taken when a
state is saved (see tests/fixtures/sd_scripts_sim.py), whatever the trainer's own
``global_step`` says after a resume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.common import REPO

SD_SIM = REPO / "tests" / "fixtures" / "sd_scripts_sim.py"
DIFFUSERS_SIM = REPO / "tests" / "fixtures" / "diffusers_sim.py"

# library/train_util.py:90-98
EPOCH_STATE_NAME = "{}-{:06d}-state"
STEP_STATE_NAME = "{}-step{:08d}-state"
LAST_STATE_NAME = "{}-state"


def run_sim(script: Path, args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 300, expect_rc: int | None = 0) -> subprocess.CompletedProcess[str]:
    """Run a simulator to its end with this interpreter; output captured as the bytes a log
    file gets (stdout and stderr into one pipe, as under ``2>&1 | tee``; ``\r`` kept)."""
    full_env = dict(os.environ if env is None else env)
    full_env.pop("PYTHONUNBUFFERED", None)  # FluxGym sets none: prints stay buffered
    raw = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=full_env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=timeout, check=False)
    proc = subprocess.CompletedProcess(raw.args, raw.returncode,
                                       raw.stdout.decode("utf-8", errors="replace"))
    if expect_rc is not None and proc.returncode != expect_rc:
        raise AssertionError(f"{script.name} exited {proc.returncode}, expected {expect_rc}:\n"
                             f"{proc.stdout[-4000:]}")
    return proc


def events(record: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The record's events (oldest first), optionally only those of one kind."""
    if not record.exists():
        return []
    evs = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return [e for e in evs if kind is None or e["event"] == kind]


def optimizer_steps(evs: list[dict[str, Any]]) -> int:
    """Optimizer steps really taken, over every run in the record."""
    return sum(1 for e in evs if e["event"] == "step")


def note_rename(record: Path, src: Path, dst: Path) -> None:
    """Record that a test (standing in for trainguard) moved a folder or file aside."""
    with open(record, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "rename", "from": str(src), "to": str(dst)}) + "\n")


@dataclass
class StateBook:
    """What each state folder holds now (its true position), replayed from the record."""

    positions: dict[str, int] = field(default_factory=dict)  # folder name -> position
    overwritten: list[str] = field(default_factory=list)     # saved into a folder that
                                                             # already held a state

    def newest(self, usable: set[str] | None = None) -> str | None:
        names = [n for n in self.positions if usable is None or n in usable]
        return max(names, key=lambda n: self.positions[n], default=None)


def replay_states(evs: list[dict[str, Any]]) -> StateBook:
    """Replay state saves, removals and renames in order (folder names only)."""
    book = StateBook()
    for e in evs:
        if e["event"] == "save" and e.get("kind") == "state":
            name = Path(e["path"]).name
            if name in book.positions:
                book.overwritten.append(name)
            book.positions[name] = int(e["position"])
        elif e["event"] == "remove" and e.get("kind") == "state":
            book.positions.pop(Path(e["path"]).name, None)
        elif e["event"] == "rename":
            src, dst = Path(e["from"]).name, Path(e["to"]).name
            if src in book.positions:
                book.positions[dst] = book.positions.pop(src)
    return book


def upstream_kept(*, steps_per_epoch: int, epochs: int, output_name: str,
                  save_every_n_epochs: int | None = None, save_every_n_steps: int | None = None,
                  save_last_n_epochs_state: int | None = None,
                  save_last_n_steps_state: int | None = None) -> dict[str, int]:
    """State folders an uninterrupted sd-scripts run with ``--save_state`` ends with, and the
    position each holds: train_network.py:1497-1504 (step saves, no check against the end),
    :1693-1705 (epoch saves, not after the last epoch), :1722 (the final state), and the
    deletions of library/train_util.py:5951-5957 and :5975-5983."""
    kept: dict[str, int] = {}
    gs = 0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            gs += 1
            if save_every_n_steps and gs % save_every_n_steps == 0:
                kept[STEP_STATE_NAME.format(output_name, gs)] = gs
                if save_last_n_steps_state is not None:
                    rm = gs - save_last_n_steps_state - 1
                    rm -= rm % save_every_n_steps
                    if rm > 0:
                        kept.pop(STEP_STATE_NAME.format(output_name, rm), None)
        e = epoch + 1
        if save_every_n_epochs and e % save_every_n_epochs == 0 and e < epochs:
            kept[EPOCH_STATE_NAME.format(output_name, e)] = gs
            if save_last_n_epochs_state is not None:
                kept.pop(EPOCH_STATE_NAME.format(
                    output_name, e - save_every_n_epochs * save_last_n_epochs_state), None)
    kept[LAST_STATE_NAME.format(output_name)] = gs
    return kept

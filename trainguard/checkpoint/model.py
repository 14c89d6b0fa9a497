"""What the doctor says about one checkpoint folder.

Kept apart from the inspection code so the exporter and the remediator can import the
data model without pulling in anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any


class Status(str, Enum):
    """Whether a checkpoint's files are whole, as the CLI and the metrics spell it.

    Status says nothing about a particular environment: whether the torch/accelerate/numpy
    that will resume can load the files as they are is the compatibility verdict's answer
    (:func:`trainguard.checkpoint.compat.verdict`), and only a verdict asks for a repair.
    """

    VALID = "valid"            # every file whole: a resume may start from it
    REPAIRABLE = "repairable"  # whole but needs a repair before any resume; the doctor
                               # knows no such defect today (accelerate's RNG step 0 is
                               # normal, see doctor.py), the value stays for the contract
    INVALID = "invalid"        # missing, cut or unsafe parts: never resume from it
    WRITING = "writing"        # incomplete but fresh: a save is probably in progress


USABLE = frozenset({Status.VALID, Status.REPAIRABLE})


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint folder, as inspected (never modified)."""

    path: Path                  # absolute
    name: str                   # folder name
    step: int | None            # best step known, see ``step_source``
    step_source: str | None     # "trainer_state.json" | "scheduler.bin" |
                                # "train_state.json" | "name" | "random_states"
    epoch: int | None
    status: Status
    problems: tuple[str, ...]   # human-readable, one per problem
    mtime: float                # newest mtime of any file in it (0.0 when empty)
    rng_step: int | None        # accelerate's `step` in random_states_0.pkl
    train_state_step: int | None
    numpy_module: str | None    # "numpy.core" | "numpy._core": how the RNG pickle names numpy
    final: bool = False         # sd-scripts' end-of-training `{name}-state` folder
    save_index: int | None = None  # N of accelerate's automatic `checkpoint_{N}` name
    layout: str = "accelerate"  # "accelerate" (save_state) | "trainer" (HF Trainer)
    name_kind: str | None = None   # what the name says: "step" | "epoch" | "final" |
                                   # "checkpoint" | "iteration" (names.py)
    name_step: int | None = None   # the number in a step-named folder (sd-scripts' own
                                   # counter: it restarts on resume, see order.py)
    scheduler_step: int | None = None  # optimizer steps the LR scheduler counted along
                                       # this checkpoint's line of resumes (scheduler.bin;
                                       # read for sd-scripts states only)
    processes: int = 1          # how many processes saved it (random_states_{rank}.pkl)
    kept_aside: bool = False    # renamed aside by trainguard before a resume would have
                                # written over it (trainguard.trainers)

    @property
    def usable(self) -> bool:
        """Whole (valid, or repairable): something a resume may start from, once the
        compatibility verdict for the resuming environment agrees."""
        return self.status in USABLE

    def to_json(self) -> dict[str, Any]:
        """The DESIGN.md §2 ``--json`` object."""
        return {
            "path": str(self.path),
            "name": self.name,
            "step": self.step,
            "step_source": self.step_source,
            "epoch": self.epoch,
            "status": self.status.value,
            "problems": list(self.problems),
            "mtime": self.mtime,
            "rng_step": self.rng_step,
            "train_state_step": self.train_state_step,
            "numpy_module": self.numpy_module,
            "final": self.final,
            "save_index": self.save_index,
            "layout": self.layout,
            "name_kind": self.name_kind,
            "name_step": self.name_step,
            "scheduler_step": self.scheduler_step,
            "processes": self.processes,
            "kept_aside": self.kept_aside,
        }

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
    """How usable a checkpoint is, as the CLI and the metrics spell it."""

    VALID = "valid"            # accelerate will restore it as the user expects
    REPAIRABLE = "repairable"  # whole, but a known defect (seed 000) that repair fixes
    INVALID = "invalid"        # missing, cut or unsafe parts: never resume from it
    WRITING = "writing"        # incomplete but fresh: a save is probably in progress


USABLE = frozenset({Status.VALID, Status.REPAIRABLE})


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint folder, as inspected (never modified)."""

    path: Path                  # absolute
    name: str                   # folder name
    step: int | None            # best step known, see ``step_source``
    step_source: str | None     # "train_state.json" | "trainer_state.json" | "name" |
                                # "random_states"
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

    @property
    def usable(self) -> bool:
        """Valid, or repairable: something a resume may start from."""
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
        }

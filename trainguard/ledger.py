"""What trainguard itself has done to a job: the runs it launched and where each started.

Why a ledger: a trainer's own counters are not always the truth after a resume.  kohya
sd-scripts restarts ``global_step`` at 0 (or at the within-epoch remainder) on every
``--resume`` (train_network.py:1258-1275, sd3 branch), so a state written by a resumed run
records the new run's count, not how far training got.  The doctor judges most of that
from the files (epoch, the LR scheduler's count, accelerate's in-epoch counter; see
:mod:`trainguard.checkpoint.order`), but where a checkpoint carries nothing but a
restarting counter, knowing *which run wrote it* settles the order: trainguard resumes
from the newest usable checkpoint, so anything a later trainguard run wrote is past
everything usable that existed when it started.

The data type is read-only and small.  The remediator appends one :class:`Resume` per
launch, persists it (``to_json``/``from_json``), and passes the ledger to
``list_checkpoints(..., ledger=)`` and ``trainguard.trainers.resume_edits``.  Everything
works without one (``None``); a ledger only sharpens the order and lets a profile trust a
counter it could not trust otherwise.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Resume:
    """One run trainguard launched from a checkpoint."""

    launched_at: float        # unix time of the launch: the run wrote nothing before it
    checkpoint: str           # the checkpoint folder's name, relative to the output folder
    step: int | None = None   # CheckpointInfo.step of that checkpoint when it was chosen
    epoch: int | None = None  # CheckpointInfo.epoch of that checkpoint
    profile: str = ""         # the trainers profile whose edits the launch carried
    reached: int | None = None  # how far the run got (the step last seen) once it ended;
                                # for reports: the order needs only launched_at

    def to_json(self) -> dict[str, Any]:
        return {"launched_at": self.launched_at, "checkpoint": self.checkpoint,
                "step": self.step, "epoch": self.epoch, "profile": self.profile,
                "reached": self.reached}


@dataclass(frozen=True)
class ResumeLedger:
    """trainguard's resumes of one job, oldest first (the order is enforced)."""

    resumes: tuple[Resume, ...] = ()

    def __post_init__(self) -> None:
        times = [r.launched_at for r in self.resumes]
        if times != sorted(times):
            object.__setattr__(self, "resumes",
                               tuple(sorted(self.resumes, key=lambda r: r.launched_at)))

    def run_of(self, mtime: float) -> int:
        """Which run wrote a file last modified at ``mtime``: 0 for the run before any
        trainguard resume, n for the run of the n-th resume."""
        return bisect.bisect_right([r.launched_at for r in self.resumes], mtime)

    def latest(self) -> Resume | None:
        """The last resume, or None."""
        return self.resumes[-1] if self.resumes else None

    def with_resume(self, resume: Resume) -> ResumeLedger:
        """A new ledger with ``resume`` added."""
        return ResumeLedger((*self.resumes, resume))

    def with_reached(self, step: int) -> ResumeLedger:
        """A new ledger whose latest run got as far as ``step`` (unchanged when empty)."""
        if not self.resumes:
            return self
        return ResumeLedger((*self.resumes[:-1], replace(self.resumes[-1], reached=step)))

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.resumes]

    @classmethod
    def from_json(cls, data: Iterable[Mapping[str, Any]]) -> ResumeLedger:
        """Read what :meth:`to_json` wrote; ValueError naming the bad entry otherwise."""
        out = []
        for n, item in enumerate(data):
            where = f"ledger entry {n}"
            if not isinstance(item, Mapping):
                raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
            at = item.get("launched_at")
            if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
                raise ValueError(f"{where}: launched_at is {at!r}, expected a unix time")
            name = item.get("checkpoint")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}: checkpoint is {name!r}, expected a folder name")
            for key in ("step", "epoch", "reached"):
                v = item.get(key)
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                    raise ValueError(f"{where}: {key} is {v!r}, expected a whole number")
            profile = item.get("profile", "")
            if not isinstance(profile, str):
                raise ValueError(f"{where}: profile is {profile!r}, expected a string")
            out.append(Resume(float(at), name, item.get("step"), item.get("epoch"), profile,
                              item.get("reached")))
        return cls(tuple(out))

"""Which folders in an output folder are checkpoints, and what their names say.

Names (DESIGN.md §4, sd-scripts library/train_util.py EPOCH_STATE_NAME /
STEP_STATE_NAME / LAST_STATE_NAME; diffusers examples' ``checkpoint-{global_step}``):

    {name}-step{step:08d}-state   a step save        -> step
    {name}-{epoch:06d}-state      an epoch-end save  -> epoch only
    {name}-state                  end of training    -> neither; sorts after equal steps
    checkpoint-{N}                accelerate/diffusers -> step
    checkpoint_{N}                accelerate's automatic_checkpoint_naming, in
                                  ``{project_dir}/checkpoints/``  -> save index only

The last one's number counts saves (ProjectConfiguration.iteration), not steps: it
orders the folders but says nothing about how far training got.

    <any of the above>.trainguard-kept-<stamp>
                                  a folder trainguard renamed aside before a resumed
                                  run would have written over it in place (sd-scripts
                                  reuses step names after a resume; trainguard.trainers)
                                  -> what the original name says, ``kept=True``
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STEP = re.compile(r"^(?P<name>.+)-step(?P<step>\d+)-state$")
_EPOCH = re.compile(r"^(?P<name>.+)-(?P<epoch>\d+)-state$")
_LAST = re.compile(r"^(?P<name>.+)-state$")
_CKPT = re.compile(r"^checkpoint-(?P<step>\d+)$")
_ITERATION = re.compile(r"^checkpoint_(?P<index>\d+)$")
KEPT_INFIX = ".trainguard-kept-"
_KEPT = re.compile(r"^(?P<base>.+)" + re.escape(KEPT_INFIX) + r"[0-9A-Za-z._-]+$")

# The folder accelerate puts automatically named checkpoints in, under its project_dir.
AUTOMATIC_FOLDER = "checkpoints"


@dataclass(frozen=True)
class NameInfo:
    kind: str            # "step" | "epoch" | "final" | "checkpoint" | "iteration"
    step: int | None
    epoch: int | None
    index: int | None = None  # accelerate's save counter (checkpoint_{N})
    kept: bool = False        # renamed aside by trainguard (KEPT_INFIX)

    @property
    def final(self) -> bool:
        return self.kind == "final"


def kept_name(folder: str, stamp: str) -> str:
    """The name trainguard gives ``folder`` when it moves it aside (see trainguard.trainers)."""
    return f"{folder}{KEPT_INFIX}{stamp}"


def parse_name(folder: str) -> NameInfo | None:
    """What a folder name says, or None when it is not a checkpoint name."""
    if (m := _KEPT.match(folder)) and KEPT_INFIX not in m["base"]:
        base = parse_name(m["base"])
        if base is None:
            return None
        return NameInfo(base.kind, base.step, base.epoch, base.index, kept=True)
    if m := _STEP.match(folder):
        return NameInfo("step", int(m["step"]), None)
    if m := _EPOCH.match(folder):
        return NameInfo("epoch", None, int(m["epoch"]))
    if _LAST.match(folder):
        return NameInfo("final", None, None)
    if m := _CKPT.match(folder):
        return NameInfo("checkpoint", int(m["step"]), None)
    if m := _ITERATION.match(folder):
        return NameInfo("iteration", None, None, int(m["index"]))
    return None

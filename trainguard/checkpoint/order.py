"""Order checkpoints by how far training really got.

Why not by one step number: a trainer's own step counter is not always the progress.
kohya sd-scripts (train_network.py, sd3 branch, commit 48d368fa) writes
``train_state.json`` = {"current_epoch", "current_step": global_step} (:948), and on
``--resume`` restarts ``global_step`` at 0, or at the within-epoch remainder with
``--skip_until_initial_step`` (:1258-1275, :1340-1344).  After one resume the newest epoch
state can say ``current_step`` 20 while an older one says 40, and a step-named folder
``{name}-step00000010-state`` can be rewritten, in place, by a later run at true step 30.
What stays true across resumes, in the order used:

1. sd-scripts states (an epoch is known: ``current_epoch`` or the epoch in the name) come
   first, ordered by **epoch**: ``current_epoch`` is set from the loop's own epoch index
   (:1403), which resumes correctly.
2. within an epoch, the **LR scheduler's count** (doctor: ``scheduler_step``), saved and
   restored with every state, so it counts steps along the line of resumes (a half-save
   that died before its scheduler file counts by its train_state.json);
3. then **end of epoch** before mid-epoch: an epoch-named or final folder, or accelerate's
   RNG ``step`` of 0 (accelerate returns it to 0 at every dataloader end,
   Accelerator._do_sync, and sd-scripts never sets it);
4. then accelerate's RNG ``step`` itself: micro-batches since the epoch began, restored
   by ``load_state`` and advanced by every batch trained after a skip;
5. then which **trainguard run** wrote it (:class:`trainguard.ledger.ResumeLedger`, when
   given): a later run started from the newest usable checkpoint of its time;
6. then the trainer's own count (``current_step`` or the step in the name), the final
   folder, the mtime and the name, only to break what is left.

Checkpoints with no epoch (diffusers ``checkpoint-N``, Trainer checkpoints, accelerate's
``checkpoint_N``) follow, ordered by the ledger's run, then their training step (the
Trainer's ``global_step``, the name: those trainers keep counting on resume), then the
final folder, accelerate's save index, the RNG step, the mtime, the name.  A folder of
both kinds is not something one trainer writes; the sd-scripts ones rank higher.

The mtime is never the main key (DESIGN.md §3.4: a copied folder has a new mtime and an
old step); it only separates folders that agree on everything else.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainguard.checkpoint.model import CheckpointInfo
from trainguard.ledger import ResumeLedger

# Step sources that are a training step at all (accelerate's RNG counter is not).
TRAINING_STEP_SOURCES = ("trainer_state.json", "scheduler.bin", "train_state.json", "name")

Key = tuple[int | float | str, ...]


def at_epoch_end(info: CheckpointInfo) -> bool:
    """Written at the end of an epoch: sd-scripts' epoch-named or final folder, or a
    state whose accelerate RNG ``step`` is back at 0 (see the module docstring)."""
    return info.final or info.name_kind == "epoch" or info.rng_step == 0


def counted_steps(info: CheckpointInfo) -> int | None:
    """The LR scheduler's count of optimizer steps for an sd-scripts state, when it can be
    trusted: at least train_state.json's own count (a scheduler stepped per epoch, or a
    state whose scheduler was not restored, counts less)."""
    if info.scheduler_step is None or info.train_state_step is None \
            or info.scheduler_step < info.train_state_step:
        return None
    return info.scheduler_step


def progress_key(info: CheckpointInfo, ledger: ResumeLedger | None = None) -> Key:
    """Ascending = less far; sort with ``reverse=True`` for the newest first."""
    run = ledger.run_of(info.mtime) if ledger is not None else 0
    if info.epoch is not None:
        end = at_epoch_end(info)
        counted = counted_steps(info)
        if counted is None and info.scheduler_step is None and info.rng_step is None:
            # A save that died before its scheduler and RNG files (accelerate writes them
            # after the weights and optimizer): train_state.json, written first, is all
            # it has; in the run it belongs to, that is the count the others carry too.
            counted = info.train_state_step
        own = info.train_state_step if info.train_state_step is not None else info.name_step
        return (1, info.epoch, -1 if counted is None else counted, 1 if end else 0,
                -1 if end or info.rng_step is None else info.rng_step, run,
                -1 if own is None else own, 1 if info.final else 0, info.mtime, info.name)
    trained = info.step if info.step_source in TRAINING_STEP_SOURCES else None
    return (0, run, 0 if trained is None else 1, -1 if trained is None else trained,
            1 if info.final else 0, -1 if info.save_index is None else info.save_index,
            -1 if info.rng_step is None else info.rng_step, info.mtime, info.name)


def by_progress(infos: Iterable[CheckpointInfo],
                ledger: ResumeLedger | None = None) -> list[CheckpointInfo]:
    """Newest (furthest) first."""
    return sorted(infos, key=lambda i: progress_key(i, ledger), reverse=True)

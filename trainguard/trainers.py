"""Per-trainer resume profiles: what to add to a resumed command so the trainer starts
where the run really is.

Why: a resume flag alone does not make every trainer continue.  kohya sd-scripts' LoRA
trainer (train_network.py, sd3 branch FluxGym clones; lines from commit 48d368fa) reads
``train_state.json``'s ``current_step`` on ``--resume`` (:963-969) and, unless told
otherwise, skips only ``current_step // steps_per_epoch`` whole epochs and restarts
``global_step`` at 0 (:1248-1275).  ``current_step`` is what the *writing* run counted, so
after one resume it undercounts: the next resume repeats epochs (bmaltais/kohya_ss#2771).
``--initial_epoch``/``--initial_step`` win over the file (:1233-1245) and
``--skip_until_initial_step`` skips the batches already trained (:1259-1269, :1340-1344,
:1411-1419).  All three exist since sd-scripts commit 4dbcef42 (2024-06-04), before FLUX
training was added (36b2e6fc, 2024-08-09), so every FluxGym install has them.

The HF Trainer and the diffusers examples continue on their own from the checkpoint's
true step (transformers trainer.py ``_init_training_state``; diffusers
train_text_to_image.py:928-953 reads ``global_step`` from ``checkpoint-N``): nothing is
added for them.  Unknown trainers get the plain resume flag.

Interface: :func:`resume_edits` takes the training command's words (the argv, e.g.
``["accelerate", "launch", ..., "sd-scripts/flux_train_network.py", "--output_dir", ...]``),
the job's resume flag, the chosen checkpoint and, optionally, trainguard's ledger of
earlier resumes, and returns :class:`ResumeEdits`: flags to set (each replacing every
existing occurrence), flags to remove, and one log line saying what and why.  The flags
belong to the training script, after its path.  Pure: no I/O, no side effects.

One more thing only the caller can do: sd-scripts names step states by its own
``global_step`` (library/train_util.py:5967), which a resumed run restarts at the
within-epoch remainder even with ``--skip_until_initial_step`` (train_network.py:1344),
so it writes ``{name}-step{N}-state`` folders (and ``{name}-step{N}.safetensors``) over
the older run's, in place.  ``ResumeEdits.rewrites`` says which names will be written
again; :func:`at_risk` lists the existing ones; renaming them aside first
(``trainguard.checkpoint.names.kept_name``) keeps them, and the doctor still lists them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from trainguard import script
from trainguard.checkpoint.model import CheckpointInfo
from trainguard.checkpoint.names import KEPT_INFIX
from trainguard.checkpoint.order import at_epoch_end, counted_steps
from trainguard.ledger import ResumeLedger

SD_SCRIPTS = "sd-scripts"
SD_SCRIPTS_FINETUNE = "sd-scripts-finetune"
DIFFUSERS = "diffusers-examples"
HF_TRAINER = "hf-trainer"
ACCELERATE = "accelerate"
UNKNOWN = "unknown"

INITIAL_EPOCH = "--initial_epoch"
INITIAL_STEP = "--initial_step"
SKIP = "--skip_until_initial_step"

# train_network.py and the trainers built on its NetworkTrainer (flux_, sdxl_, sd3_,
# lumina_, anima_, hunyuan_image_train_network.py): the only sd-scripts trainers with
# the initial-step flags (git grep skip_until_initial_step at 48d368fa).
_SD_NETWORK = re.compile(r"^([a-z0-9]+_)*train_network\.py$")
# sd-scripts' other trainers: they resume the state, then loop from epoch 0 with
# global_step 0 (e.g. flux_train.py:474, :553, :583) and have no flag to say otherwise.
_SD_OTHER = frozenset({
    "flux_train.py", "sdxl_train.py", "sd3_train.py", "fine_tune.py", "train_db.py",
    "train_textual_inversion.py", "sdxl_train_textual_inversion.py", "lumina_train.py",
    "flux_train_control_net.py", "sdxl_train_control_net.py", "sdxl_train_control_net_lllite.py",
    "train_control_net.py", "anima_train.py", "hunyuan_image_train.py"})
_DIFFUSERS_SCRIPT = re.compile(r"^train_[a-z0-9_]+\.py$")
_TRAINER_SCRIPT = re.compile(r"^run_[a-z0-9_]+\.py$")
_LAUNCHERS = frozenset({"accelerate", "accelerate-launch", "torchrun", "deepspeed"})


@dataclass(frozen=True)
class Rewrites:
    """Step-named outputs a resumed sd-scripts run will write again, in place: its
    ``global_step`` restarts at ``above`` and step saves are named by it."""

    prefix: str   # "{output_name}-step" (sd-scripts' default output_name for steps: "at")
    above: int    # every N > above may be written again

    def matches(self, name: str) -> bool:
        """``{prefix}{N:08d}-state`` folders and ``{prefix}{N:08d}.ext`` files, N > above
        (folders already kept aside are not at risk)."""
        if KEPT_INFIX in name or not name.startswith(self.prefix):
            return False
        m = re.match(r"^(\d{8,})(-state|\.[A-Za-z0-9]+)$", name[len(self.prefix):])
        return m is not None and int(m[1]) > self.above


@dataclass(frozen=True)
class ResumeEdits:
    """What the resumed command needs beyond the user's own flags."""

    profile: str
    set_flags: tuple[tuple[str, str | None], ...]  # (flag, value or None for a bare
                                                   # switch), each replacing every
                                                   # existing occurrence
    remove_flags: tuple[str, ...]
    note: str     # one log line: what and why, with the upstream line
    rewrites: Rewrites | None = None  # sd-scripts: names the resumed run writes again


def at_risk(names: Iterable[str], edits: ResumeEdits) -> list[str]:
    """Which of ``names`` (an output folder's entries) the resumed run will write over."""
    if edits.rewrites is None:
        return []
    return sorted(n for n in names if edits.rewrites.matches(n))


def script_index(words: Sequence[str]) -> int | None:
    """Index of the training script (the first ``*.py`` word), or None."""
    return next((i for i, w in enumerate(words) if w.endswith(".py")), None)


def _script_args(words: Sequence[str]) -> Sequence[str]:
    i = script_index(words)
    return words[i + 1:] if i is not None else words


def flag_value(words: Sequence[str], flag: str) -> str | None:
    """The last value of ``flag`` among the script's own arguments, or None."""
    return script.flag_value(_script_args(words), flag)


def has_flag(words: Sequence[str], flag: str) -> bool:
    """Whether the script's own arguments give ``flag``."""
    return script.has_flag(_script_args(words), flag)


def profile_name(words: Sequence[str]) -> str:
    """Which trainer the command runs, by its script (and, for the Trainer, its flags)."""
    i = script_index(words)
    script = PurePath(words[i]) if i is not None else None
    base = script.name if script is not None else ""
    if _SD_NETWORK.match(base):
        return SD_SCRIPTS
    if base in _SD_OTHER:
        return SD_SCRIPTS_FINETUNE
    if script is not None and _DIFFUSERS_SCRIPT.match(base) and (
            "examples" in script.parts or has_flag(words, "--checkpointing_steps")):
        return DIFFUSERS
    if _TRAINER_SCRIPT.match(base) or has_flag(words, "--do_train"):
        return HF_TRAINER
    if words and PurePath(words[0]).name in _LAUNCHERS:
        return ACCELERATE
    return UNKNOWN


def _whole(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _true_step(info: CheckpointInfo, ledger: ResumeLedger | None) -> tuple[int | None, str]:
    """Optimizer steps done at ``info`` and why that number can be trusted."""
    counted = counted_steps(info)
    if counted is not None:
        return counted, "scheduler.bin's count"
    if info.train_state_step is not None:
        if ledger is not None and ledger.run_of(info.mtime) == 0:
            return info.train_state_step, "train_state.json of the run before any resume"
        if info.epoch == 1:
            return info.train_state_step, "train_state.json (first epoch: never undercounted)"
    return None, ""


def _sd_scripts(words: Sequence[str], resume: tuple[str, str | None], info: CheckpointInfo,
                ledger: ResumeLedger | None) -> ResumeEdits:
    every_steps = has_flag(words, "--save_every_n_steps")
    name = flag_value(words, "--output_name") or "at"  # train_util.py:97 DEFAULT_STEP_NAME
    gas = max(1, _whole(flag_value(words, "--gradient_accumulation_steps"), 1))

    def done(set_: tuple[tuple[str, str | None], ...], remove: tuple[str, ...], note: str,
             restart_at: int | None) -> ResumeEdits:
        rewrites = (Rewrites(f"{name}-step", restart_at)
                    if every_steps and restart_at is not None else None)
        return ResumeEdits(SD_SCRIPTS, (resume, *set_), remove, f"sd-scripts: {note}", rewrites)

    if info.final:
        return done((), (), f"{info.name} is the end-of-training state: the run had finished; "
                    "resuming it trips train_network.py:1253's max_train_steps assert", None)
    epoch = info.epoch
    if epoch is None:
        return done((), (), f"{info.name} has no epoch (no train_state.json): plain resume, "
                    "sd-scripts derives its start from the state alone (:1248-1250)", 0)
    steps, why = _true_step(info, ledger)
    if info.processes > 1:
        # :1243-1245 divides the per-process dataloader length by num_processes again, so
        # --initial_epoch lands on the wrong epoch with several GPUs; --initial_step does not.
        if steps is None or not at_epoch_end(info):
            return done((), (), f"{info.name} was saved by {info.processes} processes and its "
                        "true step is unknown or mid-epoch: plain resume (--initial_epoch is "
                        "wrong with several processes, train_network.py:1243-1245)", 0)
        return done(((INITIAL_STEP, str(steps)),), (INITIAL_EPOCH, SKIP),
                    f"{info.name}: {INITIAL_STEP} {steps} ({why}; {info.processes} processes, "
                    "where --initial_epoch miscounts, :1243-1245)", 0)
    if at_epoch_end(info):
        return done(((INITIAL_EPOCH, str(epoch + 1)),), (INITIAL_STEP, SKIP),
                    f"{info.name} ends epoch {epoch}: {INITIAL_EPOCH} {epoch + 1}, since "
                    "train_network.py:1248-1273 would otherwise start at train_state.json's "
                    f"current_step {info.train_state_step} // steps per epoch, which a "
                    "resumed run undercounts (global_step restarts at 0, :1275)", 0)
    if steps is not None and gas == 1:
        within = info.rng_step if info.rng_step is not None else 0
        return done(((INITIAL_STEP, str(steps)), (SKIP, None)), (INITIAL_EPOCH,),
                    f"{info.name} is {within or 'some'} steps into epoch {epoch}: "
                    f"{INITIAL_STEP} {steps} ({why}) and {SKIP}, so train_network.py:"
                    "1259-1269 and 1411-1419 skip the batches already trained instead of "
                    "restarting from current_step (:1248-1250)",
                    within if info.rng_step is not None else 0)
    reason = ("gradient accumulation makes sd-scripts' skip arithmetic wrong (:1266-1269 "
              "multiplies by it, then divides by update steps)" if gas > 1 else
              "its true step is unknown (no trusted scheduler count, not the first run)")
    return done(((INITIAL_EPOCH, str(epoch)),), (INITIAL_STEP, SKIP),
                f"{info.name} is mid-epoch {epoch} and {reason}: {INITIAL_EPOCH} {epoch} "
                "repeats at most that epoch", 0)


def resume_edits(words: Sequence[str], resume_flag: str, checkpoint: CheckpointInfo,
                 ledger: ResumeLedger | None = None) -> ResumeEdits:
    """The edits that make the trainer of ``words`` resume at ``checkpoint``'s true point."""
    resume: tuple[str, str | None] = (resume_flag, str(checkpoint.path))
    profile = profile_name(words)
    if profile == SD_SCRIPTS:
        return _sd_scripts(words, resume, checkpoint, ledger)
    notes = {
        SD_SCRIPTS_FINETUNE: "this sd-scripts trainer has no initial-step flags and loops "
                             "from epoch 0 after --resume (e.g. flux_train.py:553, :583): "
                             "plain resume, the finished epochs will run again",
        DIFFUSERS: "the diffusers example reads global_step from checkpoint-N and starts at "
                   "epoch global_step // steps per epoch (train_text_to_image.py:946-950): "
                   "plain resume",
        HF_TRAINER: "the Trainer restores global_step from trainer_state.json and skips "
                    "what it trained (transformers trainer.py _init_training_state): "
                    "plain resume",
        ACCELERATE: "a plain accelerate script: it decides from the state itself; plain resume",
        UNKNOWN: "unknown trainer: plain resume",
    }
    return ResumeEdits(profile, (resume,), (), f"{profile}: {notes[profile]}")

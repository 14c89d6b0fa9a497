"""Inspect one checkpoint folder: whole or not, which step, safe to load or not.

Never imports torch, never unpickles with real globals, never reads tensor data: the
cost is a few stats, two headers, a few 98-byte tails and one ~8 KB RNG pickle, the same
for a 1 MB LoRA and a 20 GB model.

Files accelerate's ``save_state`` writes, in order (accelerate/checkpointing.py
``save_accelerator_state``): pre-hooks (sd-scripts' train_state.json), model weights,
optimizer, scheduler, sampler/dataloader/scaler, ``random_states_{rank}.pkl``, custom
objects.  The RNG file comes last, so its presence marks a finished save; a folder
without it is either being written (fresh) or a dead half-save (old).

Decisions where the format leaves room:
* weights: at least one of model*.safetensors, pytorch_model*.bin or a sharded
  ``*.index.json``, or, when none of those, weights a save hook wrote instead.  A
  ``register_save_state_pre_hook`` may pop every model from accelerate's list and save
  its own files: diffusers' LoRA scripts write ``pytorch_lora_weights.safetensors``,
  others ``adapter_model.safetensors`` or ``save_pretrained`` sub-folders (``unet/``,
  ``transformer/``).  Such files are checked just as strictly (safetensors header,
  zip tail); a folder with no weights of any kind is incomplete.
* optimizer.bin is required (a training state without optimizer cannot resume
  training), or its sharded forms: FSDP's ``optimizer_N/`` folder of ``.distcp`` shards,
  DeepSpeed's ``*optim_states.pt`` in its own sub-folder.  Their model shards
  (``pytorch_model_fsdp_N/*.distcp``, DeepSpeed's ``*model_states.pt``) count as weights;
  ``.distcp`` shards have no cheap integrity check, so only their presence is checked.
* scheduler.bin is optional: a run without a scheduler has none, and once the RNG file
  exists the scheduler, written before it, cannot be "still coming".
* Hugging Face Trainer checkpoints (``checkpoint-{N}`` with ``trainer_state.json``,
  ``optimizer.pt``, ``rng_state.pth`` and no accelerate RNG file) are judged by the
  Trainer's own order (transformers ``Trainer._save_checkpoint``): weights, optimizer,
  scheduler, ``rng_state[_rank].pth``, then ``trainer_state.json`` last, whose
  ``global_step`` is the step.  Both of the last two mark a finished save.
* every weights file counts, in sub-folders too: ``save_pretrained`` writes the model
  into ``unet/`` or ``transformer/`` (diffusers examples' save hooks, e.g.
  train_text_to_image.py:661-670) and shards it above ``max_shard_size`` (a FLUX
  transformer at diffusers' 10GB default) with a ``*.safetensors.index.json``; a shard
  the index names that is missing or cut makes the checkpoint incomplete, wherever the
  index sits.  One level of sub-folders is read: ``save_pretrained`` writes flat.
  Their files count for the folder's mtime too (a diffusers save writes its sub-folder
  first, minutes for a big model: that is a save in progress, not a dead one).
* step: the Trainer's ``global_step``; for sd-scripts states (train_state.json) the LR
  scheduler's count when it is above train_state.json's, else ``current_step``; else
  the step in the folder name, else the RNG file's ``step``.  Why the scheduler:
  sd-scripts' ``current_step`` is the *resumed run's* own count (train_network.py:948
  writes global_step, and :1258-1275 restart global_step at 0 or at the within-epoch
  remainder on every --resume), while the scheduler's ``last_epoch`` is saved and
  restored with the state (accelerate's scheduler.bin) and advanced once per process
  per optimizer step (accelerate's AcceleratedScheduler.step), so it counts the steps
  really taken along the checkpoint's line of resumes.  It is trusted only for
  sd-scripts states, whose schedulers step per optimizer step (train_network.py:1458):
  a hand-written loop may step its scheduler per epoch.  The name ranks above the RNG
  step because accelerate's ``step`` is its own micro-batch counter, reset at every
  dataloader end (Accelerator._do_sync).
* accelerate's RNG ``step`` of 0 while train_state.json says 360 (seed 000) is NORMAL:
  sd-scripts never sets ``accelerator.step``, and accelerate itself returns it to 0 at
  the end of every epoch, so every epoch-end state has it, and accelerate loads such a
  file as it is.  The seed's ``KeyError: 'step'`` was accelerate 0.32-0.33 failing to
  load the RNG file at all under torch >= 2.6 (weights_only): an environment question,
  answered by :func:`trainguard.checkpoint.compat.verdict`, not a defect of the files.
  So status only says whether the files are whole.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainguard.checkpoint.formats import check_safetensors, check_torch_zip
from trainguard.checkpoint.model import CheckpointInfo, Status
from trainguard.checkpoint.names import parse_name
from trainguard.checkpoint.rng import (
    RngFileError,
    UnsafePickleError,
    read_rng_state,
    read_scheduler_count,
)

DEFAULT_WRITING_FRESH_SECONDS = 300.0

_SAFE_WEIGHTS = re.compile(r"^model(_\d+)?\.safetensors$")
_SHARD_INDEX = re.compile(r"^.+\.safetensors\.index\.json$|^pytorch_model.*\.bin\.index\.json$")
# torch.save zip files of a training state: accelerate's, then the HF Trainer's own
# (transformers/trainer.py _save_checkpoint).
_TORCH_FILES = re.compile(
    r"^(pytorch_model(_\d+)?\.bin|optimizer(_\d+)?\.bin|scheduler(_\d+)?\.bin"
    r"|sampler(_\d+)?\.bin|dl_state_dict(_\d+)?\.bin|scaler\.pt"
    r"|random_states_\d+\.pkl|custom_checkpoint_\d+\.pkl"
    r"|optimizer\.pt|scheduler\.pt|training_args\.bin|rng_state(_\d+)?\.pth)$")
_RNG = re.compile(r"^random_states_(\d+)\.pkl$")
_OPTIMIZER = re.compile(r"^optimizer(_\d+)?\.(bin|pt)$")
_TRAINER_STATE = "trainer_state.json"
_TRAINER_RNG = re.compile(r"^rng_state(_\d+)?\.pth$")
_BIN_WEIGHTS = re.compile(r"^pytorch_model(_\d+)?\.bin$")
_HOOK_WEIGHTS = re.compile(r"\.(safetensors|bin|pt|pth)$")
_SHARDED_OPTIMIZER = re.compile(r"(^|/)optimizer_\d+/.+\.distcp$|optim_states\.pt$")
_SCHEDULER = "scheduler.bin"


def _check_weight_file(file: Path, out: _Findings, where: str = "") -> None:
    err = check_safetensors(file) if file.suffix == ".safetensors" else check_torch_zip(file)
    if err:
        out.incomplete.append(where + err)


def _top_hook_weights(path: Path, files: dict[str, os.stat_result], out: _Findings) -> bool:
    """Check top-level weights a save hook wrote in accelerate's place; True when any.

    Top-level weight files that are not accelerate's own state files (diffusers' LoRA
    scripts write ``pytorch_lora_weights.safetensors``, PEFT ``adapter_model.safetensors``).
    """
    found = False
    for name in sorted(files):
        if _HOOK_WEIGHTS.search(name) and not _TORCH_FILES.match(name) \
                and not _SAFE_WEIGHTS.match(name):
            found = True
            _check_weight_file(path / name, out)
    return found


def _subfolder_weights(path: Path, subfiles: dict[str, list[str]], out: _Findings) -> bool:
    """Check every weights file one level down, and every shard index there; True when
    there are weights.

    ``save_pretrained`` sub-folders (``unet/``, ``transformer/``, ``text_encoder/``): each
    weight file by header or tail, each ``*.index.json`` against the shards it names.
    FSDP's ``.distcp`` model shards count by presence (no cheap check exists); sharded
    optimizer files are the optimizer's, not weights.
    """
    found = False
    for sub in sorted(subfiles):
        for name in subfiles[sub]:
            if _SHARDED_OPTIMIZER.search(f"{sub}/{name}"):
                continue
            if name.endswith(".distcp"):
                found = True
            elif _SHARD_INDEX.match(name):
                found = True
                _check_shards(path / sub / name, out, where=f"{sub}/")
            elif _HOOK_WEIGHTS.search(name):
                found = True
                _check_weight_file(path / sub / name, out, where=f"{sub}/")
    return found


def _sharded_optimizer(subfiles: dict[str, list[str]]) -> bool:
    """FSDP's optimizer_N/ shards or DeepSpeed's *optim_states.pt, in place of optimizer.bin."""
    return any(_SHARDED_OPTIMIZER.search(f"{sub}/{name}")
               for sub, names in subfiles.items() for name in names)


@dataclass
class _Findings:
    incomplete: list[str] = field(default_factory=list)  # what a save in progress looks like
    broken: list[str] = field(default_factory=list)      # wrong whatever the time


def _read_state_json(path: Path, out: _Findings,
                     missing: str | None = None) -> dict[str, object] | None:
    """A small JSON state file (sd-scripts' train_state.json, the Trainer's
    trainer_state.json) as a dict, or None with what was wrong noted in ``out``.
    ``missing``: the problem to note when the file is absent (None: absent is fine)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing is not None:
            out.incomplete.append(missing)
        return None
    except OSError as exc:
        out.broken.append(f"{path.name} cannot be read: {exc.strerror or exc}")
        return None
    if not raw:
        out.incomplete.append(f"{path.name} is empty (0 bytes)")
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        out.incomplete.append(f"{path.name} is not valid JSON (cut short?)")
        return None
    if not isinstance(data, dict):
        out.broken.append(f"{path.name} is not a JSON object")
        return None
    return data


def _whole_number(data: dict[str, object], key: str, where: str, out: _Findings,
                  required: bool = False) -> int | None:
    """``data[key]`` when it is a whole number; otherwise None, noted as broken (an absent
    key only when ``required``)."""
    v = data.get(key)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        out.broken.append(f"{where}: {key} is {v!r}, expected a whole number")
        return None
    return v


def _read_train_state(path: Path, out: _Findings) -> tuple[int | None, int | None]:
    """(current_step, current_epoch) from sd-scripts' train_state.json, if present."""
    data = _read_state_json(path, out)
    if data is None:
        return None, None
    return (_whole_number(data, "current_step", path.name, out),
            _whole_number(data, "current_epoch", path.name, out))


def _read_trainer_state(path: Path, out: _Findings) -> int | None:
    """``global_step`` from the Trainer's trainer_state.json, written last of its files."""
    data = _read_state_json(path, out, missing=f"{path.name} is missing (the Trainer writes "
                                               "it last: the save did not finish)")
    if data is None:
        return None
    return _whole_number(data, "global_step", path.name, out, required=True)


def _check_shards(index: Path, out: _Findings, where: str = "") -> None:
    """Every shard a ``*.index.json`` names must be there and whole (``where``: the
    sub-folder, for the message)."""
    try:
        data = json.loads(index.read_bytes())
        shards = sorted(set(data["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        out.incomplete.append(f"{where}{index.name} is not a valid shard index")
        return
    for shard in shards:
        p = index.parent / str(shard)
        if "/" in str(shard) or not p.is_file():
            out.incomplete.append(f"{where}{shard} (named in {where}{index.name}) is missing")
            continue
        check = check_safetensors if str(shard).endswith(".safetensors") else check_torch_zip
        if err := check(p):
            out.incomplete.append(where + err)


def _is_trainer(files: dict[str, os.stat_result]) -> bool:
    """A Hugging Face Trainer checkpoint: its own state files and no accelerate RNG file."""
    if any(_RNG.match(n) for n in files):
        return False
    # accelerate names its optimizer and scheduler files .bin; the Trainer's are .pt, so
    # even a Trainer save cut short after its optimizer is recognised as one.
    return any(n in files for n in (_TRAINER_STATE, "training_args.bin", "optimizer.pt",
                                    "scheduler.pt")) or any(_TRAINER_RNG.match(n) for n in files)


def inspect_checkpoint(path: Path, *, now: float | None = None,
                       writing_fresh_seconds: float = DEFAULT_WRITING_FRESH_SECONDS
                       ) -> CheckpointInfo:
    """Inspect one checkpoint folder.  Raises FileNotFoundError / NotADirectoryError."""
    path = Path(path).absolute()
    if not path.is_dir():
        if path.exists():
            raise NotADirectoryError(f"{path}: not a folder")
        raise FileNotFoundError(f"{path}: no such folder")
    now = time.time() if now is None else now
    files: dict[str, os.stat_result] = {}
    subfiles: dict[str, list[str]] = {}
    mtimes: list[float] = []
    with os.scandir(path) as it:
        for entry in it:
            if entry.is_file():
                files[entry.name] = entry.stat()
                mtimes.append(files[entry.name].st_mtime)
            elif entry.is_dir():
                subfiles[entry.name] = []
                with os.scandir(entry.path) as sub:
                    for e in sub:
                        if e.is_file():
                            subfiles[entry.name].append(e.name)
                            mtimes.append(e.stat().st_mtime)
                subfiles[entry.name].sort()
    mtime = max(mtimes, default=0.0)
    out = _Findings()

    trainer = _is_trainer(files)
    train_step, train_epoch = _read_train_state(path / "train_state.json", out)
    if trainer:
        train_step = _read_trainer_state(path / _TRAINER_STATE, out)

    # Weights: accelerate's own, a save hook's at the top level, and every one in a
    # sub-folder (all are checked, whichever exist).
    weights = [n for n in files if _SAFE_WEIGHTS.match(n) or _BIN_WEIGHTS.match(n)
               or _SHARD_INDEX.match(n)]
    hook = _top_hook_weights(path, files, out)
    below = _subfolder_weights(path, subfiles, out)
    if not weights and not hook and not below:
        out.incomplete.append("no model weights (model.safetensors, pytorch_model.bin, "
                              "or weights a save hook wrote)")
    for name in sorted(files):
        if _SAFE_WEIGHTS.match(name):
            if err := check_safetensors(path / name):
                out.incomplete.append(err)
        elif _SHARD_INDEX.match(name):
            _check_shards(path / name, out)
        elif (_TORCH_FILES.match(name) and not _RNG.match(name)
              and (err := check_torch_zip(path / name))):
            out.incomplete.append(err)
    if not any(_OPTIMIZER.match(n) for n in files) and not _sharded_optimizer(subfiles):
        out.incomplete.append(f"{'optimizer.pt' if trainer else 'optimizer.bin'} is missing")

    # RNG files: the "save finished" marker, and accelerate's step.
    rng_step: int | None = None
    numpy_module: str | None = None
    rng_files = sorted((n for n in files if _RNG.match(n)),
                       key=lambda n: int(_RNG.match(n)[1]))  # type: ignore[index]
    if trainer:
        if not any(_TRAINER_RNG.match(n) for n in files):
            out.incomplete.append("rng_state.pth is missing (the save did not finish)")
    elif "random_states_0.pkl" not in files:
        out.incomplete.append("random_states_0.pkl is missing (the save did not finish)")
    for name in rng_files:
        if err := check_torch_zip(path / name):
            out.incomplete.append(err)
            continue
        try:
            state = read_rng_state(path / name)
        except UnsafePickleError as exc:
            out.broken.append(f"{name}: {exc}")
            continue
        except RngFileError as exc:
            out.broken.append(f"{name} {exc}")
            continue
        if name == "random_states_0.pkl":
            rng_step, numpy_module = state.step, state.numpy_module

    # sd-scripts states: the LR scheduler's count (see the module docstring), per process;
    # read only where it is used (a train_state.json of sd-scripts' hook is there).
    scheduler_step: int | None = None
    processes = max(1, len(rng_files))
    if _SCHEDULER in files and not trainer and train_step is not None:
        count = read_scheduler_count(path / _SCHEDULER)
        if count is not None:
            scheduler_step = count // processes

    parsed = parse_name(path.name)
    step: int | None
    source: str | None
    if trainer and train_step is not None:
        step, source = train_step, _TRAINER_STATE
    elif (train_step is not None and scheduler_step is not None
          and scheduler_step > train_step):  # equal: the run was never resumed
        step, source = scheduler_step, _SCHEDULER
    elif train_step is not None:
        step, source = train_step, "train_state.json"
    elif parsed is not None and parsed.step is not None:
        step, source = parsed.step, "name"
    elif rng_step is not None:
        step, source = rng_step, "random_states"
    else:
        step, source = None, None
    epoch = train_epoch if train_epoch is not None else (parsed.epoch if parsed else None)

    if out.broken:
        status = Status.INVALID
    elif out.incomplete:
        fresh = bool(mtimes) and now - mtime < writing_fresh_seconds
        status = Status.WRITING if fresh else Status.INVALID
    else:
        status = Status.VALID
    problems = tuple(dict.fromkeys(out.broken + out.incomplete))  # a shard is seen twice
    if status is Status.WRITING:
        problems += (f"newest file is {now - mtime:.0f}s old: probably a save in progress",)
    elif status is Status.INVALID and out.incomplete and not out.broken and mtimes:
        problems += (f"newest file is {now - mtime:.0f}s old: a save that died, "
                     f"not one in progress",)
    return CheckpointInfo(
        path=path, name=path.name, step=step, step_source=source, epoch=epoch,
        status=status, problems=problems, mtime=mtime, rng_step=rng_step,
        train_state_step=train_step, numpy_module=numpy_module,
        final=parsed.final if parsed else False,
        save_index=parsed.index if parsed else None,
        layout="trainer" if trainer else "accelerate",
        name_kind=parsed.kind if parsed else None,
        name_step=parsed.step if parsed and parsed.kind == "step" else None,
        scheduler_step=scheduler_step, processes=processes,
        kept_aside=parsed.kept if parsed else False)

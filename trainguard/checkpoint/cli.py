"""`trainguard checkpoint list|inspect|latest`: the read-only doctor on the command line.

Exit codes (DESIGN.md §2): 0 the answer is good (inspect: usable, i.e. valid or
repairable; latest: found one; list: listed), 1 invalid or nothing usable (inspect: invalid
or still being written), 2 usage error such as a missing folder or one that is not a
checkpoint at all.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.checkpoint.compat import Environment, verdict
from trainguard.checkpoint.doctor import DEFAULT_WRITING_FRESH_SECONDS, inspect_checkpoint
from trainguard.checkpoint.model import CheckpointInfo
from trainguard.checkpoint.names import parse_name
from trainguard.checkpoint.scanner import list_checkpoints

if TYPE_CHECKING:
    from trainguard.cli import CommandRegistry

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _usage(message: str) -> int:
    print(f"trainguard: {message}", file=sys.stderr)
    return EXIT_USAGE


def _folder(text: str, what: str) -> Path | str:
    """The absolute folder, or the one-line reason it is not usable."""
    path = Path(text).expanduser().absolute()
    if not path.exists():
        return f"{what} {path}: no such folder"
    if not path.is_dir():
        return f"{what} {path}: not a folder"
    return path


_LAYOUTS = {"trainer": "Hugging Face Trainer", "accelerate": "accelerate save_state"}

# Files one of the savers the doctor knows writes into a checkpoint folder: accelerate's
# save_state (and the weights its save hooks write), sd-scripts' train_state.json, the
# Hugging Face Trainer's state.  A folder with none of them and no checkpoint name is not
# a dead save: it is the wrong folder, and the doctor's verdict on it would mislead.
_SAVE_FILES = re.compile(r"^(train_state\.json|trainer_state\.json|random_states_\d+\.pkl)$"
                         r"|\.(safetensors|bin|pt|pth|distcp)$")


def _holds_save_file(folder: Path) -> bool:
    """A sub-folder a save hook or a sharded optimizer wrote (``unet/``, ``optimizer_0/``)."""
    try:
        return any(_SAVE_FILES.search(p.name) for p in folder.iterdir())
    except OSError:
        return False


def _not_a_checkpoint(folder: Path) -> str | None:
    """Why ``folder`` is not a checkpoint at all (one line), or None when it may be one."""
    if parse_name(folder.name) is not None:
        return None  # named like one: empty or not, it is a (possibly dead) save
    inside = list(folder.iterdir())
    saves = sorted(e.name for e in inside if e.is_dir() and parse_name(e.name) is not None)
    if saves:
        return (f"{folder} is an output folder holding {len(saves)} checkpoint folder(s) "
                f"({', '.join(saves[:3])}{', ...' if len(saves) > 3 else ''}), not a "
                f"checkpoint: trainguard checkpoint list {folder}")
    for entry in inside:
        if _SAVE_FILES.search(entry.name) or (entry.is_dir() and _holds_save_file(entry)):
            return None
    return (f"{folder} is not a checkpoint: its name is none of the checkpoint names "
            "(NAME-stepNNNNNNNN-state, NAME-NNNNNN-state, NAME-state, checkpoint-N, "
            "checkpoint_N) and it holds none of the files accelerate's save_state or the "
            "Trainer write")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def format_table(infos: list[CheckpointInfo]) -> str:
    """A readable table, one line per checkpoint, problems indented below."""
    rows = [("STEP", "STATUS", "FROM", "WRITTEN", "NAME")]
    for i in infos:
        rows.append((str(i.step) if i.step is not None else "-", i.status.value,
                     i.step_source or "-", _when(i.mtime), i.name))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True))
                     + "  " + row[4])
        if n:
            lines.extend(f"    - {p}" for p in infos[n - 1].problems)
    return "\n".join(lines)


def format_details(info: CheckpointInfo, extra: dict[str, Any] | None = None) -> str:
    """One checkpoint in depth, for `inspect` and `latest`."""
    lines = [
        f"path:        {info.path}",
        f"status:      {info.status.value}",
        f"step:        {info.step if info.step is not None else '-'}"
        f"{f' (from {info.step_source})' if info.step_source else ''}",
        f"epoch:       {info.epoch if info.epoch is not None else '-'}",
        f"layout:      {_LAYOUTS.get(info.layout, info.layout)}",
        f"train_state: {info.train_state_step if info.train_state_step is not None else '-'}",
        f"scheduler:   {info.scheduler_step if info.scheduler_step is not None else '-'}"
        f"{f' ({info.processes} processes)' if info.processes > 1 else ''}",
        f"rng step:    {info.rng_step if info.rng_step is not None else '-'}",
        f"numpy names: {info.numpy_module or '-'}",
        f"written:     {_when(info.mtime)}",
    ]
    if info.problems:
        lines.append("problems:")
        lines.extend(f"  - {p}" for p in info.problems)
    for key, value in (extra or {}).items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _emit(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def cmd_list(args: argparse.Namespace) -> int:
    folder = _folder(args.output_dir, "output folder")
    if isinstance(folder, str):
        return _usage(folder)
    infos = list_checkpoints(folder, writing_fresh_seconds=args.writing_fresh_seconds)
    if args.json:
        _emit([i.to_json() for i in infos])
    elif infos:
        print(format_table(infos))
    else:
        print(f"no checkpoints in {folder}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    folder = _folder(args.checkpoint_dir, "checkpoint folder")
    if isinstance(folder, str):
        return _usage(folder)
    env = Environment.current()
    if args.python:
        try:
            env = Environment.of_python(args.python)
        except ValueError as exc:
            return _usage(f"--python: {exc}")
    try:
        why_not = _not_a_checkpoint(folder)
    except OSError as exc:
        return _usage(f"checkpoint folder {folder}: cannot read it: {exc.strerror or exc}")
    if why_not:
        return _usage(why_not)
    info = inspect_checkpoint(folder, writing_fresh_seconds=args.writing_fresh_seconds)
    v = verdict(info, env)
    if args.json:
        _emit({**info.to_json(), "verdict": {**v.to_json(), "environment": {
            "torch": env.torch, "accelerate": env.accelerate, "numpy": env.numpy}}})
    else:
        where = args.python or "this python"
        extra = {f"loads with {where}": f"yes (torch {env.torch}, accelerate "
                 f"{env.accelerate}, numpy {env.numpy})" if v.loads else "no"}
        why = [p for p in v.problems if p not in info.problems]
        if why:
            extra["why"] = "; ".join(why)
        if v.env_fixes:
            extra["env fixes"] = " ".join(f"{k}={val}" for k, val in v.env_fixes.items())
        if v.repairs:
            extra["repairs"] = ", ".join(v.repairs) + " (trainguard checkpoint repair)"
        print(format_details(info, extra))
    # Repairable is usable (DESIGN.md §2: 1 is "invalid or nothing usable"): the remediator
    # repairs it before resuming, and `checkpoint repair` does by hand.
    return EXIT_OK if info.usable else EXIT_INVALID


def cmd_latest(args: argparse.Namespace) -> int:
    folder = _folder(args.output_dir, "output folder")
    if isinstance(folder, str):
        return _usage(folder)
    infos = list_checkpoints(folder, writing_fresh_seconds=args.writing_fresh_seconds)
    best = next((i for i in infos if i.usable), None)
    if best is None:
        skipped = ", ".join(f"{i.name} ({i.status.value})" for i in infos) or "none found"
        print(f"trainguard: no usable checkpoint in {folder}: {skipped}", file=sys.stderr)
        if args.json:
            _emit(None)
        return EXIT_INVALID
    if args.json:
        _emit(best.to_json())
    else:
        print(format_details(best))
    return EXIT_OK


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--writing-fresh-seconds", type=float, default=DEFAULT_WRITING_FRESH_SECONDS,
                   metavar="S", help="an incomplete folder younger than this is a save in "
                                     "progress (default %(default)s)")


def register(registry: CommandRegistry) -> None:
    """Add the read-only checkpoint sub-commands."""
    sub = registry.checkpoint
    p = sub.add_parser("list", help="every checkpoint in an output folder, furthest first "
                                    "(by true progress: epoch, counted steps, step)")
    p.add_argument("output_dir", metavar="OUTPUT_DIR")
    _common(p)
    p.set_defaults(handler=cmd_list)
    p = sub.add_parser("inspect", help="one checkpoint in depth (exit 0 when usable: valid "
                       "or repairable)")
    p.add_argument("checkpoint_dir", metavar="CKPT_DIR")
    p.add_argument("--python", metavar="EXE", help="judge loadability for this interpreter's "
                   "torch/accelerate/numpy (default: the one running trainguard)")
    _common(p)
    p.set_defaults(handler=cmd_inspect)
    p = sub.add_parser("latest", help="the newest usable checkpoint (exit 1 if none)")
    p.add_argument("output_dir", metavar="OUTPUT_DIR")
    _common(p)
    p.set_defaults(handler=cmd_latest)

"""Repair a checkpoint's RNG files so the resuming environment's accelerate can load them.

One repair, on ``random_states_{rank}.pkl`` only (weights are never touched), and only
when the compatibility verdict for the resuming environment asks for it
(:func:`trainguard.checkpoint.compat.verdict`): a checkpoint that loads as it is is
never rewritten.

* ``rewrite-rng-numpy``: a file written under numpy 1.x names ``numpy.core``, which
  accelerate >= 1.1's allowlist refuses under numpy >= 2.1 (trainguard.checkpoint.compat);
  a numpy 2 file names ``numpy._core``, which numpy 1.x cannot import.  Rename the
  global to what the resuming environment's numpy uses.

What is NOT repaired any more: accelerate's RNG ``step``.  sd-scripts never sets it and
accelerate returns it to 0 at every epoch end, so 0 beside a train_state.json of 360 is
what every real epoch-end state holds; accelerate loads it as it is and restores 0, which
is what its own micro-batch counter should be at an epoch boundary (rewriting it to 360
would shift gradient-accumulation boundaries after the resume).  The seed's ``KeyError:
'step'`` came from accelerate 0.32-0.33 failing to load the file under torch >= 2.6;
the verdict answers that with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the resumed run.

Safety, in order: the file is loaded with ``torch.load(weights_only=True)`` and an explicit
allowlist (never ``weights_only=False``: a crafted pickle must not run here either); the
new bytes are built in memory and re-read both by the doctor's restricted reader and by
``torch.load(weights_only=True)`` before anything is written; the original is copied to
``<file>.trainguard-bak-<UTC time>`` (never over an existing backup); the new file
replaces the old one atomically (temp in the same folder, fsync, rename, fsync folder).
A crash at any line leaves the old file, or the new one, plus at worst a stray temp.
Running again finds nothing to do (idempotent); ``dry_run`` only returns the plan.

torch is imported inside functions: importing this module (the webhook app does) must
not need torch.
"""

from __future__ import annotations

import io
import os
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.checkpoint import CheckpointInfo, Status, inspect_checkpoint
from trainguard.checkpoint.compat import REPAIR_NUMPY, Environment, verdict
from trainguard.checkpoint.rng import RngFileError, read_rng_state

_RNG = re.compile(r"^random_states_(\d+)\.pkl$")
BACKUP_INFIX = ".trainguard-bak-"
# Temp files are named ".<file>.trainguard-tmp-<pid>-<ns>": only ours, so a crash's leftovers
# can be found and removed without ever touching a user file.
TMP_INFIX = ".trainguard-tmp-"


class RepairError(Exception):
    """Repair refused or failed; the message is for a person. Nothing was changed."""


@dataclass(frozen=True)
class FileChange:
    """What repair will do to one RNG file."""

    file: Path
    size: int            # the stat the plan was made from: a changed file is not touched
    mtime_ns: int
    step: int | None     # accelerate's `step`, kept as it is (checked after the rewrite)
    set_numpy: str       # the numpy module name the file will use
    old_numpy: str

    def describe(self) -> list[str]:
        return [f"{REPAIR_NUMPY}: {self.file.name}: {self.old_numpy}.multiarray"
                f"._reconstruct -> {self.set_numpy}.multiarray._reconstruct"]


@dataclass(frozen=True)
class RepairPlan:
    """What :func:`apply_repair` would change; empty ``changes`` means nothing to do."""

    path: Path
    info: CheckpointInfo
    changes: tuple[FileChange, ...]
    target_numpy: str | None
    env_fixes: tuple[tuple[str, str], ...] = ()  # what the verdict asks of the environment

    @property
    def needed(self) -> bool:
        return bool(self.changes)

    def describe(self) -> list[str]:
        fixes = [f"resume with {k}={v} in the environment (no file change helps there)"
                 for k, v in self.env_fixes]
        if not self.changes:
            return [f"{self.path}: nothing to repair", *fixes]
        return [line for c in self.changes for line in c.describe()] + fixes

    def __str__(self) -> str:
        """One sentence for logs and the incident API (the dataclass repr is for debugging)."""
        if not self.changes:
            return f"nothing to repair in {self.path}"
        return f"would repair {self.path}: " + "; ".join(self.describe())


@dataclass(frozen=True)
class RepairResult:
    plan: RepairPlan
    changed: tuple[Path, ...] = ()
    backups: tuple[Path, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        """What happened, as a sentence: the pipeline logs it and keeps it in the incident,
        where a ``RepairResult(plan=RepairPlan(... PosixPath(...)))`` repr used to land."""
        if not self.changed:
            return str(self.plan)
        backups = ", ".join(b.name for b in self.backups)
        return (f"repaired {self.plan.path}: " + "; ".join(self.plan.describe())
                + (f" (originals kept as {backups})" if backups else ""))


def plan_repair(path: Path, env: Environment | None = None) -> RepairPlan:
    """Inspect ``path`` and plan what ``env`` (default: this interpreter) needs to load it.

    Raises RepairError when the checkpoint is invalid or still being written: repair only
    fixes whole checkpoints, it never makes a broken one look usable.  A checkpoint the
    verdict says loads as it is gets an empty plan.
    """
    path = Path(path).absolute()
    try:
        info = inspect_checkpoint(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise RepairError(str(exc)) from None
    if info.status in (Status.INVALID, Status.WRITING):
        raise RepairError(f"{path}: checkpoint is {info.status.value}, not repairing it: "
                          + "; ".join(info.problems))
    env = env or Environment.current()
    v = verdict(info, env)
    target_numpy = env.numpy_module()
    changes = []
    if REPAIR_NUMPY in v.repairs and target_numpy is not None:
        for file in sorted(p for p in path.iterdir() if _RNG.match(p.name)):
            try:
                state = read_rng_state(file)
            except RngFileError as exc:  # inspect said whole; a race or a rank>0 problem
                raise RepairError(f"{file}: {exc}") from None
            if state.numpy_module and state.numpy_module != target_numpy:
                st = file.stat()
                changes.append(FileChange(file, st.st_size, st.st_mtime_ns, state.step,
                                          target_numpy, state.numpy_module))
    return RepairPlan(path, info, tuple(changes), target_numpy,
                      tuple(sorted(v.env_fixes.items())))


def _allowlist() -> list[Any]:
    """accelerate's TORCH_SAFE_GLOBALS, under BOTH numpy module names, and nothing more."""
    import codecs

    import numpy as np
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    _reconstruct = multiarray._reconstruct
    allowed: list[Any] = [np.ndarray, np.dtype, codecs.encode,
                          (_reconstruct, "numpy.core.multiarray._reconstruct"),
                          (_reconstruct, "numpy._core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed.append(dtypes.UInt32DType)
    return allowed


def _safe_load(data: bytes) -> Any:
    import torch

    with torch.serialization.safe_globals(_allowlist()):
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rename_numpy(pickle_bytes: bytes, to_module: str) -> bytes:
    """Rename numpy's _reconstruct GLOBAL (protocol 2: text lines, no length prefix)."""
    new = pickle_bytes
    for old in ("numpy._core", "numpy.core"):
        if old != to_module:
            new = new.replace(f"c{old}.multiarray\n_reconstruct\n".encode(),
                              f"c{to_module}.multiarray\n_reconstruct\n".encode())
    return new


def _with_pickle(zip_bytes: bytes, new_pickle: bytes) -> bytes:
    """The same torch archive with its data.pkl replaced (other members byte for byte)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as src, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, new_pickle if info.filename.endswith("/data.pkl") else data)
    return out.getvalue()


def _data_pkl(zip_bytes: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


def _new_bytes(change: FileChange, old: bytes) -> bytes:
    """Build and verify the repaired file in memory."""
    import torch

    try:
        state = _safe_load(old)
    except Exception as exc:
        raise RepairError(f"{change.file}: torch.load(weights_only=True) refused it: "
                          f"{str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise RepairError(f"{change.file}: holds a {type(state).__name__}, expected a dict")
    buf = io.BytesIO()
    torch.save(state, buf)
    new = buf.getvalue()
    # torch.save names numpy as the numpy running here does; the resuming env may differ.
    renamed = _rename_numpy(_data_pkl(new), change.set_numpy)
    if renamed != _data_pkl(new):
        new = _with_pickle(new, renamed)
    return new


def _verify(change: FileChange, new: bytes, tmp: Path) -> None:
    """Re-read the new file as the doctor and as torch will; raise if it is not right."""
    try:
        got = read_rng_state(tmp)
    except RngFileError as exc:
        raise RepairError(f"{change.file}: repaired file does not read back: {exc}") from None
    if got.step != change.step or got.numpy_module != change.set_numpy:
        raise RepairError(f"{change.file}: repaired file reads back step {got.step}, numpy "
                          f"{got.numpy_module}; expected {change.step}, {change.set_numpy}")
    try:
        state = _safe_load(new)
    except Exception as exc:
        raise RepairError(f"{change.file}: repaired file fails torch.load: {exc}") from None
    if state.get("step") != change.step:
        raise RepairError(f"{change.file}: repaired file has step {state.get('step')}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(folder: Path, stem: str, data: bytes) -> Path:
    tmp = folder / f".{stem}{TMP_INFIX}{os.getpid()}-{time.monotonic_ns()}"
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def backup(file: Path, data: bytes) -> Path:
    """Write ``data`` (the original bytes) beside ``file`` under a new, unused name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    tmp = _write_temp(file.parent, file.name, data)
    try:
        for n in range(1000):
            target = file.with_name(f"{file.name}{BACKUP_INFIX}{stamp}" + (f".{n}" if n else ""))
            try:
                os.link(tmp, target)  # fails if it exists: never overwrite a backup
            except FileExistsError:
                continue
            return target
        raise RepairError(f"{file}: no free backup name")
    finally:
        tmp.unlink(missing_ok=True)


def apply_repair(plan: RepairPlan, *, dry_run: bool = False) -> RepairResult:
    """Carry out ``plan`` (or, with ``dry_run``, only return it).  Raises RepairError."""
    if dry_run or not plan.needed:
        return RepairResult(plan, notes=tuple(plan.describe()))
    changed, backups = [], []
    for change in plan.changes:
        try:
            old = change.file.read_bytes()
            st = change.file.stat()
        except OSError as exc:
            raise RepairError(f"{change.file}: cannot read: {exc}") from None
        if (st.st_size, st.st_mtime_ns) != (change.size, change.mtime_ns) or len(old) != st.st_size:
            raise RepairError(f"{change.file}: changed since the plan was made; plan again")
        new = _new_bytes(change, old)
        tmp = _write_temp(change.file.parent, change.file.name, new)
        try:
            _verify(change, new, tmp)
            os.chmod(tmp, st.st_mode & 0o7777)
            backups.append(backup(change.file, old))
            _fsync_dir(change.file.parent)
            os.replace(tmp, change.file)
            _fsync_dir(change.file.parent)
        finally:
            tmp.unlink(missing_ok=True)
        changed.append(change.file)
    return RepairResult(plan, tuple(changed), tuple(backups), tuple(plan.describe()))


def repair_checkpoint(path: Path, env: Environment | None = None, *,
                      dry_run: bool = False) -> RepairResult:
    """Plan and apply in one call (what the remediator's pipeline uses)."""
    return apply_repair(plan_repair(path, env), dry_run=dry_run)

"""Builders for REAL accelerate checkpoints (made on the CPU) and their broken variants.

Used by tests/checkpoint, the remediator's and the deploy tests.  torch/accelerate are
imported lazily and one Accelerator is kept per process: importing torch costs about a
second, building an Accelerator again is not supported by accelerate's state singleton.

    make_accelerate_checkpoint(dir, step, rng_step=None, train_state=True, ...)
    make_output_dir(root, [(name, step), ...])
    make_automatic_checkpoints(project_dir, [rng_step, ...])   # checkpoints/checkpoint_{i}
    rewrite_rng_numpy(rng_file, "numpy.core")      # numpy 1.x names, by opcode rewrite
    write_malicious_rng(rng_file, payload_cmd)     # a pickle that would run a command
    truncate(path, size) / make_sparse_safetensors(path, total_size)
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

_STATE: dict[str, Any] = {}


def _accelerator() -> dict[str, Any]:
    """One real Accelerator with a model, optimizer and scheduler, built on first use."""
    if not _STATE:
        import torch
        from accelerate import Accelerator

        torch.manual_seed(0)
        acc = Accelerator(cpu=True)
        model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
                                    torch.nn.Linear(8, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
        model, opt, sched = acc.prepare(model, opt, sched)
        pending: dict[str, Any] = {}

        def hook(models: list[object], weights: list[object], output_dir: str) -> None:
            # sd-scripts' pre-save hook: train_state.json first, current_step = steps done.
            if pending.get("train_state") is not None:
                with open(os.path.join(output_dir, "train_state.json"), "w",
                          encoding="utf-8") as f:
                    json.dump(pending["train_state"], f)

        acc.register_save_state_pre_hook(hook)
        _STATE.update(acc=acc, model=model, opt=opt, sched=sched, pending=pending)
    return _STATE


def make_accelerate_checkpoint(folder: Path, step: int, *, rng_step: int | None = None,
                               train_state: bool = True, epoch: int = 1,
                               scheduler_step: int | None = None,
                               numpy_module: str | None = None,
                               mtime: float | None = None) -> Path:
    """Save a real accelerate state into ``folder`` (created).

    ``step`` goes into train_state.json (sd-scripts' steps done); ``rng_step`` is what
    accelerate records as its own ``step`` (default: the same); ``scheduler_step`` is the
    LR scheduler's ``last_epoch`` in scheduler.bin (default: ``step``, as a scheduler
    stepped once per optimizer step has it).  ``numpy_module`` set to "numpy.core"
    rewrites the RNG file as a numpy 1.x writer would have named it.  ``mtime`` sets every
    file's and folder's mtime.
    """
    st = _accelerator()
    folder = Path(folder)
    st["pending"]["train_state"] = ({"current_epoch": epoch, "current_step": step}
                                    if train_state else None)
    st["acc"].step = step if rng_step is None else rng_step
    count = step if scheduler_step is None else scheduler_step
    st["sched"].scheduler.last_epoch = count
    st["sched"].scheduler._step_count = count + 1
    st["acc"].save_state(str(folder))
    if numpy_module is not None:
        rewrite_rng_numpy(folder / "random_states_0.pkl", numpy_module)
    if mtime is not None:
        set_mtime(folder, mtime)
    return folder


def make_automatic_checkpoints(project_dir: Path, rng_steps: list[int]) -> list[Path]:
    """Save one real state per entry through accelerate's own automatic naming
    (``ProjectConfiguration(automatic_checkpoint_naming=True)``): ``project_dir/
    checkpoints/checkpoint_{i}``.  Each save's accelerate ``step`` is the given value, as
    a gradient-accumulation counter that restarts every epoch would leave it."""
    from accelerate.utils import ProjectConfiguration

    st = _accelerator()
    acc = st["acc"]
    saved_config = acc.project_configuration
    acc.project_configuration = ProjectConfiguration(project_dir=str(project_dir),
                                                     automatic_checkpoint_naming=True)
    st["pending"]["train_state"] = None
    try:
        for rng_step in rng_steps:
            acc.step = rng_step
            acc.save_state()
    finally:
        acc.project_configuration = saved_config
    return [project_dir / "checkpoints" / f"checkpoint_{i}" for i in range(len(rng_steps))]


def set_mtime(folder: Path, mtime: float) -> None:
    """Make a folder and everything in it (sub-folders too) look written at ``mtime``."""
    for p in sorted(Path(folder).rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(p, (mtime, mtime))
    os.utime(folder, (mtime, mtime))


def make_output_dir(root: Path, checkpoints: list[tuple[str, int]], **kw: Any) -> Path:
    """An output folder holding one real checkpoint per (folder name, step)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, step in checkpoints:
        make_accelerate_checkpoint(root / name, step, **kw)
    return root


def _rewrite_zip_member(path: Path, member_suffix: str, new_data: bytes) -> None:
    """Rewrite one member of a torch zip, keeping every other member byte for byte."""
    with zipfile.ZipFile(path) as zf:
        members = [(i, zf.read(i)) for i in zf.infolist()]
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out:
        for info, data in members:
            out.writestr(info, new_data if info.filename.endswith(member_suffix) else data)
    os.replace(tmp, path)


def rng_pickle(path: Path) -> bytes:
    """The raw data.pkl of a torch zip."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        return zf.read(name)


def rewrite_rng_numpy(path: Path, module: str) -> None:
    """Rename numpy's ``_reconstruct`` global in the pickle (protocol-2 GLOBAL opcodes).

    GLOBAL's argument is two newline-ended text lines, no length prefix, so replacing
    them changes nothing else in the pickle.  numpy here is 2.x, so this is how a file
    written under numpy 1.x (``numpy.core.multiarray``) is produced.
    """
    data = rng_pickle(path)
    new = data
    for old in ("numpy._core", "numpy.core"):
        new = new.replace(f"c{old}.multiarray\n_reconstruct\n".encode(),
                          f"c{module}.multiarray\n_reconstruct\n".encode())
    if b"_reconstruct\n" not in new:
        raise AssertionError("no numpy _reconstruct global found to rewrite")
    _rewrite_zip_member(path, "/data.pkl", new)


def malicious_pickle(module: str, name: str, argument: str) -> bytes:
    """A protocol-2 pickle that calls ``module.name(argument)`` when unpickled."""
    arg = argument.encode()
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(arg))
            + arg + b"\x85R.")


def write_malicious_rng(path: Path, module: str, name: str, argument: str) -> None:
    """Replace an RNG file's pickle with one that would run ``module.name(argument)``."""
    _rewrite_zip_member(path, "/data.pkl", malicious_pickle(module, name, argument))


def truncate(path: Path, size: int) -> None:
    """Cut a file to ``size`` bytes, as a save killed mid-write leaves it."""
    with open(path, "r+b") as f:
        f.truncate(size)


def make_sparse_safetensors(path: Path, total_size: int) -> None:
    """A safetensors file of ``total_size`` bytes whose data is a hole (costs no disk)."""
    header = b""
    for _ in range(3):  # the header length changes the data size; settle it
        n = total_size - 8 - len(header)
        header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}
                            ).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(total_size)

"""Read accelerate's ``random_states_{rank}.pkl`` (and the LR scheduler's count in
``scheduler.bin``) without torch and without running it.

The file is a ``torch.save`` zip: ``<dir>/data.pkl`` (a protocol-2 pickle of a dict) plus
``<dir>/data/N`` raw storages.  Unpickling it normally would let a crafted checkpoint run
any code (``os.system`` is one GLOBAL opcode away), so :class:`RestrictedUnpickler`
resolves ONLY the globals a real accelerate RNG file contains, each mapped to an inert
stand-in, and refuses everything else.  What a real file contains was read with
``pickletools.dis`` on files written by accelerate 1.15 / torch 2.13 / numpy 2.4
(``save_accelerator_state`` in accelerate/checkpointing.py):

    collections OrderedDict            (torch's Tensor rebuild path)
    torch._utils _rebuild_tensor_v2    (torch_manual_seed, torch_cuda_manual_seed, ...)
    torch ByteStorage (+ persistent_load ('storage', ...))
    numpy._core.multiarray _reconstruct   (numpy >= 2 writers)
    numpy.core.multiarray _reconstruct    (numpy 1.x writers)
    numpy ndarray, numpy dtype, _codecs encode   (np.random.get_state() arrays)
    numpy.dtypes UInt32DType           (listed by accelerate's TORCH_SAFE_GLOBALS)

We only need ``step`` and which numpy module names the arrays; the stand-ins keep nothing.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_RNG_PICKLE = 64 * 1024 * 1024  # a real one is ~8 KB (+5 KB per CUDA device)
NUMPY_MODULES = ("numpy.core", "numpy._core")


class RngFileError(Exception):
    """The RNG file is not what accelerate writes; the message says why."""


class UnsafePickleError(RngFileError):
    """The pickle names a global outside the allowlist: it could run code."""


class _Inert:
    """Stand-in for every allowed object: accepts construction and state, keeps nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


class _Storage(_Inert):
    pass


class _Array(_Inert):
    pass


def _rebuild(*args: object) -> _Inert:
    return _Inert()


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` as numpy pickles use it: str -> latin1 bytes, nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise RngFileError("_codecs.encode used with unexpected arguments")
    return text.encode("latin1")


_STORAGE_TYPES = {f"{kind}Storage" for kind in (
    "Byte", "Char", "Short", "Int", "Long", "Half", "Float", "Double", "BFloat16", "Bool",
    "ComplexFloat", "ComplexDouble", "Untyped")}


@dataclass(frozen=True)
class RngState:
    """What the doctor needs from an RNG file."""

    step: int | None              # None: the file has no `step` (accelerate < 0.18)
    numpy_module: str | None      # "numpy.core" | "numpy._core" | None (no numpy arrays)
    keys: tuple[str, ...]


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build an accelerate RNG dict and nothing else."""

    def __init__(self, data: bytes, storages: set[str]) -> None:
        super().__init__(io.BytesIO(data))
        self._storages = storages
        self.numpy_modules: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild
        if module == "torch" and name in _STORAGE_TYPES:
            return _Storage
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") \
                and name == "_reconstruct":
            self.numpy_modules.add(module.rpartition(".")[0])
            return _Array
        if module == "numpy" and name in ("ndarray", "dtype"):
            return _Array
        if module == "numpy.dtypes" and name.endswith("DType") and name.isidentifier():
            return _Array
        if module == "_codecs" and name == "encode":
            return _encode
        raise UnsafePickleError(
            f"refuses global {module}.{name}: not something accelerate writes "
            "(loading this file could run code)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise RngFileError(f"unexpected persistent id {pid!r}")
        key = str(pid[2])
        if key not in self._storages:
            raise RngFileError(f"storage data/{key} named in the pickle is missing")
        return _Storage()


def load_restricted(path: Path) -> tuple[object, RestrictedUnpickler]:
    """Unpickle a small ``torch.save`` archive with the restricted unpickler.

    Returns the object (inert stand-ins for tensors and arrays) and the unpickler (which
    recorded how numpy was named).  Raises RngFileError on anything odd, UnsafePickleError
    when the pickle names a global outside the allowlist.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise RngFileError("is not a torch archive (no <dir>/data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            info = zf.getinfo(pkl[0])
            if info.file_size > MAX_RNG_PICKLE:
                raise RngFileError(f"pickle is implausibly large ({info.file_size} bytes)")
            data = zf.read(pkl[0])
            storages = {n[len(prefix) + 5:] for n in names if n.startswith(prefix + "data/")}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise RngFileError(f"cannot be opened as a torch archive: {exc}") from None
    unpickler = RestrictedUnpickler(data, storages)
    try:
        obj = unpickler.load()
    except RngFileError:
        raise
    except Exception as exc:  # any malformed pickle: opcodes, stack, memo errors
        raise RngFileError(f"pickle is damaged: {type(exc).__name__}: {exc}") from None
    return obj, unpickler


def read_rng_state(path: Path) -> RngState:
    """Read ``step`` and the numpy module name; raise RngFileError on anything odd."""
    obj, unpickler = load_restricted(path)
    if not isinstance(obj, dict):
        raise RngFileError(f"holds a {type(obj).__name__}, expected accelerate's dict")
    step = obj.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise RngFileError(f"its 'step' is {step!r}, expected an integer")
    mods = unpickler.numpy_modules
    if len(mods) > 1:
        raise RngFileError("names numpy both as numpy.core and numpy._core")
    return RngState(step=step, numpy_module=next(iter(mods), None),
                    keys=tuple(str(k) for k in obj))


def read_scheduler_count(path: Path) -> int | None:
    """``last_epoch`` of an LR scheduler's state (accelerate's ``scheduler.bin``), or None
    when the file holds no such whole number or cannot be read safely.

    torch's LRScheduler counts its own ``step()`` calls in ``last_epoch`` (0 after
    construction), and the count is saved and restored with the state, so it survives
    resumes that restart a trainer's own step counter.  The same restricted unpickler
    as for RNG files: a scheduler state is a dict of numbers and lists (read here with
    ``pickletools`` on LambdaLR/StepLR and diffusers' schedulers: no globals at all).
    Never raises: the count is extra information, not a test of the checkpoint.
    """
    try:
        obj, _ = load_restricted(path)
    except RngFileError:
        return None
    count = obj.get("last_epoch") if isinstance(obj, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return None
    return count

"""Build and drive the fake ``libnvidia-ml.so.1`` (tests/fakenvml/fakenvml.c).

The fake is the only mock trainguard's tests allow: the real ``pynvml`` bindings load it,
so everything from ctypes struct layouts to NVML error mapping is exercised for real.

Two ways to use it:

* in a child process (the exporter, a trainer): pass ``env_for(gpu_dir)`` as its
  environment; the dynamic loader finds the fake through ``LD_LIBRARY_PATH``;
* in the pytest process itself: ``load_in_process(gpu_dir)`` dlopens the fake by absolute
  path before pynvml does.  The library's soname is ``libnvidia-ml.so.1``, so pynvml's own
  ``CDLL("libnvidia-ml.so.1")`` gets the already-loaded fake (LD_LIBRARY_PATH is read only
  when a process starts, so setting it later would not work).

``FakeGPUs`` writes the per-GPU files in the format HACKING.md "Fake NVML" describes,
always atomically (write a temp file, rename), as the C side re-reads them on every call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from helpers.common import REPO

SOURCE = REPO / "tests" / "fakenvml" / "fakenvml.c"
LIB_NAME = "libnvidia-ml.so.1"

_built: dict[Path, Path] = {}


def _default_dest() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"trainguard-fakenvml-{os.getuid()}-{digest}"


def build_fake_nvml(dest_dir: Path | None = None) -> Path:
    """Compile the fake into ``dest_dir/libnvidia-ml.so.1`` (once per process and source).

    Without ``dest_dir`` the library goes to a per-user temp folder named after the
    source's hash, so repeated test sessions reuse it and an edited source rebuilds.
    Returns the library's path.
    """
    dest = Path(dest_dir) if dest_dir is not None else _default_dest()
    if dest in _built and _built[dest].exists():
        return _built[dest]
    dest.mkdir(parents=True, exist_ok=True)
    lib = dest / LIB_NAME
    stamp = dest / (LIB_NAME + ".sha256")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    if not (lib.exists() and stamp.exists() and stamp.read_text() == digest):
        tmp = dest / f".{LIB_NAME}.{os.getpid()}.tmp"
        proc = subprocess.run(
            ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror",
             f"-Wl,-soname,{LIB_NAME}", "-o", str(tmp), str(SOURCE)],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"building the fake NVML failed:\n{proc.stderr}")
        os.replace(tmp, lib)  # atomic: a concurrent session never loads half a file
        stamp.write_text(digest)
    _built[dest] = lib
    return lib


def env_for(gpu_dir: Path, base: Mapping[str, str] | None = None,
            lib: Path | None = None) -> dict[str, str]:
    """An environment in which a child process's pynvml finds the fake serving ``gpu_dir``.

    ``base`` defaults to ``os.environ``; ``LD_LIBRARY_PATH`` gets the fake's folder first.
    """
    env = dict(os.environ if base is None else base)
    lib_dir = str((lib or build_fake_nvml()).parent)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = lib_dir + (os.pathsep + old if old else "")
    env["FAKE_NVML_DIR"] = str(gpu_dir)
    return env


def load_in_process(gpu_dir: Path) -> ctypes.CDLL:
    """Make pynvml in *this* process use the fake, serving ``gpu_dir``.

    Sets ``FAKE_NVML_DIR`` (the C side reads it on every call, so a later change to
    ``os.environ`` points it elsewhere) and dlopens the fake by path.  Fails if pynvml
    already loaded a different ``libnvidia-ml.so.1`` (a real driver) in this process.
    """
    os.environ["FAKE_NVML_DIR"] = str(gpu_dir)
    lib = build_fake_nvml()
    handle = ctypes.CDLL(str(lib))
    import pynvml

    loaded = pynvml.nvmlLib
    if loaded is not None and getattr(loaded, "_name", None) not in (str(lib), LIB_NAME):
        raise RuntimeError(f"pynvml already loaded {loaded._name}, not the fake NVML")
    return handle


class FakeGPUs:
    """The fake NVML's view of the machine: one ``gpuN`` file per GPU in ``root``."""

    DEFAULTS: Mapping[str, object] = {
        "name": "NVIDIA H100 80GB HBM3",
        "utilization": 0,
        "memory_used": 0,
        "memory_total": 80 << 30,
        "power_mw": 72000,
        "power_limit_mw": 700000,
        "temperature": 35,
        "pids": "",
    }

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.root / f"gpu{index}"

    def add(self, count: int = 1, **values: object) -> list[int]:
        """Create ``count`` more GPUs with the defaults (plus ``values``); their indexes."""
        start = len(list(self.root.glob("gpu[0-9]*")))
        made = []
        for index in range(start, start + count):
            data = dict(self.DEFAULTS)
            data["uuid"] = f"GPU-{index:08x}-7e57-4a1e-8b1d-{index:012x}"
            data.update(values)
            self.write(index, **data)
            made.append(index)
        return made

    def read(self, index: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.path(index).read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                out[key.strip()] = value.strip()
        return out

    def write(self, index: int, **values: object) -> None:
        """Replace gpu``index`` with exactly these keys (atomically)."""
        text = "".join(f"{k}={_fmt(v)}\n" for k, v in values.items())
        target = self.path(index)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)

    def update(self, index: int, **values: object) -> None:
        """Change some keys of gpu``index``, keeping the others."""
        data: dict[str, object] = dict(self.read(index))
        data.update(values)
        self.write(index, **data)

    def set_processes(self, index: int, procs: Mapping[int, int]) -> None:
        """The compute processes NVML reports on gpu``index``: ``{pid: used_bytes}``."""
        self.update(index, pids=",".join(f"{p}:{b}" for p, b in procs.items()))

    def lose(self, index: int) -> None:
        self.update(index, lost=1)

    def fail_driver(self) -> None:
        (self.root / "fail").write_text("driver not loaded\n")

    def restore_driver(self) -> None:
        (self.root / "fail").unlink(missing_ok=True)


def _fmt(value: object) -> str:
    if isinstance(value, Mapping):
        return ",".join(f"{p}:{b}" for p, b in value.items())
    return str(value)

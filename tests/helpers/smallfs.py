"""A small real filesystem for disk-guard tests: a tmpfs mounted for the test.

Mounting needs root (or CAP_SYS_ADMIN); CI and these machines run as root.  Where the
mount is refused, the fixture falls back to a fake ``os.statvfs`` at the one boundary
trainguard asks (trainguard.disk.available_bytes), whose free space is a capacity minus
the bytes really written under the folder, and the test's output says so (a warning).
Tests that need a real filesystem seen by another process (a real exporter process)
skip in that case.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PAGE = 4096


@dataclass
class SmallFs:
    path: Path
    size: int
    real: bool          # a real tmpfs mount (False: the fake statvfs fallback)

    def avail(self) -> int:
        st = os.statvfs(self.path)
        return int(st.f_bavail) * int(st.f_frsize)

    def fill_to(self, free: int) -> int:
        """Write a filler file so that about ``free`` bytes stay free; returns the free
        bytes as the filesystem reports them afterwards."""
        filler = self.path / "filler.bin"
        have = filler.stat().st_size if filler.exists() else 0
        want = max(0, have + self.avail() - free)
        want -= want % PAGE
        with open(filler, "wb") as f:
            f.truncate(0)
            chunk = b"\0" * (1 << 20)
            left = want
            while left > 0:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
        return self.avail()

    def unfill(self) -> None:
        (self.path / "filler.bin").unlink(missing_ok=True)


def _mount(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False)
    return proc.returncode == 0


def _used(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with suppress(OSError):
                total += -(-os.lstat(os.path.join(dirpath, name)).st_size // PAGE) * PAGE
    return total


@contextmanager
def small_fs(path: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallFs]:
    """A tmpfs of ``size`` bytes at ``path`` (unmounted afterwards), or the fallback."""
    if _mount(path, size):
        try:
            yield SmallFs(path, size, True)
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        return
    warnings.warn("cannot mount a tmpfs here (not root?): using a fake os.statvfs for "
                  f"{path} (capacity {size} bytes minus what is written under it)",
                  stacklevel=2)
    real_statvfs = os.statvfs
    root = path.resolve()

    def fake(p: Any) -> Any:
        st = real_statvfs(p)
        if not Path(p).resolve().is_relative_to(root):
            return st
        free = max(0, size - _used(root))
        fields = list(st)
        fields[1] = PAGE                      # f_frsize
        fields[4] = fields[3] = free // PAGE  # f_bavail, f_bfree
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "statvfs", fake)
    yield SmallFs(path, size, False)

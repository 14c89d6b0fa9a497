"""All checkpoints of an output folder, newest step first, and a cache for the exporter.

Order (DESIGN.md §3.4): by step, never by mtime alone (a copied or restored folder has a
new mtime and an old step).  Ties: sd-scripts' end-of-training ``{name}-state`` after the
step folders, then by name.  Folders with no step at all sort below every folder with
one, by epoch.

The cache: the exporter scrapes every few seconds and an output folder may hold hundreds
of multi-GB checkpoints.  A folder is re-inspected only when its stat signature (its own
mtime plus the names, sizes and mtimes of its files) changed, and the output folder is
re-listed only when its own mtime changed.  ``writing`` depends on the clock, so those
are re-inspected every time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from trainguard.checkpoint.doctor import DEFAULT_WRITING_FRESH_SECONDS, inspect_checkpoint
from trainguard.checkpoint.model import CheckpointInfo, Status
from trainguard.checkpoint.names import parse_name

Signature = tuple[int, tuple[tuple[str, int, int], ...]]


def sort_key(info: CheckpointInfo) -> tuple[int, int, int, int, str]:
    """Ascending = oldest first; sort with reverse=True for newest first."""
    has_step = 0 if info.step is None else 1
    return (has_step, info.step if info.step is not None else -1, 1 if info.final else 0,
            info.epoch if info.epoch is not None else -1, info.name)


def _candidates(output_dir: Path) -> list[str]:
    names = []
    with os.scandir(output_dir) as it:
        for entry in it:
            if parse_name(entry.name) is not None and entry.is_dir():
                names.append(entry.name)
    return names


def _signature(folder: Path) -> Signature | None:
    try:
        own = folder.stat().st_mtime_ns
        files = []
        with os.scandir(folder) as it:
            for entry in it:
                st = entry.stat()
                files.append((entry.name, st.st_size, st.st_mtime_ns))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return own, tuple(sorted(files))


class CheckpointScanner:
    """Cached :func:`list_checkpoints` for one output folder (not thread-safe)."""

    def __init__(self, output_dir: Path,
                 writing_fresh_seconds: float = DEFAULT_WRITING_FRESH_SECONDS) -> None:
        self.output_dir = Path(output_dir).absolute()
        self.writing_fresh_seconds = writing_fresh_seconds
        self._dir_mtime_ns: int | None = None
        self._names: list[str] = []
        self._cache: dict[str, tuple[Signature, CheckpointInfo]] = {}
        self.inspections = 0  # how many folders were really inspected (for tests, bench)

    def scan(self, now: float | None = None) -> list[CheckpointInfo]:
        """Every checkpoint, newest step first; [] while the output folder does not exist."""
        now = time.time() if now is None else now
        try:
            mtime_ns = self.output_dir.stat().st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            self._dir_mtime_ns, self._names, self._cache = None, [], {}
            return []
        if mtime_ns != self._dir_mtime_ns:
            try:
                self._names = _candidates(self.output_dir)
            except (FileNotFoundError, NotADirectoryError):
                return []
            self._dir_mtime_ns = mtime_ns
            self._cache = {k: v for k, v in self._cache.items() if k in set(self._names)}
        infos = []
        for name in self._names:
            folder = self.output_dir / name
            sig = _signature(folder)
            if sig is None:
                self._cache.pop(name, None)
                continue
            cached = self._cache.get(name)
            if cached is not None and cached[0] == sig and cached[1].status is not Status.WRITING:
                infos.append(cached[1])
                continue
            try:
                info = inspect_checkpoint(folder, now=now,
                                          writing_fresh_seconds=self.writing_fresh_seconds)
            except (FileNotFoundError, NotADirectoryError):
                self._cache.pop(name, None)
                continue
            self.inspections += 1
            self._cache[name] = (sig, info)
            infos.append(info)
        infos.sort(key=sort_key, reverse=True)
        return infos

    def latest_usable(self, now: float | None = None) -> CheckpointInfo | None:
        """The newest valid or repairable checkpoint, or None."""
        return next((i for i in self.scan(now) if i.usable), None)


def list_checkpoints(output_dir: Path, *, now: float | None = None,
                     writing_fresh_seconds: float = DEFAULT_WRITING_FRESH_SECONDS
                     ) -> list[CheckpointInfo]:
    """Every checkpoint in ``output_dir``, newest step first ([] if it does not exist)."""
    return CheckpointScanner(output_dir, writing_fresh_seconds).scan(now)


def latest_usable(output_dir: Path, *, now: float | None = None,
                  writing_fresh_seconds: float = DEFAULT_WRITING_FRESH_SECONDS
                  ) -> CheckpointInfo | None:
    """The newest valid or repairable checkpoint in ``output_dir``, or None."""
    return next((i for i in list_checkpoints(output_dir, now=now,
                                             writing_fresh_seconds=writing_fresh_seconds)
                 if i.usable), None)

"""All checkpoints of an output folder, newest step first, and a cache for the exporter.

Order (DESIGN.md §3.4): by step, never by mtime alone (a copied or restored folder has a
new mtime and an old step).  Ties: sd-scripts' end-of-training ``{name}-state`` after the
step folders, then by name.  Folders with no training step (only accelerate's RNG
counter, or nothing) sort below every folder with one, by what their names say; see
:func:`sort_key`.

The cache: the exporter scrapes every few seconds and an output folder may hold hundreds
of multi-GB checkpoints.  A folder is re-inspected only when its stat signature (its own
mtime plus the names, sizes and mtimes of its files) changed, and the output folder is
re-listed only when its own mtime (or its ``checkpoints/`` sub-folder's) changed.
``writing`` depends on the clock, so those are re-inspected every time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from trainguard.checkpoint.doctor import DEFAULT_WRITING_FRESH_SECONDS, inspect_checkpoint
from trainguard.checkpoint.model import CheckpointInfo, Status
from trainguard.checkpoint.names import AUTOMATIC_FOLDER, parse_name

TRAINING_STEP_SOURCES = ("train_state.json", "trainer_state.json", "name")

Signature = tuple[int, tuple[tuple[str, int, int], ...]]


def sort_key(info: CheckpointInfo) -> tuple[int, int, int, int, int, int, str]:
    """Ascending = oldest first; sort with reverse=True for newest first.

    A step orders folders only when it is a training step, from train_state.json or the
    folder name.  accelerate's RNG ``step`` is a micro-batch counter that restarts every
    epoch, so folders known only by it are ordered by what their names say: sd-scripts'
    end-of-training folder last, then the epoch, then accelerate's save counter
    (``checkpoint_{N}``); the RNG step only breaks the ties left.
    """
    trained = info.step if info.step_source in TRAINING_STEP_SOURCES else None
    return (0 if trained is None else 1, -1 if trained is None else trained,
            1 if info.final else 0, -1 if info.epoch is None else info.epoch,
            -1 if info.save_index is None else info.save_index,
            -1 if info.rng_step is None else info.rng_step, info.name)


def _candidates(output_dir: Path) -> list[str]:
    """Checkpoint folders in ``output_dir``, and accelerate's automatically named ones in
    its ``checkpoints/`` sub-folder (as paths relative to ``output_dir``)."""
    names = []
    with os.scandir(output_dir) as it:
        for entry in it:
            if parse_name(entry.name) is not None and entry.is_dir():
                names.append(entry.name)
    try:
        with os.scandir(output_dir / AUTOMATIC_FOLDER) as it:
            for entry in it:
                parsed = parse_name(entry.name)
                if parsed is not None and parsed.kind == "iteration" and entry.is_dir():
                    names.append(f"{AUTOMATIC_FOLDER}/{entry.name}")
    except (FileNotFoundError, NotADirectoryError):
        pass
    return names


def _listing_signature(output_dir: Path) -> tuple[int, int | None]:
    """What changes when a checkpoint folder appears or goes: the mtimes of the output
    folder and of its automatic ``checkpoints/`` sub-folder."""
    own = output_dir.stat().st_mtime_ns
    try:
        sub: int | None = (output_dir / AUTOMATIC_FOLDER).stat().st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        sub = None
    return own, sub


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
        self._listing: tuple[int, int | None] | None = None
        self._names: list[str] = []
        self._cache: dict[str, tuple[Signature, CheckpointInfo]] = {}
        self.inspections = 0  # how many folders were really inspected (for tests, bench)

    def scan(self, now: float | None = None) -> list[CheckpointInfo]:
        """Every checkpoint, newest step first; [] while the output folder does not exist."""
        now = time.time() if now is None else now
        try:
            listing = _listing_signature(self.output_dir)
        except (FileNotFoundError, NotADirectoryError):
            self._listing, self._names, self._cache = None, [], {}
            return []
        if listing != self._listing:
            try:
                self._names = _candidates(self.output_dir)
            except (FileNotFoundError, NotADirectoryError):
                return []
            self._listing = listing
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

"""All checkpoints of an output folder, newest first, and a cache for the exporter.

Order: by how far training really got (:mod:`trainguard.checkpoint.order`), never by mtime
alone (a copied or restored folder has a new mtime and an old step).  An optional
:class:`trainguard.ledger.ResumeLedger` of trainguard's own resumes sharpens it.

The cache: the exporter scrapes every few seconds and an output folder may hold hundreds
of multi-GB checkpoints.  A folder is re-inspected only when its stat signature (its own
mtime plus the names, sizes and mtimes of its files, and of the files one level down,
where ``save_pretrained`` writes) changed, and the output folder is re-listed only when
its own mtime (or its ``checkpoints/`` sub-folder's) changed.  ``writing`` depends on the
clock, so those are re-inspected every time.

Sizes come with the signature for free: the same ``scandir`` pass that stats every file
adds up their bytes (:meth:`CheckpointScanner.size`), so the exporter's
``trainguard_checkpoint_latest_size_bytes`` costs no walk of its own, and
:func:`checkpoint_bytes` is the same sum for a one-off question (the remediator's disk
check before a resume).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from trainguard.checkpoint.doctor import DEFAULT_WRITING_FRESH_SECONDS, inspect_checkpoint
from trainguard.checkpoint.model import CheckpointInfo, Status
from trainguard.checkpoint.names import AUTOMATIC_FOLDER, parse_name
from trainguard.checkpoint.order import by_progress
from trainguard.ledger import ResumeLedger

Signature = tuple[int, tuple[tuple[str, int, int], ...]]


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


def _signature(folder: Path) -> tuple[Signature, int] | None:
    """The folder's stat signature and the bytes of its files (one sub-folder level, as
    ``save_pretrained`` writes); None when it is gone."""
    try:
        own = folder.stat().st_mtime_ns
        files = []
        size = 0
        with os.scandir(folder) as it:
            for entry in it:
                st = entry.stat()
                files.append((entry.name, st.st_size, st.st_mtime_ns))
                if entry.is_dir():
                    with os.scandir(entry.path) as sub:
                        for e in sub:
                            st = e.stat()
                            files.append((f"{entry.name}/{e.name}", st.st_size, st.st_mtime_ns))
                            if not e.is_dir():
                                size += st.st_size
                else:
                    size += st.st_size
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (own, tuple(sorted(files))), size


def checkpoint_bytes(folder: Path) -> int | None:
    """Bytes of the files of one checkpoint folder (as :meth:`CheckpointScanner.size`
    counts them); None when it is gone."""
    got = _signature(Path(folder))
    return None if got is None else got[1]


class CheckpointScanner:
    """Cached :func:`list_checkpoints` for one output folder (not thread-safe)."""

    def __init__(self, output_dir: Path,
                 writing_fresh_seconds: float = DEFAULT_WRITING_FRESH_SECONDS) -> None:
        self.output_dir = Path(output_dir).absolute()
        self.writing_fresh_seconds = writing_fresh_seconds
        self._listing: tuple[int, int | None] | None = None
        self._names: list[str] = []
        self._cache: dict[str, tuple[Signature, CheckpointInfo]] = {}
        self._sizes: dict[str, int] = {}
        self.inspections = 0  # how many folders were really inspected (for tests, bench)

    def scan(self, now: float | None = None,
             ledger: ResumeLedger | None = None) -> list[CheckpointInfo]:
        """Every checkpoint, newest first; [] while the output folder does not exist."""
        now = time.time() if now is None else now
        try:
            listing = _listing_signature(self.output_dir)
        except (FileNotFoundError, NotADirectoryError):
            self._listing, self._names, self._cache, self._sizes = None, [], {}, {}
            return []
        if listing != self._listing:
            try:
                self._names = _candidates(self.output_dir)
            except (FileNotFoundError, NotADirectoryError):
                return []
            self._listing = listing
            self._cache = {k: v for k, v in self._cache.items() if k in set(self._names)}
            self._sizes = {k: v for k, v in self._sizes.items() if k in set(self._names)}
        infos = []
        for name in self._names:
            folder = self.output_dir / name
            got = _signature(folder)
            if got is None:
                self._cache.pop(name, None)
                self._sizes.pop(name, None)
                continue
            sig, self._sizes[name] = got
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
        return by_progress(infos, ledger)

    def latest_usable(self, now: float | None = None,
                      ledger: ResumeLedger | None = None) -> CheckpointInfo | None:
        """The newest usable checkpoint, or None."""
        return next((i for i in self.scan(now, ledger) if i.usable), None)

    def size(self, info: CheckpointInfo) -> int | None:
        """Bytes of a checkpoint the last :meth:`scan` returned (from its stat pass; no
        walk of its own); None for one it did not see."""
        try:
            name = info.path.relative_to(self.output_dir).as_posix()
        except ValueError:
            return None
        return self._sizes.get(name)


def list_checkpoints(output_dir: Path, *, now: float | None = None,
                     writing_fresh_seconds: float = DEFAULT_WRITING_FRESH_SECONDS,
                     ledger: ResumeLedger | None = None) -> list[CheckpointInfo]:
    """Every checkpoint in ``output_dir``, newest first ([] if it does not exist)."""
    return CheckpointScanner(output_dir, writing_fresh_seconds).scan(now, ledger)


def latest_usable(output_dir: Path, *, now: float | None = None,
                  writing_fresh_seconds: float = DEFAULT_WRITING_FRESH_SECONDS,
                  ledger: ResumeLedger | None = None) -> CheckpointInfo | None:
    """The newest usable checkpoint in ``output_dir``, or None."""
    return next((i for i in list_checkpoints(output_dir, now=now, ledger=ledger,
                                             writing_fresh_seconds=writing_fresh_seconds)
                 if i.usable), None)

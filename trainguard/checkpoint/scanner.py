"""All checkpoints of an output folder, newest first, and a cache for the exporter.

Order: by how far training really got (:mod:`trainguard.checkpoint.order`), never by mtime
alone (a copied or restored folder has a new mtime and an old step).  An optional
:class:`trainguard.ledger.ResumeLedger` of trainguard's own resumes sharpens it.

The cache (:class:`CheckpointScanner`): the exporter scrapes every 15 s and an output
folder may hold thousands of multi-GB checkpoints, so a scan pays for what changed, not
for what exists:

* the output folder is re-listed only when its own mtime (or its ``checkpoints/``
  sub-folder's) changed, and then only the names that appeared are parsed;
* a folder whose newest file is older than the writing window is **trusted from its own
  stat** (inode and ctime: a file created, removed or renamed in it, a new mtime, a
  folder replaced under the same name change them), one stat per scan; its files are
  re-checked **in rotation**, enough per scan for a full turn every
  :data:`ROTATION_SCANS` scans, which catches a file rewritten in place;
* a folder written within the window, or whose own stat changed, has its signature (its
  own stat plus the names, sizes and mtimes of its files, and of the files one level
  down, where ``save_pretrained`` writes) compared, and is re-inspected only when that
  changed; ``writing`` depends on the clock, so a WRITING folder is re-inspected every
  time;
* the order is kept between scans, each folder with its sort key, so taking in a new
  checkpoint costs its own inspection and a binary search, whatever the folder holds.

Sizes come with the signature for free: the same ``scandir`` pass that stats every file
adds up their bytes (:meth:`CheckpointScanner.size`, as of the folder's latest signature),
so the exporter's ``trainguard_checkpoint_latest_size_bytes`` costs no walk of its own,
and :func:`checkpoint_bytes` is the same sum for a one-off question (the remediator's disk
check before a resume).

A scan may be given a deadline (:meth:`CheckpointScanner.scan_until`): it then stops
inspecting once the deadline has passed, keeping what it inspected, so the next scan goes
on from there (the exporter finishes a huge first scan in the background this way).

Without a cache (:func:`list_checkpoints`, what the remediator and the CLI use) every
folder is inspected.  Checkpoints whose sort keys are equal (only possible for two
folders of one name, one of them in ``checkpoints/``, and alike in everything else) come
in the order of their relative paths.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from trainguard.checkpoint.doctor import DEFAULT_WRITING_FRESH_SECONDS, inspect_checkpoint
from trainguard.checkpoint.model import CheckpointInfo, Status
from trainguard.checkpoint.names import AUTOMATIC_FOLDER, parse_name
from trainguard.checkpoint.order import Key, progress_key
from trainguard.ledger import ResumeLedger

# A folder's own stat: (inode, mtime, ctime) in ns.
Own = tuple[int, int, int]
Signature = tuple[Own, tuple[tuple[str, int, int], ...]]

# Every trusted folder's files are re-checked at least once every ROTATION_SCANS scans
# (25 minutes at the production 15 s, whatever the folder holds).
ROTATION_SCANS = 100


def _listing_signature(output_dir: str) -> tuple[int, int | None]:
    """What changes when a checkpoint folder appears or goes: the mtimes of the output
    folder and of its automatic ``checkpoints/`` sub-folder."""
    own = os.stat(output_dir).st_mtime_ns
    try:
        sub: int | None = os.stat(os.path.join(output_dir, AUTOMATIC_FOLDER)).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        sub = None
    return own, sub


def _entries(output_dir: str, first: bool) -> tuple[list[str], set[str] | None]:
    """Every name in ``output_dir`` and, as ``checkpoints/NAME``, in its automatic
    ``checkpoints/`` sub-folder, in listing order; for the ``first`` listing also which of
    them are folders (from the listing itself, without a stat per name: the first
    listing of 20,000 folders must not cost 20,000 stats)."""
    if not first:
        names = os.listdir(output_dir)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            names += [f"{AUTOMATIC_FOLDER}/{n}"
                      for n in os.listdir(os.path.join(output_dir, AUTOMATIC_FOLDER))]
        return names, None
    names, dirs = [], set()
    for prefix, folder in (("", output_dir),
                           (f"{AUTOMATIC_FOLDER}/", os.path.join(output_dir, AUTOMATIC_FOLDER))):
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    names.append(prefix + entry.name)
                    if entry.is_dir():
                        dirs.add(prefix + entry.name)
        except (FileNotFoundError, NotADirectoryError):
            if not prefix:
                raise
    return names, dirs


def _checkpoint_name(rel: str) -> bool:
    """A checkpoint's name: any in the output folder, accelerate's automatic ones
    (``checkpoint_N``) in its ``checkpoints/`` sub-folder."""
    head, _, tail = rel.rpartition("/")
    parsed = parse_name(tail)
    return parsed is not None and (not head or parsed.kind == "iteration")


def _own(st: os.stat_result) -> Own:
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def _signature(folder: str) -> tuple[Signature, int] | None:
    """The folder's stat signature and the bytes of its files (one sub-folder level, as
    ``save_pretrained`` writes); None when it is gone."""
    try:
        own = _own(os.stat(folder))
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
    got = _signature(str(folder))
    return None if got is None else got[1]


def _turn(names: list[str], at: int, width: int) -> list[str]:
    """``width`` names from position ``at`` on, going round."""
    start = at % len(names)
    part = names[start:start + width]
    return part + names[:width - len(part)] if len(part) < width else part


@dataclass(slots=True)
class _Seen:
    """One folder as last inspected."""

    path: str
    sig: Signature
    info: CheckpointInfo
    key: Key
    size: int         # bytes of its files, as of sig
    ino: int = 0      # the folder's own inode and ctime, from sig, compared on every scan
    ctime: int = 0

    def __post_init__(self) -> None:
        self.ino, self.ctime = self.sig[0][0], self.sig[0][2]


class CheckpointScanner:
    """Cached :func:`list_checkpoints` for one output folder (not thread-safe: one caller
    at a time; the exporter hands a scanner to its background thread and back)."""

    def __init__(self, output_dir: Path,
                 writing_fresh_seconds: float = DEFAULT_WRITING_FRESH_SECONDS) -> None:
        self.output_dir = Path(output_dir).absolute()
        self.writing_fresh_seconds = writing_fresh_seconds
        self._dir = str(self.output_dir)
        self.inspections = 0  # how many folders were really inspected (for tests, bench)
        self._reset()

    def _reset(self) -> None:
        """Forget everything (the output folder is gone)."""
        self._listing: tuple[int, int | None] | None = None
        self._entries: set[str] = set()       # every name listed last time
        self._odd: set[str] = set()           # checkpoint names that were not folders
        self._names: list[str] = []           # the checkpoint folders (rotation order)
        self._cache: dict[str, _Seen] = {}
        self._new: list[str] = []             # listed, not inspected yet (or that failed)
        self._hot: set[str] = set()           # written within the window, or WRITING
        self._ledger: ResumeLedger | None = None  # the keys in _cache are for this one
        self._keys: list[tuple[Key, str]] = []    # ascending: least far first
        self._infos: list[CheckpointInfo] = []    # the same order
        self._files_turn = 0                  # where the rotation goes on

    def scan(self, now: float | None = None,
             ledger: ResumeLedger | None = None) -> list[CheckpointInfo]:
        """Every checkpoint, newest first; [] while the output folder does not exist."""
        result = self._scan(now, ledger, None, time.monotonic)
        assert result is not None  # only a deadline stops a scan early
        return result

    def scan_until(self, deadline: float, now: float | None = None,
                   ledger: ResumeLedger | None = None,
                   clock: Callable[[], float] = time.monotonic
                   ) -> list[CheckpointInfo] | None:
        """:meth:`scan`, or None when ``deadline`` (on ``clock``) passed first: what was
        inspected so far is kept, and the next scan goes on from there."""
        return self._scan(now, ledger, deadline, clock)

    def latest_usable(self, now: float | None = None,
                      ledger: ResumeLedger | None = None) -> CheckpointInfo | None:
        """The newest usable checkpoint, or None."""
        return next((i for i in self.scan(now, ledger) if i.usable), None)

    def size(self, info: CheckpointInfo) -> int | None:
        """Bytes of a checkpoint the last :meth:`scan` returned (from its latest signature;
        no walk of its own); None for one it did not see."""
        try:
            name = info.path.relative_to(self.output_dir).as_posix()
        except ValueError:
            return None
        seen = self._cache.get(name)
        return seen.size if seen is not None else None

    # ------------------------------------------------------------------ one scan

    def _scan(self, now: float | None, ledger: ResumeLedger | None, deadline: float | None,
              clock: Callable[[], float]) -> list[CheckpointInfo] | None:
        now = time.time() if now is None else now
        if not self._relist():
            return []
        cache = self._cache
        if ledger != self._ledger:
            self._ledger = ledger
            for entry in cache.values():
                entry.key = progress_key(entry.info, ledger)
            self._rebuild()
        todo = [name for name in self._new if name not in cache]
        todo += self._to_compare(now)
        fresh = self.writing_fresh_seconds
        for name in todo:
            if deadline is not None and clock() > deadline:
                self._new = [n for n in self._new if n not in cache]
                return None
            seen = cache.get(name)
            path = seen.path if seen is not None else f"{self._dir}/{name}"
            got = _signature(path)
            if got is None:
                self._forget(name)
                continue
            sig, size = got
            if seen is not None and seen.sig == sig and seen.info.status is not Status.WRITING:
                seen.size = size
                continue
            try:
                info = inspect_checkpoint(Path(path), now=now, writing_fresh_seconds=fresh)
            except (FileNotFoundError, NotADirectoryError):
                self._forget(name)
                continue
            self.inspections += 1
            self._forget(name)
            self._remember(_Seen(path, sig, info, progress_key(info, ledger), size), name)
            if info.status is Status.WRITING or now - info.mtime < fresh:
                self._hot.add(name)
        self._new = [name for name in self._new if name not in cache]  # failed: again
        return self._infos[::-1]

    def _to_compare(self, now: float) -> list[str]:
        """Inspected folders whose signature this scan compares: the hot ones, this scan's
        slice of the rotation, and the trusted ones whose own stat changed."""
        cache, fresh = self._cache, self.writing_fresh_seconds
        check: set[str] = set()
        for name in list(self._hot):
            seen = cache.get(name)
            if seen is not None and (seen.info.status is Status.WRITING
                                     or now - seen.info.mtime < fresh):
                check.add(name)
            else:
                self._hot.discard(name)  # old enough now: trusted from its own stat
        names = self._names
        if names:
            width = -(-len(names) // ROTATION_SCANS)
            check.update(n for n in _turn(names, self._files_turn, width) if n in cache)
            self._files_turn += width
        stat = os.stat
        for name, seen in cache.items():
            if name in check:
                continue
            try:
                st = stat(seen.path)
            except (FileNotFoundError, NotADirectoryError):
                check.add(name)
                continue
            if st.st_ctime_ns != seen.ctime or st.st_ino != seen.ino:
                check.add(name)
        return list(check)

    # ------------------------------------------------------------------ the order

    def _remember(self, seen: _Seen, name: str) -> None:
        self._cache[name] = seen
        i = bisect.bisect_left(self._keys, (seen.key, name))
        self._keys.insert(i, (seen.key, name))
        self._infos.insert(i, seen.info)

    def _forget(self, name: str) -> None:
        seen = self._cache.pop(name, None)
        self._hot.discard(name)
        if seen is None:
            return
        i = bisect.bisect_left(self._keys, (seen.key, name))
        if i < len(self._keys) and self._keys[i][1] == name:
            del self._keys[i]
            del self._infos[i]

    def _rebuild(self) -> None:
        """The order from scratch (new ledger, folders gone)."""
        pairs = sorted(((s.key, name), s.info) for name, s in self._cache.items())
        self._keys = [k for k, _ in pairs]
        self._infos = [i for _, i in pairs]

    # ------------------------------------------------------------------ the listing

    def _relist(self) -> bool:
        """Re-list the output folder if it changed; False while it does not exist."""
        try:
            listing = _listing_signature(self._dir)
            if listing == self._listing:
                return True
            entries, dirs = _entries(self._dir, first=self._listing is None)
        except (FileNotFoundError, NotADirectoryError):
            self._reset()
            return False
        now_listed = set(entries)
        gone = self._entries - now_listed
        if self._entries:
            added: Iterable[str] = sorted(now_listed - self._entries)
        else:
            added = entries  # the first listing: in its own order
        recheck = self._odd & now_listed
        self._entries, self._listing = now_listed, listing
        if gone:
            self._names = [n for n in self._names if n not in gone]
            self._new = [n for n in self._new if n not in gone]
            self._odd -= gone
            dropped = [n for n in gone if n in self._cache]
            for name in dropped:
                self._cache.pop(name)
                self._hot.discard(name)
            if dropped:
                self._rebuild()
        found = []
        for name in [*added, *recheck]:
            if name in recheck or _checkpoint_name(name):
                if name in dirs if dirs is not None else os.path.isdir(f"{self._dir}/{name}"):
                    self._odd.discard(name)
                    found.append(name)
                else:
                    self._odd.add(name)  # a file of that name: looked at again next time
        self._names += found
        self._new += found
        return True


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

"""Free space where a job writes: the one definition the exporter and the remediator share.

Why: a save that does not fit leaves a half-written checkpoint (seed 001: a full disk
during a save); a FLUX LoRA state is ~240 MB.  The exporter publishes the free bytes so
an alert can warn before the next save, and the remediator refuses to resume a run into a
disk that cannot hold one more save.  Both must mean the same bytes.

"Free" is what an unprivileged writer may use: ``f_bavail * f_frsize`` of
``statvfs(2)`` (``df``'s "Available"), not ``f_bfree``, which counts the blocks reserved
for root (5 % on ext4 by default) that a training run as a normal user cannot use.
"""

from __future__ import annotations

import os
from pathlib import Path


def available_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still write on the filesystem holding ``path``.

    A path that does not exist yet (an output folder before the first save) is judged by
    its nearest existing ancestor: that is where it will be created.  OSError when not
    even ``/`` can be asked (never in practice).
    """
    p = Path(path).absolute()
    while True:
        try:
            st = os.statvfs(p)
        except (FileNotFoundError, NotADirectoryError):
            if p.parent == p:
                raise
            p = p.parent
            continue
        return int(st.f_bavail) * int(st.f_frsize)


def human_bytes(n: float) -> str:
    """``1.5 GiB`` style, for messages a person reads."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop returns

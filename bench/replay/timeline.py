"""A trainer's run in simulated seconds: what it writes to its log, and what the host shows.

The log text is written by the real writers (tests/helpers/upstream_log.py: rich's handler
set up as sd-scripts does, real tqdm bars); the host facts (process alive, GPU utilization
and power, a checkpoint being written) are what the exporter's process, GPU and checkpoint
collectors would report, from DESIGN.md §4's H100 calibration:

======================  ===========  ========
activity                utilization  power
======================  ===========  ========
no CUDA context yet     0            72 W
loading / CPU work      0.02         122 W
training                0.97         486 W
sampling (denoising)    0.95         450 W
caching latents         0.60         300 W
saving                  0.05         124 W
hung, idle              0.0          122 W
hung in a spinning op   1.0          124 W
======================  ===========  ========

A hang (:class:`Hang`) stops the trainer where it is: nothing more is written, the GPU
stays idle or spins, the process lives on.  The remediator is not simulated: the replay
measures when the rules would have called it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from helpers.upstream_log import UpstreamLog

LIMIT_W = 700.0
GPU = {
    "none": (0.0, 72.0), "cpu": (0.02, 122.0), "train": (0.97, 486.0),
    "sample": (0.95, 450.0), "cache": (0.60, 300.0), "save": (0.05, 124.0),
    "hung": (0.0, 122.0), "spin": (1.0, 124.0),
}
WRITING_FRESH = 300.0   # the doctor calls a state without its RNG file "writing" this long


class Hung(Exception):
    """Raised by a builder where its hang begins: nothing after it happens."""


@dataclass
class Hang:
    """Where the trainer stops: ``where`` is a point of the builder (``"step"``,
    ``"sampling"``, ``"caching"``, ``"saving"``, ``"validation"``, ``"first_step"``,
    ``"loading"``), ``nth`` which occurrence (steps: the global step), ``after`` how far
    into it (seconds), ``mode`` ``"idle"`` or ``"spin"``."""

    where: str
    nth: int = 1
    after: float = 0.0
    mode: str = "idle"


@dataclass
class Timeline:
    hang: Hang | None = None
    t: float = 0.0
    events: list[tuple[float, Callable[[UpstreamLog], None]]] = field(default_factory=list)
    gpu: list[tuple[float, str]] = field(default_factory=list)        # from t: activity
    writing: list[tuple[float, float]] = field(default_factory=list)  # [start, end)
    processes: list[tuple[float, float | None]] = field(default_factory=list)
    hang_at: float | None = None
    seen: dict[str, int] = field(default_factory=dict)
    files: list[tuple[float, str]] = field(default_factory=list)      # written into output_dir

    def write_file(self, name: str) -> None:
        """The trainer writes ``name`` into its output folder now (the final weights are
        how a run without a log is seen to have completed)."""
        self.files.append((self.t, name))

    def log(self, fn: Callable[[UpstreamLog], None]) -> None:
        self.events.append((self.t, fn))

    def wait(self, seconds: float) -> None:
        self.t += seconds

    def activity(self, what: str) -> None:
        self.gpu.append((self.t, what))

    def point(self, where: str, nth: int | None = None) -> float | None:
        """Count an occurrence of ``where``; the hang's offset into it if it hangs here."""
        n = self.seen[where] = self.seen.get(where, 0) + 1 if nth is None else nth
        h = self.hang
        if h is not None and h.where == where and h.nth == n:
            return h.after
        return None

    def stop(self, after: float) -> None:
        """Hang ``after`` seconds from now: the GPU idles or spins, the process lives."""
        assert self.hang is not None
        self.wait(after)
        self.hang_at = self.t
        self.activity("spin" if self.hang.mode == "spin" else "hung")
        raise Hung

    def start_process(self) -> None:
        self.processes.append((self.t, None))
        self.activity("none")

    def end_process(self) -> None:
        start, _ = self.processes[-1]
        self.processes[-1] = (start, self.t)
        self.activity("none")

    def save(self, seconds: float, hang: float | None) -> None:
        """A state save: the doctor sees a state folder being written (DESIGN.md §4)."""
        self.activity("save")
        if hang is not None:
            self.writing.append((self.t, self.t + WRITING_FRESH))
            self.stop(hang)
        self.writing.append((self.t, self.t + seconds))
        self.wait(seconds)

    # ------------------------------------------------------------------ the host at t

    def gpu_at(self, t: float) -> tuple[float, float] | None:
        what = "none"
        for since, activity in self.gpu:
            if since <= t:
                what = activity
        if not self.alive(t) or what == "none":
            return None
        return GPU[what]

    def alive(self, t: float) -> bool:
        return any(s <= t and (e is None or t < e) for s, e in self.processes)

    def start_time(self, t: float) -> float:
        live = [s for s, e in self.processes if s <= t and (e is None or t < e)]
        return min(live) if live else 0.0

    def is_writing(self, t: float) -> bool:
        return any(s <= t < e for s, e in self.writing)

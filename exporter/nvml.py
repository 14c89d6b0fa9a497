"""One long-lived NVML session: init once, read every GPU per scrape, recover with backoff.

Why not ``nvidia-smi``: one call costs ~30 ms and a fork; the NVML calls behind it cost
microseconds (DESIGN.md §4).  Why keep the session open: ``nvmlInit`` is the slow part
(tens of ms on a real driver), so it happens once, and again only after a failure, no
more often than the backoff allows, so a broken driver is not hammered every scrape.

Three states, as node_exporter would see them:

* no NVML library on this host (``NVMLError_LibraryNotFound``): a machine without an
  NVIDIA driver is normal, not an error: ``read()`` returns a snapshot with
  ``available=False`` and no GPUs; the library is looked for again every
  ``absent_retry_seconds``;
* NVML present but failing (init fails, the driver went away): ``read()`` raises
  :class:`NvmlUnavailable`; the collector reports success 0;
* working: per-GPU readings; a GPU that fails on its own (``GPU_IS_LOST``) is left out and
  named in ``snapshot.errors`` while the others are still read.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pynvml

log = logging.getLogger(__name__)


class NvmlUnavailable(Exception):
    """NVML is installed but cannot be used right now."""


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant, in base units.  ``None``: the GPU does not report it."""

    index: int
    uuid: str
    name: str
    utilization: float | None  # 0..1
    memory_used: int | None  # bytes
    memory_total: int | None
    power_watts: float | None
    power_limit_watts: float | None
    temperature_celsius: float | None
    # Compute processes: pid -> bytes it holds (None where NVML cannot say, e.g. WDDM).
    processes: dict[int, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class GpuSnapshot:
    available: bool  # False: no NVML library on this host at all
    gpus: tuple[GpuReading, ...] = ()
    errors: tuple[str, ...] = ()  # per-GPU failures, e.g. "gpu 1: GPU is lost"


def _optional(fn: Callable[[], Any]) -> Any:
    """A reading some GPUs do not support (power on old boards...): None instead of failing."""
    try:
        return fn()
    except pynvml.NVMLError_NotSupported:
        return None


class NvmlSession:
    """Owns ``nvmlInit``/``nvmlShutdown`` and the cached per-GPU handles and names."""

    def __init__(self, *, min_backoff: float = 1.0, max_backoff: float = 60.0,
                 absent_retry_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._absent_retry = absent_retry_seconds
        self._clock = clock
        self._initialized = False
        self._absent = False
        self._backoff = 0.0
        self._next_try = 0.0
        self._last_error = ""
        # index -> (handle, uuid, name): static facts read once per init.
        self._devices: dict[int, tuple[Any, str, str]] = {}
        self.driver_version: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def _ensure(self) -> bool:
        """Initialise if due.  True: usable; False: no library; raises when failing."""
        if self._initialized:
            return True
        now = self._clock()
        if now < self._next_try:
            if self._absent:
                return False
            raise NvmlUnavailable(f"{self._last_error} (next retry in "
                                  f"{self._next_try - now:.0f}s)")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            if not self._absent:
                log.info("no NVML library (libnvidia-ml.so.1) on this host: "
                         "reporting no GPUs; looking again every %.0fs", self._absent_retry)
            self._absent = True
            self._next_try = now + self._absent_retry
            return False
        except pynvml.NVMLError as exc:
            self._absent = False
            self._fail(f"nvmlInit failed: {exc}")
        self._initialized = True
        self._absent = False
        self._backoff = 0.0
        self._devices.clear()
        try:
            self.driver_version = str(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError:
            self.driver_version = None
        log.info("NVML initialised (driver %s)", self.driver_version or "unknown")
        return True

    def _fail(self, message: str) -> NoReturn:
        """Drop the session, schedule the next init with doubling backoff, and raise."""
        if self._initialized:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
        self._initialized = False
        self._devices.clear()
        self._backoff = min(self._max_backoff, max(self._min_backoff, self._backoff * 2))
        self._next_try = self._clock() + self._backoff
        self._last_error = message
        raise NvmlUnavailable(message)

    def close(self) -> None:
        if self._initialized:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
        self._initialized = False
        self._devices.clear()

    # ------------------------------------------------------------------ reading

    def read(self) -> GpuSnapshot:
        """Every GPU's current values.  Raises :class:`NvmlUnavailable` when NVML fails."""
        if not self._ensure():
            return GpuSnapshot(available=False)
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            self._fail(f"nvmlDeviceGetCount failed: {exc}")
        gpus: list[GpuReading] = []
        errors: list[str] = []
        for index in range(count):
            try:
                gpus.append(self._read_one(index))
            except pynvml.NVMLError as exc:
                # Forget the handle: a GPU that comes back (reset) gets a fresh one.
                self._devices.pop(index, None)
                errors.append(f"gpu {index}: {exc}")
        for stale in [i for i in self._devices if i >= count]:
            del self._devices[stale]
        return GpuSnapshot(available=True, gpus=tuple(gpus), errors=tuple(errors))

    def _device(self, index: int) -> tuple[Any, str, str]:
        dev = self._devices.get(index)
        if dev is None:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            dev = (handle, str(pynvml.nvmlDeviceGetUUID(handle)),
                   str(pynvml.nvmlDeviceGetName(handle)))
            self._devices[index] = dev
        return dev

    def _read_one(self, index: int) -> GpuReading:
        handle, uuid, name = self._device(index)
        util = _optional(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        mem = _optional(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
        power = _optional(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
        limit = _optional(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        temp = _optional(lambda: pynvml.nvmlDeviceGetTemperature(
            handle, pynvml.NVML_TEMPERATURE_GPU))
        procs = _optional(lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []
        return GpuReading(
            index=index, uuid=uuid, name=name,
            utilization=None if util is None else util / 100.0,
            memory_used=None if mem is None else int(mem.used),
            memory_total=None if mem is None else int(mem.total),
            power_watts=None if power is None else power / 1000.0,
            power_limit_watts=None if limit is None else limit / 1000.0,
            temperature_celsius=None if temp is None else float(temp),
            processes={int(p.pid): (None if p.usedGpuMemory is None else int(p.usedGpuMemory))
                       for p in procs},
        )

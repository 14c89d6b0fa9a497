"""Stop one job's process tree, and nothing else.

Why so careful: the old monitor (seed 004) killed every process whose command line
mentioned ``flux_train_network.py`` or ``accelerate launch``: the other run on the host
died with the stuck one.  Here the victims are exactly what :func:`trainguard.process.
job_processes` says belongs to the job (the same rule the exporter reports), and each
signal is preceded by :func:`trainguard.process.same_process`, so a pid the kernel has
recycled since the scan is never signalled.

Order: evidence first (status, cmdline, and a Python stack via ``py-spy dump`` when it is
installed: the stack of a hung run is the one thing a restart destroys), then SIGTERM to
every process, ``grace`` seconds, SIGKILL to the survivors, ``psutil.wait_procs`` to see
them gone, a re-scan for anything spawned meanwhile, and finally a wait until the GPU
memory those pids held is released (a resumed run that starts while the old CUDA context
still holds memory dies with out-of-memory).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from trainguard.config import JobConfig
from trainguard.process import JobProcess, alive, job_processes, same_process

log = logging.getLogger(__name__)

PY_SPY_TIMEOUT = 10.0


@dataclass
class KillResult:
    """What happened; ``ok`` is False when something of the job survived."""

    ok: bool
    terminated: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)
    gpu_released: bool | None = None   # None: no NVML here, nothing to wait for
    detail: str = ""


def evidence(processes: Iterable[JobProcess], py_spy_timeout: float = PY_SPY_TIMEOUT
             ) -> list[dict[str, Any]]:
    """Each process's pid, status, cmdline and (for Python processes) a py-spy stack."""
    py_spy = shutil.which("py-spy")
    out: list[dict[str, Any]] = []
    for p in processes:
        item: dict[str, Any] = {"pid": p.pid, "ppid": p.ppid, "create_time": p.create_time,
                                "status": p.status, "cmdline": list(p.cmdline)}
        try:
            proc = psutil.Process(p.pid)
            item["status"] = proc.status()
            item["cpu_times"] = list(proc.cpu_times())[:2]
            item["rss_bytes"] = proc.memory_info().rss
        except (psutil.Error, OSError):
            item["gone"] = True
        is_python = any("python" in os.path.basename(a) for a in p.cmdline[:1]) or any(
            a.endswith(".py") for a in p.cmdline)
        if py_spy and is_python and p.alive and not item.get("gone"):
            try:
                res = subprocess.run([py_spy, "dump", "--pid", str(p.pid)], capture_output=True,
                                     text=True, timeout=py_spy_timeout, check=False)
                item["py_spy"] = (res.stdout or res.stderr)[-20000:]
            except (OSError, subprocess.TimeoutExpired) as exc:
                item["py_spy"] = f"py-spy failed: {exc}"
        out.append(item)
    if py_spy is None:
        log.debug("py-spy is not on PATH: no Python stacks in the evidence")
    return out


def _still_running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Drop zombies: they have exited and only wait for a parent (not us) to reap them."""
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (zombies count as exited); the survivors."""
    deadline = time.monotonic() + timeout
    still = _still_running(procs)
    while still and time.monotonic() < deadline:
        _gone, alive_ = psutil.wait_procs(still, timeout=min(0.2, timeout))
        still = _still_running(alive_)
    return still


def _signal(procs: Iterable[JobProcess], sig: signal.Signals) -> list[psutil.Process]:
    sent: list[psutil.Process] = []
    for p in procs:
        if not p.alive or not same_process(p.pid, p.create_time):
            continue  # gone already, or the pid now belongs to someone else
        try:
            proc = psutil.Process(p.pid)
            proc.send_signal(sig)
            sent.append(proc)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
        except (psutil.AccessDenied, PermissionError) as exc:
            log.warning("cannot signal pid %d (%s): %s", p.pid, sig.name, exc)
    return sent


def _gpu_pids() -> set[int] | None:
    """Pids holding GPU memory now, or None when NVML is not usable here."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no library: nothing to wait for
        return None
    try:
        pids: set[int] = set()
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for getter in ("nvmlDeviceGetComputeRunningProcesses",
                           "nvmlDeviceGetGraphicsRunningProcesses"):
                try:
                    for info in getattr(pynvml, getter)(handle):
                        pids.add(int(info.pid))
                except Exception:  # noqa: S112 - one getter unsupported is normal
                    continue
        return pids
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)


def wait_gpu_release(pids: set[int], timeout: float, interval: float = 0.5) -> bool | None:
    """Wait until none of ``pids`` holds GPU memory; None when NVML is not available."""
    deadline = time.monotonic() + timeout
    while True:
        holding = _gpu_pids()
        if holding is None:
            return None
        if not holding & pids:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def kill_job(job: JobConfig, grace: float, gpu_timeout: float,
             processes: list[JobProcess] | None = None,
             scan: Callable[[], list[JobProcess]] | None = None) -> KillResult:
    """Terminate the job's whole tree; see the module doc for the order and why.

    ``scan`` lists the job's processes now (the remediator passes its matcher over every
    job, so nesting is judged as the exporter judges it); ``processes`` is the first
    round's list, decided before the kill.
    """
    if scan is None:
        def scan() -> list[JobProcess]:
            return job_processes(job)
    result = KillResult(ok=True)
    all_pids: set[int] = set()
    for _round in range(3):  # a launcher may spawn a worker while we kill: re-scan
        procs = alive(processes if processes is not None else scan())
        processes = None
        if not procs:
            break
        all_pids.update(p.pid for p in procs)
        termed = _signal(procs, signal.SIGTERM)
        result.terminated.extend(p.pid for p in termed)
        still = _wait_gone(termed, grace)
        # Children of the tree that were not in the scan (spawned just now) get the same.
        still_jp = [p for p in procs if p.pid in {s.pid for s in still}]
        killed = _signal(still_jp, signal.SIGKILL)
        result.killed.extend(p.pid for p in killed)
        still = _wait_gone(killed, max(5.0, grace))
        if still:
            result.survivors = [p.pid for p in still]
    leftover = alive(scan())
    if leftover:
        result.survivors = sorted(set(result.survivors) | {p.pid for p in leftover})
    result.ok = not result.survivors
    if all_pids:
        # Memory still held by pids that are gone is the driver's to free; it does not make
        # the kill a failure (refusing to resume then would leave the run dead, which is
        # worse than a resume that may have to wait for memory).  The caller logs it.
        result.gpu_released = wait_gpu_release(all_pids, gpu_timeout)
    result.detail = (f"SIGTERM to {result.terminated or 'none'}, SIGKILL to "
                     f"{result.killed or 'none'}, survivors {result.survivors or 'none'}, "
                     f"GPU memory released: "
                     f"{'n/a (no NVML)' if result.gpu_released is None else result.gpu_released}")
    return result

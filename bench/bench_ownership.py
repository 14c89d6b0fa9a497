"""Benchmark: what the job rule costs per scrape at 1,000 and 3,000 host processes.

The new rule (issue 10: training roots and their descendants, incremental over /proc)
next to the old one (any argument inside output_dir; frozen in
``bench/baseline_process_rule.py``), on the same host at the same moment.  The host is
loaded with N real processes whose argument lists are long and name paths (a third of
them inside a job's folder: the bystanders the old rule had to resolve), plus one real
training root per job.  Each rule's first pass and steady-state passes are timed with 1
and with 10 jobs.  Prints medians, never asserts.

    .venv/bin/python bench/bench_ownership.py [--procs 1000 3000] [--passes 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import baseline_process_rule as old  # noqa: E402
from helpers.bystanders import pause_binary  # noqa: E402
from helpers.common import SLEEPER  # noqa: E402

from trainguard import process as new  # noqa: E402
from trainguard.config import parse_config  # noqa: E402


def timed(fn: Callable[[], object], passes: int) -> tuple[float, float]:
    """(first pass, median of the following passes) in milliseconds."""
    t = time.perf_counter()
    fn()
    first = (time.perf_counter() - t) * 1000
    samples = []
    for _ in range(passes):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return first, statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, nargs="+", default=[1000, 3000])
    ap.add_argument("--passes", type=int, default=30)
    args = ap.parse_args()
    pause = str(pause_binary())
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        jobs = []
        for i in range(10):
            (root / "outputs" / f"run{i}").mkdir(parents=True)
            jobs.append({"name": f"run{i}", "output_dir": f"outputs/run{i}"})
        cfg = parse_config({"jobs": jobs}, root / "trainguard.yaml")
        trainers = [subprocess.Popen([sys.executable, str(SLEEPER), "--output_dir",
                                      f"outputs/run{i}"], cwd=root, start_new_session=True)
                    for i in range(10)]
        noise: list[subprocess.Popen[bytes]] = []
        print(f"{'host procs':>10} {'jobs':>4}  {'old first':>9} {'old median':>10}  "
              f"{'new first':>9} {'new median':>10}  {'ratio':>5}")
        try:
            for target in args.procs:
                while len(noise) < target:
                    k = len(noise)
                    inside = f"outputs/run{k % 10}/samples/{k}.png" if k % 3 == 0 else \
                        f"/data/set/{k}.jpg"
                    argv = ["worker", "--config", f"/etc/tool/{k}.yaml", inside,
                            *(f"--opt{j}=value{j}" for j in range(20))]
                    noise.append(subprocess.Popen(argv, executable=pause, cwd=root,
                                                  start_new_session=True))
                # A real host's processes are mostly old; the rule re-reads the young ones
                # (they may still exec), so let this load age past that window first.
                time.sleep(new.YOUNG_SECONDS + 1.0)
                host = len([n for n in os.listdir("/proc") if n.isdigit()])
                for n_jobs in (1, 10):
                    sel = cfg.jobs[:n_jobs]
                    old_m = old.ProcessMatcher(sel)
                    new_m = new.ProcessMatcher(sel)
                    assert {k: {p.pid for p in v} for k, v in new_m.match().items()} == \
                        {j.name: {trainers[i].pid} for i, j in enumerate(sel)}
                    new_m = new.ProcessMatcher(sel)
                    o_first, o_med = timed(old_m.match, args.passes)
                    n_first, n_med = timed(new_m.match, args.passes)
                    print(f"{host:>10} {n_jobs:>4}  {o_first:>7.1f}ms {o_med:>8.1f}ms  "
                          f"{n_first:>7.1f}ms {n_med:>8.1f}ms  {o_med / n_med:>4.1f}x")
        finally:
            for p in noise + trainers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            for p in noise + trainers:
                p.wait()
    print("steady state: the new rule reads stat only for new pids, pids the kernel may "
          "have recycled, young processes and the jobs' own (trainguard/process.py)")


if __name__ == "__main__":
    main()

"""Slurm on loopback: how long the test cluster takes to come up, and how long a requeued
job takes to run again.  Prints figures, asserts nothing.

Starts the same single-node cluster as the tests (tests/helpers/slurm.py: munged,
slurmctld, slurmd; ``AuthInfo=cred_expire=5``, ``sched_interval=1``) ``--n`` times and
times each start; then, on one cluster, submits a sleeping batch job and times
``scontrol requeue`` -> RUNNING again and ``scontrol requeuehold`` + ``release`` ->
RUNNING again (the remediator's way), ``--requeues`` times each.

    .venv/bin/python bench/bench_slurm.py [--n 5] [--requeues 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from helpers.slurm import SlurmCluster, slurm_cluster  # noqa: E402


def state(cluster: SlurmCluster, job: str) -> tuple[str, str]:
    show = cluster.show(job)
    return show.get("JobState", "?"), show.get("Restarts", "?")


def until_running(cluster: SlurmCluster, job: str, restarts: int) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300:
        if state(cluster, job) == ("RUNNING", str(restarts)):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise SystemExit(f"job {job} did not run again within 300 s: {cluster.show(job)}")


def line(name: str, samples: list[float]) -> None:
    print(f"{name:<44} n={len(samples):2d}  median {statistics.median(samples):6.2f} s  "
          f"min {min(samples):6.2f} s  max {max(samples):6.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--requeues", type=int, default=3)
    args = ap.parse_args()
    starts: dict[str, list[float]] = {}
    for _ in range(args.n):
        with slurm_cluster() as c:
            for k, v in c.startup_seconds.items():
                starts.setdefault(k, []).append(v)
    for k, v in starts.items():
        line(f"start-up: {k}", v)
    with slurm_cluster() as c:
        script = c.root / "sleep.sbatch"
        script.write_text("#!/bin/bash\n#SBATCH --requeue\n#SBATCH --output=/dev/null\n"
                          "sleep 600\n")
        job = c.sbatch(script, cwd=c.root)
        first = until_running(c, job, 0)
        print(f"{'submit -> RUNNING':<44} {first:6.2f} s")
        plain, held = [], []
        n = 0
        for _ in range(args.requeues):
            n += 1
            c.run("scontrol", "requeue", job)
            plain.append(until_running(c, job, n))
            n += 1
            t0 = time.monotonic()
            c.run("scontrol", "requeuehold", job)
            c.run("scontrol", "release", job)
            until_running(c, job, n)
            held.append(time.monotonic() - t0)
        line("scontrol requeue -> RUNNING again", plain)
        line("requeuehold + release -> RUNNING again", held)
        print("(cred_expire=5: a requeued job is eligible ~6 s after the requeue; "
              "sched_interval=1)")


if __name__ == "__main__":
    main()

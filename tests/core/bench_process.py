"""Benchmark: ProcessMatcher.match() and LogFollower.poll() on a busy host (prints figures).

    .venv/bin/python tests/core/bench_process.py [N_PROCESSES]

Starts N idle ``sleep`` processes (the noise) plus one job process, then times match()
for 4 jobs, and a poll() of a 64 MiB log with nothing new and with one new bar.
Not collected by pytest: a figure, never an assertion.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainguard.config import parse_config
from trainguard.process import ProcessMatcher
from trainguard.progress import LogFollower


def timed(fn: object, runs: int = 30) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples), max(samples)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for i in range(4):
            (root / "outputs" / f"run{i}").mkdir(parents=True)
        noise = [subprocess.Popen(["sleep", "300"]) for _ in range(n)]
        job = subprocess.Popen(["sh", "-c", "sleep 300; :", "outputs/run0"], cwd=root)
        try:
            cfg = parse_config({"jobs": [{"name": f"run{i}", "output_dir": f"outputs/run{i}"}
                                         for i in range(4)]}, root / "c.yaml")
            m = ProcessMatcher(cfg.jobs)
            found = m.match()
            med, worst = timed(m.match)
            print(f"match(): {len(found['run0'])} job process among ~{n + 1} processes, "
                  f"4 jobs: median {med:.1f} ms, max {worst:.1f} ms")
        finally:
            for p in [*noise, job]:
                p.kill()
                p.wait()
        log = root / "train.log"
        line = "\rsteps:  45%|████▌     | 162/360 [00:10<00:12, 1.2it/s, avr_loss=0.1]"
        with open(log, "w", encoding="utf-8") as f:
            f.write(line * (64 * 1024 * 1024 // len(line.encode())))
        follower = LogFollower(log)
        t = time.perf_counter()
        follower.poll()
        first = (time.perf_counter() - t) * 1000
        med, worst = timed(follower.poll)
        print(f"poll() 64 MiB log: first {first:.1f} ms ({follower.bytes_read} bytes read), "
              f"unchanged median {med:.3f} ms")

        def grow() -> None:
            with open(log, "a", encoding="utf-8") as f:
                f.write(line)
            follower.poll()

        med, worst = timed(grow)
        print(f"poll() after one appended bar (incl. the append): median {med:.3f} ms")


if __name__ == "__main__":
    main()

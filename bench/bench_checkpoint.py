"""Print what the checkpoint doctor costs (figures, never assertions).

    .venv/bin/python bench/bench_checkpoint.py

1. inspect_checkpoint on a checkpoint whose model.safetensors is 1 MB and on one whose
   model.safetensors is 20 GB (a sparse file with a valid header: no disk used).  The two
   should be the same: only headers and tails are read.
2. Listing an output folder of 500 checkpoints cold (new CheckpointScanner) and warm
   (same scanner, nothing changed).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.checkpoints import make_accelerate_checkpoint, make_sparse_safetensors

from trainguard.checkpoint import CheckpointScanner, inspect_checkpoint


def median_ms(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    try:
        base = make_accelerate_checkpoint(root / "template", 100)
        for label, size in (("1 MB", 1 << 20), ("20 GB", 20 << 30)):
            c = root / f"model-{label.replace(' ', '')}"
            shutil.copytree(base, c)
            make_sparse_safetensors(c / "model.safetensors", size)
            info = inspect_checkpoint(c)
            assert info.status.value == "valid", info.problems
            ms = median_ms(lambda c=c: inspect_checkpoint(c), 200)
            print(f"inspect, model.safetensors {label:>6}: {ms:7.3f} ms (median of 200)")

        out = root / "out"
        out.mkdir()
        for n in range(1, 501):
            shutil.copytree(base, out / f"checkpoint-{n}")
        t = time.perf_counter()
        scanner = CheckpointScanner(out)
        infos = scanner.scan()
        cold = (time.perf_counter() - t) * 1000
        warm = median_ms(scanner.scan, 20)
        print(f"list 500 checkpoints, cold (new scanner): {cold:8.1f} ms "
              f"({scanner.inspections} inspected, {len(infos)} listed)")
        print(f"list 500 checkpoints, warm (nothing changed): {warm:8.1f} ms (median of 20, "
              f"{scanner.inspections - len(infos)} re-inspected)")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()

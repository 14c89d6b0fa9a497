"""Print what classifying a dead run's log and the status page cost (figures, never
assertions).

    .venv/bin/python bench/bench_failures.py

1. classify_log on a 10 MB and a 2 GB log (sparse: no disk used, a real traceback at the
   end): the same, since only the last 64 KiB are read.
2. classify() of one 64 KiB tail of tqdm redraws, the worst case for the table: every row
   is tried against every line.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from timing import median_ms

from remediator.failures import TAIL_BYTES, classify, classify_log
from trainguard.config import JobConfig

TRACEBACK = ("Traceback (most recent call last):\n  File \"train.py\", line 1, in <module>\n"
             "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n")
BAR = "\rsteps:  45%|████▌     | {n}/360 [00:10<00:12, 1.20it/s, avr_loss=0.11]"


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    for label, size in (("10 MB", 10 << 20), ("2 GB", 2 << 30)):
        log = root / f"train-{label.replace(' ', '')}.log"
        with open(log, "wb") as f:
            f.truncate(size - len(TRACEBACK))
            f.seek(size - len(TRACEBACK) - 2000)
            f.write("".join(BAR.format(n=n) for n in range(20)).encode()[:2000])
            f.write(TRACEBACK.encode())
        job = JobConfig(name="b", output_dir=root, log_file=log)
        got = classify_log(job)
        assert got is not None and got.cause == "cuda-out-of-memory", got
        ms = median_ms(lambda job=job: classify_log(job), 200)
        print(f"classify_log, {label:>6} log: {ms:7.3f} ms (median of 200; reads "
              f"{TAIL_BYTES >> 10} KiB)")
    tail = "".join(BAR.format(n=n % 360) for n in range(TAIL_BYTES // len(BAR)))
    tail = tail[-TAIL_BYTES:] + "\nsubprocess.CalledProcessError: Command 'x' returned 1.\n"
    ms = median_ms(lambda: classify(tail), 50)
    print(f"classify, 64 KiB of tqdm redraws, no row matches: {ms:7.3f} ms (median of 50)")


if __name__ == "__main__":
    sys.exit(main())

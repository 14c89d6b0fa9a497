"""Print what the checkpoint doctor costs (figures, never assertions).

    .venv/bin/python bench/bench_checkpoint.py [--folders 50 500 5000] [--first-scan 20000]

1. inspect_checkpoint on a checkpoint whose model.safetensors is 1 MB and on one whose
   model.safetensors is 20 GB (a sparse file with a valid header: no disk used).  The two
   should be the same: only headers and tails are read.
2. The exporter's cached scanner on output folders of 50 / 500 / 5,000 state folders: a
   cold scan (new CheckpointScanner, what ``list_checkpoints`` does), a steady scan
   (nothing changed: one stat per trusted folder plus the rotation's slice), and what
   taking in a new checkpoint costs (the scan that finds one more, just written folder,
   minus the steady scans right before it), medians of 15.
3. A first scan of 20,000 folders through a real ``trainguard exporter`` over HTTP: the
   slowest ``/metrics`` answer while the scan runs in the background, how long until
   ``trainguard_checkpoint_scan_in_progress`` went back to 0, and a scrape afterwards.

The state folders are hard links to one real accelerate ``save_state`` output with their
own ``train_state.json`` (bench/bench_peers.py's load), dated over the past days.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_peers import Load
from helpers.checkpoints import make_accelerate_checkpoint, make_sparse_safetensors
from helpers.common import free_port, wait_for
from timing import median_ms

from trainguard.checkpoint import CheckpointScanner, inspect_checkpoint


def inspect_sizes(root: Path) -> None:
    base = make_accelerate_checkpoint(root / "template", 100)
    for label, size in (("1 MB", 1 << 20), ("20 GB", 20 << 30)):
        c = root / f"model-{label.replace(' ', '')}"
        shutil.copytree(base, c)
        make_sparse_safetensors(c / "model.safetensors", size)
        info = inspect_checkpoint(c)
        assert info.status.value == "valid", info.problems
        ms = median_ms(lambda c=c: inspect_checkpoint(c), 200)
        print(f"inspect, model.safetensors {label:>6}: {ms:7.3f} ms (median of 200)")


def scanner_costs(load: Load, counts: list[int]) -> None:
    print(f"\n{'folders':>7} | {'cold scan':>10} | {'steady scan':>11} | "
          f"{'new save, extra':>15} | inspections")
    for count in counts:
        name = f"s{count}"
        load.fill(name, count)
        out = load.outputs / name
        t = time.perf_counter()
        scanner = CheckpointScanner(out)
        scanner.scan()
        cold = (time.perf_counter() - t) * 1000
        steady, extra = [], []
        for k in range(15):
            base = median_ms(scanner.scan, 3)
            steady.append(base)
            # Just written, as a real save is: it stays in the writing window (its
            # signature compared on every later scan, which the next base includes).
            load.add_state(out, name, count + 100 + k)
            t = time.perf_counter()
            scanner.scan()
            extra.append((time.perf_counter() - t) * 1000 - base)
        print(f"{count:>7} | {cold:>8.1f}ms | {statistics.median(steady):>9.2f}ms | "
              f"{statistics.median(extra):>13.2f}ms | {scanner.inspections} "
              f"({count} + 15 new)", flush=True)


def first_scan(load: Load, count: int) -> None:
    import yaml

    name = f"first{count}"
    t = time.perf_counter()
    load.fill(name, count)
    print(f"\nfirst scan of {count} folders through a real exporter "
          f"({time.perf_counter() - t:.0f} s to build them)")
    cfg = load.root / "first.yaml"
    cfg.write_text(yaml.safe_dump({"jobs": [{"name": name,
                                             "output_dir": str(load.outputs / name)}],
                                   "exporter": {"checkpoint_rescan_seconds": 0}}))
    port = free_port()
    exe = str(Path(sys.executable).with_name("trainguard"))
    proc = subprocess.Popen([exe, "exporter", "--config", str(cfg), "--listen",
                             f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        try:
            urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=1)
            return True
        except OSError:
            return False

    try:
        wait_for(up, timeout=30, what="exporter")
        started = time.perf_counter()
        times: list[float] = []
        busy = True
        while busy:
            t = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as r:
                body = r.read().decode()
            times.append((time.perf_counter() - t) * 1000)
            busy = f'trainguard_checkpoint_scan_in_progress{{training_job="{name}"}} 1.0' \
                in body
            if time.perf_counter() - started > 600:
                print("  gave up waiting after 600 s")
                break
            time.sleep(0.2)
        done = time.perf_counter() - started
        after = []
        for _ in range(5):
            t = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as r:
                r.read()
            after.append((time.perf_counter() - t) * 1000)
        valid = next(line for line in body.splitlines() if line.startswith(
            f'trainguard_checkpoints{{status="valid",training_job="{name}"}}'))
        print(f"  {len(times)} scrapes while scanning: slowest {max(times):.0f} ms, "
              f"median {statistics.median(times):.0f} ms; scan done after {done:.1f} s "
              f"({valid.split()[-1]} valid)")
        print(f"  steady scrape afterwards: median {statistics.median(after):.1f} ms")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folders", type=int, nargs="+", default=[50, 500, 5000])
    ap.add_argument("--first-scan", type=int, default=20000, help="0: leave it out")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        root = Path(tmp)
        inspect_sizes(root)
        load = Load(root / "load")
        try:
            scanner_costs(load, args.folders)
            if args.first_scan:
                first_scan(load, args.first_scan)
        finally:
            load.close()


if __name__ == "__main__":
    main()

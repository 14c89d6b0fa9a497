"""Benchmark: what one scrape of ``trainguard exporter`` costs on a busy training host.

Setup (all real except the GPU): 8 fake-NVML GPUs, 10 jobs with 200 accelerate state
folders each (copies of one real ``save_state`` from the tiny trainer, renamed and with
their ``train_state.json`` step rewritten), a tqdm log per job, 1,000 sleeping host
processes, and the exporter as a real process scraped over real HTTP.  Prints the median
and worst scrape time (with the default checkpoint rescan throttle, and with rescans on
every scrape), the per-collector durations the exporter reports, the exporter's resident
memory, and one ``nvidia-smi`` call for comparison ("n/a" without one).

Goals: median scrape < 15 ms, RSS < 60 MB.  Printed, never asserted.

    .venv/bin/python bench/bench_exporter.py [--scrapes 50]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.common import TINY_TRAIN, free_port, wait_for  # noqa: E402
from helpers.fakenvml import FakeGPUs, env_for  # noqa: E402

GPUS, JOBS, CKPTS, PROCS = 8, 10, 200, 1000


def template_state(work: Path) -> Path:
    """One real accelerate state folder in sd-scripts' shape, from the tiny trainer."""
    out = work / "template"
    subprocess.run([sys.executable, str(TINY_TRAIN), "--output_dir", str(out),
                    "--max_train_steps", "2", "--save_every_n_steps", "1", "--save_state",
                    "--step_seconds", "0", "--output_name", "t"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out / "t-step00000001-state"


def make_jobs(work: Path, template: Path) -> list[dict[str, object]]:
    jobs = []
    for j in range(JOBS):
        out = work / f"job{j}"
        out.mkdir()
        for n in range(1, CKPTS + 1):
            step = n * 10
            dst = out / f"job{j}-step{step:08d}-state"
            shutil.copytree(template, dst)
            (dst / "train_state.json").write_text(
                json.dumps({"current_epoch": 1, "current_step": step}))
        bar = "steps: {p:3d}%|#####     | {s}/2000 [00:02<00:06, 4.8it/s, avr_loss=0.1]\r"
        (out / "train.log").write_text("".join(bar.format(p=s // 20, s=s)
                                               for s in range(1, 2001)))
        jobs.append({"name": f"job{j}", "output_dir": str(out),
                     "log_file": str(out / "train.log")})
    return jobs


def scrape_times(url: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
        times.append((time.perf_counter() - t) * 1000)
    return times


def collector_durations(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "trainguard_collector_duration_seconds":
            for s in fam.samples:
                out[s.labels["collector"]] = s.value * 1000
    return out


def nvidia_smi_ms() -> str:
    if shutil.which("nvidia-smi") is None:
        return "n/a"
    t = time.perf_counter()
    subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,power.draw", "--format=csv"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return f"{(time.perf_counter() - t) * 1000:.1f} ms"


def run_exporter(work: Path, jobs: list[dict[str, object]], rescan: float,
                 gpus: FakeGPUs, scrapes: int) -> tuple[list[float], dict[str, float], float]:
    import yaml

    cfg = work / f"trainguard-{rescan}.yaml"
    cfg.write_text(yaml.safe_dump({"jobs": jobs,
                                   "exporter": {"checkpoint_rescan_seconds": rescan}}))
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("trainguard")), "exporter",
                             "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                            env=env_for(gpus.root), stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        def up() -> bool:
            try:
                urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=1)
                return True
            except OSError:
                return False

        wait_for(up, timeout=30, what="exporter")
        scrape_times(url, 3)  # warm-up: first scan of 2,000 checkpoints and 10 logs
        times = scrape_times(url, scrapes)
        durations = collector_durations(url)
        rss = psutil.Process(proc.pid).memory_info().rss / (1 << 20)
        return times, durations, rss
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        work = Path(tmp)
        gpus = FakeGPUs(work / "gpus")
        gpus.add(GPUS, utilization=97, power_mw=480000, pids="")
        t = time.perf_counter()
        jobs = make_jobs(work, template_state(work))
        print(f"setup: {GPUS} fake GPUs, {JOBS} jobs x {CKPTS} checkpoints, "
              f"{PROCS} sleeping processes ({time.perf_counter() - t:.1f}s to build)")
        sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(PROCS)]
        try:
            print(f"host processes now: {len(psutil.pids())}")
            for label, rescan in (("default rescan throttle (5 s)", 5.0),
                                  ("rescan on every scrape", 0.0)):
                times, durations, rss = run_exporter(work, jobs, rescan, gpus, args.scrapes)
                print(f"\n[{label}] {args.scrapes} scrapes over HTTP")
                print(f"  median scrape   {statistics.median(times):7.2f} ms   (goal < 15 ms)")
                print(f"  p90 / max       {sorted(times)[int(len(times) * 0.9)]:7.2f} / "
                      f"{max(times):.2f} ms")
                print("  collectors (last scrape): " + ", ".join(
                    f"{k} {v:.2f} ms" for k, v in sorted(durations.items())))
                print(f"  exporter RSS    {rss:7.1f} MB   (goal < 60 MB)")
        finally:
            for s in sleepers:
                s.kill()
            for s in sleepers:
                s.wait()
        print(f"\none nvidia-smi --query-gpu call: {nvidia_smi_ms()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Side by side: one scrape of trainguard's exporter against its peers, same host, same load.

The peers are Debian's ``prometheus-process-exporter`` (one group tracking the very
training processes trainguard watches, children included) and ``prometheus-node-exporter``
(default collectors).  This script installs nothing: a peer missing from PATH is left out
of the table (``apt-get install prometheus-process-exporter prometheus-node-exporter``).

Load, all real: N bystanders with long argument lists (a 3-line C ``pause()`` program from
tests/helpers/bystanders.py, so thousands cost no memory; a third of them name a job's
folder, as ``rsync``/``tail -f``/``tensorboard`` do), one training root per job (a
``python sleeper.py --output_dir ...`` process), a tqdm log per job, and accelerate state
folders in sd-scripts' naming (hard links to one real ``save_state`` output, each with its
own ``train_state.json``; their mtimes spread over the past days, as a long run's are).
The bystanders are aged past trainguard's "young process" window before timing: a real
host's processes are mostly old.

Every exporter is a real process scraped over real HTTP with Prometheus' own request
headers (OpenMetrics/text negotiation, gzip) and keep-alive; scrapes are interleaved
(trainguard, process-exporter, node_exporter, trainguard...) so a noisy neighbour hits all
of them alike.  trainguard runs with ``checkpoint_rescan_seconds: 0``: production scrapes
every 15 s, longer than the 5 s rescan throttle, so every production scrape rescans.

Tables (medians in ms, spread = p10..p90, ratios of medians):
1. processes: ~200 / ~1,100 / ~3,100 host processes x 1 and 10 jobs (``--folders``
   checkpoint folders in all, spread over the jobs);
2. checkpoints: 1 job with 50 / 500 / 5,000 folders, and what taking in a new checkpoint
   costs over HTTP (the scrape right after a new save appeared, minus the median).

Prints, never asserts.

    .venv/bin/python bench/bench_peers.py [--procs 200 1100 3100] [--jobs 1 10]
        [--folders 2000] [--checkpoints 50 500 5000] [--scrapes 40] [--only processes]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.bystanders import pause_binary  # noqa: E402
from helpers.common import SLEEPER, free_port, wait_for  # noqa: E402
from helpers.fakenvml import FakeGPUs  # noqa: E402

# What Prometheus 2.42 sends (scrape/scrape.go acceptHeader), and gzip.
ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
          "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
YOUNG_SECONDS = 30.0  # trainguard.process.YOUNG_SECONDS (not imported: the bench is a client)
PE = "prometheus-process-exporter"
NODE = "prometheus-node-exporter"


def host_processes() -> int:
    return sum(1 for n in os.listdir("/proc") if n.isdigit())


# ----------------------------------------------------------------------------- the load


class Load:
    """Bystanders, training roots, logs and checkpoint folders under one temp folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.outputs = root / "outputs"
        self.outputs.mkdir(parents=True)
        self.bystanders: list[subprocess.Popen[bytes]] = []
        self.roots: dict[str, subprocess.Popen[bytes]] = {}
        self.template: Path | None = None
        self.pause = str(pause_binary())
        self.youngest = 0.0
        self.gpus: FakeGPUs | None = None

    def grow_to(self, target: int) -> int:
        """Start bystanders until the host has about ``target`` processes."""
        while host_processes() < target:
            k = len(self.bystanders)
            inside = f"outputs/job{k % 10}/sample/{k}.png" if k % 3 == 0 else f"/data/{k}.jpg"
            argv = ["worker", "--config", f"/etc/tool/{k}.yaml", inside,
                    *(f"--option-{j}=some-longer-value-{j}" for j in range(20))]
            self.bystanders.append(subprocess.Popen(
                argv, executable=self.pause, cwd=self.root, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
            self.youngest = time.monotonic()
        return host_processes()

    def age(self) -> None:
        """Wait until every bystander is past trainguard's young-process window."""
        left = self.youngest + YOUNG_SECONDS + 1.0 - time.monotonic()
        if left > 0:
            time.sleep(left)

    def folder(self, name: str) -> Path:
        """The job's output folder with its log (made once)."""
        out = self.outputs / name
        if not out.exists():
            out.mkdir()
            bar = "steps: {p:3d}%|#####     | {s}/2000 [00:02<00:06, 4.8it/s, avr_loss=0.1]\r"
            (out / "train.log").write_text("".join(bar.format(p=s // 20, s=s)
                                                   for s in range(1, 2001)))
        return out

    def job(self, name: str) -> Path:
        """The job's output folder and its training root (started once)."""
        out = self.folder(name)
        if name not in self.roots:
            self.roots[name] = subprocess.Popen(
                [sys.executable, str(SLEEPER), "--seconds", "36000", "--output_dir", str(out),
                 "--output_name", name], cwd=self.root, start_new_session=True)
            self.youngest = time.monotonic()
        return out

    def template_state(self) -> Path:
        """One real accelerate ``save_state`` output in sd-scripts' shape."""
        if self.template is None:
            from helpers.checkpoints import make_accelerate_checkpoint

            # The scheduler's count is left at 0 so that, with every folder's own
            # train_state.json, the folders rank by their step (order.py).
            self.template = make_accelerate_checkpoint(self.root / "template", 10,
                                                       scheduler_step=0)
            old = time.time() - 3 * 86400
            for f in [*self.template.iterdir(), self.template]:
                os.utime(f, (old, old))
        return self.template

    def fill(self, name: str, count: int) -> None:
        """Give the folder exactly ``count`` state folders (added or removed at the end)."""
        out = self.folder(name)
        have = sorted(p for p in out.iterdir() if p.name.endswith("-state"))
        for p in have[count:]:
            shutil.rmtree(p)
        # Dated over two days ending a day ago, oldest first, as a long run leaves them.
        start, gap = time.time() - 3 * 86400, 2 * 86400 / max(count, 1)
        for n in range(len(have), count):
            self.add_state(out, name, n, mtime=start + n * gap)

    def add_state(self, out: Path, name: str, n: int, mtime: float | None = None) -> Path:
        """Folder number ``n`` (step 10n): hard links to the template, its own train_state."""
        template = self.template_state()
        step = (n + 1) * 10
        dst = out / f"{name}-step{step:08d}-state"
        dst.mkdir()
        for f in template.iterdir():
            if f.name != "train_state.json":
                os.link(f, dst / f.name)
        (dst / "train_state.json").write_text(json.dumps({"current_epoch": 1,
                                                          "current_step": step}))
        if mtime is not None:
            os.utime(dst / "train_state.json", (mtime, mtime))
            os.utime(dst, (mtime, mtime))
        return dst

    def close(self) -> None:
        for p in [*self.bystanders, *self.roots.values()]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in [*self.bystanders, *self.roots.values()]:
            p.wait()


# ----------------------------------------------------------------------------- exporters


@dataclass
class Exporter:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    conn: http.client.HTTPConnection | None = None
    times: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self._answers, timeout=60, what=f"{self.name} on port {self.port}")

    def _answers(self) -> bool:
        try:
            self.get()
            return True
        except OSError:
            self.conn = None
            return False

    def get(self) -> bytes:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.conn.request("GET", "/metrics", headers={"Accept": ACCEPT,
                                                      "Accept-Encoding": "gzip"})
        r = self.conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise OSError(f"{self.name}: HTTP {r.status}")
        return gzip.decompress(body) if r.getheader("Content-Encoding") == "gzip" else body

    def scrape(self) -> float:
        t = time.perf_counter()
        self.get()
        ms = (time.perf_counter() - t) * 1000
        self.times.append(ms)
        return ms

    def rss_mb(self) -> float:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).memory_info().rss / (1 << 20)

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def trainguard(load: Load, jobs: Sequence[str]) -> Exporter:
    import yaml

    cfg = load.root / "trainguard.yaml"
    cfg.write_text(yaml.safe_dump({
        "jobs": [{"name": j, "output_dir": str(load.outputs / j),
                  "log_file": str(load.outputs / j / "train.log")} for j in jobs],
        "exporter": {"checkpoint_rescan_seconds": 0}}))
    port = free_port()
    exe = str(Path(sys.executable).with_name("trainguard"))
    env = None
    if load.gpus is not None:  # each job's root holds GPU (its index mod the GPU count)
        from helpers.fakenvml import env_for

        n = len(list(load.gpus.root.glob("gpu[0-9]*")))
        held: dict[int, list[str]] = {}
        for k, job in enumerate(jobs):
            held.setdefault(k % n, []).append(f"{load.roots[job].pid}:{20 << 30}")
        for index in range(n):
            load.gpus.update(index, pids=",".join(held.get(index, [])))
        env = env_for(load.gpus.root)
    return Exporter("trainguard", [exe, "exporter", "--config", str(cfg),
                                   "--listen", f"127.0.0.1:{port}"], port, env)


def settled(tg: Exporter) -> None:
    """Wait until trainguard has finished its first checkpoint scans (in the background for
    big folders): timing it before would time a scrape that skips the scan."""
    def done() -> bool:
        text = tg.get().decode()
        return not any(line.startswith("trainguard_checkpoint_scan_in_progress")
                       and line.split()[-1] not in ("0", "0.0") for line in text.splitlines())

    wait_for(done, timeout=600, interval=0.5, what="trainguard's first checkpoint scan")


def process_exporter(load: Load, jobs: Sequence[str]) -> Exporter | None:
    exe = shutil.which(PE)
    if exe is None:
        return None
    alternatives = "|".join(jobs)
    cfg = load.root / "process-exporter.yaml"
    # One group: the jobs' training roots (and, with -children, their descendants).
    cfg.write_text(json.dumps({"process_names": [{
        "name": "training", "cmdline": [rf"--output_dir \S+/outputs/({alternatives})( |$)"]}]}))
    port = free_port()
    return Exporter("process-exporter", [exe, "-config.path", str(cfg),
                                         "-web.listen-address", f"127.0.0.1:{port}"], port)


def node_exporter() -> Exporter | None:
    exe = shutil.which(NODE)
    if exe is None:
        return None
    port = free_port()
    return Exporter("node_exporter", [exe, f"--web.listen-address=127.0.0.1:{port}"], port)


@contextlib.contextmanager
def running(exporters: Sequence[Exporter]) -> Iterator[None]:
    try:
        for e in exporters:
            e.start()
        yield
    finally:
        for e in exporters:
            e.stop()


def interleaved(exporters: Sequence[Exporter], scrapes: int, warmup: int = 3) -> None:
    """Scrape each exporter in turn, ``scrapes`` rounds, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for e in exporters:
            e.get()
    for e in exporters:
        e.times = []
    for _ in range(scrapes):
        for e in exporters:
            e.scrape()
            time.sleep(0.01)  # let the exporter's own after-work (GC, logging) settle


def med(e: Exporter | None) -> float | None:
    return statistics.median(e.times) if e is not None and e.times else None


def spread(e: Exporter | None) -> str:
    if e is None or not e.times:
        return "n/a"
    s = sorted(e.times)
    return f"{s[len(s) // 10]:.1f}..{s[(len(s) * 9) // 10]:.1f}"


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


# ----------------------------------------------------------------------------- tables


def processes_table(load: Load, procs: Sequence[int], job_counts: Sequence[int],
                    folders: int, scrapes: int) -> None:
    print(f"\n1. processes: median scrape in ms (p10..p90), {scrapes} interleaved rounds; "
          f"{folders} checkpoint folders spread over the jobs")
    print(f"{'host procs':>10} {'jobs':>4} | {'trainguard':>10} {'spread':>11} | "
          f"{'proc-exp':>8} {'spread':>11} | {'node':>6} {'spread':>11} | "
          f"{'tg/pe':>6} {'tg/node':>7} | {'RSS MB tg/pe/node':>17}")
    for target in procs:
        for n_jobs in job_counts:
            jobs = [f"job{i}" for i in range(n_jobs)]
            per_job = folders // n_jobs
            for j in jobs:
                load.job(j)
                load.fill(j, per_job)
            host = load.grow_to(target)
            load.age()
            tg = trainguard(load, jobs)
            pe = process_exporter(load, jobs)
            node = node_exporter()
            present = [e for e in (tg, pe, node) if e is not None]
            with running(present):
                settled(tg)
                interleaved(present, scrapes)
                rss = "/".join(f"{e.rss_mb():.0f}" if e is not None else "-"
                               for e in (tg, pe, node))
            print(f"{host:>10} {n_jobs:>4} | {fmt(med(tg)):>10} {spread(tg):>11} | "
                  f"{fmt(med(pe)):>8} {spread(pe):>11} | {fmt(med(node)):>6} "
                  f"{spread(node):>11} | {ratio(med(tg), med(pe)):>6} "
                  f"{ratio(med(tg), med(node)):>7} | {rss:>17}", flush=True)


def checkpoints_table(load: Load, counts: Sequence[int], scrapes: int) -> None:
    print(f"\n2. checkpoints: 1 job, {host_processes()} host processes; median scrape in ms "
          f"(p10..p90); 'new save' = the scrape right after a new state folder appeared, "
          f"minus the median (median of 5)")
    print(f"{'folders':>7} | {'trainguard':>10} {'spread':>11} | {'proc-exp':>8} | "
          f"{'node':>6} | {'tg/pe':>6} {'tg/node':>7} | {'new save':>8}")
    for count in counts:
        # Job 0 of the processes table may hold more folders: use a job of its own.
        name = f"ckpt{count}"
        load.job(name)
        load.fill(name, count)
        load.age()
        tg = trainguard(load, [name])
        pe = process_exporter(load, [name])
        node = node_exporter()
        present = [e for e in (tg, pe, node) if e is not None]
        with running(present):
            settled(tg)
            interleaved(present, scrapes)
            base = med(tg)
            extra = []
            out = load.outputs / name
            for k in range(5):
                load.add_state(out, name, count + 1000 + k)
                extra.append(tg.scrape() - (base or 0.0))
                for _ in range(3):
                    tg.get()  # let the fresh folder settle before the next one
        for k in range(5):
            shutil.rmtree(out / f"{name}-step{(count + 1001 + k) * 10:08d}-state")
        print(f"{count:>7} | {fmt(base):>10} {spread(tg):>11} | {fmt(med(pe)):>8} | "
              f"{fmt(med(node)):>6} | {ratio(base, med(pe)):>6} {ratio(base, med(node)):>7} | "
              f"{statistics.median(extra):>6.1f}ms", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[200, 1100, 3100])
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--folders", type=int, default=2000)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[50, 500, 5000])
    ap.add_argument("--scrapes", type=int, default=40)
    ap.add_argument("--only", choices=("processes", "checkpoints"))
    ap.add_argument("--gpus", type=int, default=0,
                    help="fake NVML GPUs for trainguard (tests/fakenvml), each job's root "
                         "on one, so the GPU attribution is timed too (the peers read none)")
    args = ap.parse_args()
    missing = [name for name in (PE, NODE) if shutil.which(name) is None]
    if missing:
        print(f"not installed, left out: {', '.join(missing)} "
              f"(Debian: apt-get install {' '.join(missing)})")
    with open("/proc/loadavg") as f:
        print(f"host: {os.cpu_count()} CPUs, load average {' '.join(f.read().split()[:3])}, "
              f"{host_processes()} processes before the load")
    with tempfile.TemporaryDirectory(prefix="tg-peers-") as tmp:
        load = Load(Path(tmp))
        if args.gpus:
            load.gpus = FakeGPUs(Path(tmp) / "gpus")
            load.gpus.add(args.gpus, utilization=97, power_mw=480000)
            print(f"trainguard reads {args.gpus} fake NVML GPUs (tests/fakenvml)")
        try:
            if args.only in (None, "processes"):
                processes_table(load, sorted(args.procs), args.jobs, args.folders,
                                args.scrapes)
            if args.only in (None, "checkpoints"):
                checkpoints_table(load, args.checkpoints, args.scrapes)
        finally:
            load.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Webhook latency over real HTTP: prints figures, asserts nothing.

Starts ``trainguard remediator`` as a subprocess (dry run, one job with no process and no
checkpoint, so no real remediation can happen) and times

1. 1,000 deliveries one after another of (a) one alert repeated (the duplicate path: one
   SQLite upsert) and (b) 1,000 distinct alerts (new incidents: insert + queue; the
   dry-run worker drains them);
2. bursts of 200 concurrent new deliveries (200 client threads released together, each
   on its own connection, each a new incident), interleaved with the same bursts against
   the floor: a bare Flask app under waitress with the remediator's waitress options
   doing the same token check and payload parsing and nothing else
   (bench/bare_webhook.py).  Prints p50/p99 of each round and of all rounds pooled,
   the p99 ratios (pooled, and the median and worst of the rounds' own), and how long
   the job's dry-run worker took to drain each burst.

    .venv/bin/python bench/bench_webhook.py [--n 1000] [--burst 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.common import free_port, wait_for  # noqa: E402
from helpers.remediator import (  # noqa: E402
    TOKEN,
    make_run,
    payload,
    process_server,
    rfc3339,
    write_config,
)


def timed(fn: Callable[[int], Any], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = fn(i)
        out.append(time.perf_counter() - t0)
        if r.status_code != 202:
            raise SystemExit(f"delivery {i}: HTTP {r.status_code}: {r.text}")
    return out


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def report(name: str, samples: list[float]) -> None:
    print(f"{name:<28} n={len(samples):5d}  median {statistics.median(samples) * 1e3:7.2f} ms"
          f"  p99 {pct(samples, 0.99) * 1e3:7.2f} ms  max {max(samples) * 1e3:7.2f} ms")


def burst(port: int, bodies: list[bytes]) -> list[float]:
    """POST every body at once, one thread and one new connection each; the latencies."""
    gate = threading.Barrier(len(bodies))
    out: list[float] = [0.0] * len(bodies)
    errors: list[str] = []

    def one(k: int) -> None:
        gate.wait()
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/alerts", body=bodies[k], headers={
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            out[k] = time.perf_counter() - t0
            if r.status != 202:
                errors.append(f"HTTP {r.status}")
        except OSError as exc:
            errors.append(str(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"burst: {len(errors)} failed, e.g. {errors[0]}")
    return out


@contextmanager
def bare_server(token_file: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "bare_webhook.py"),
                             "--token-file", str(token_file), "--port", str(port)],
                            cwd=REPO, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=30, what="the bare Flask app")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def drained(client: Any, job: str, timeout: float = 900.0) -> None:
    """Wait until none of the job's latest 1,000 incidents is still open."""
    def check() -> bool:
        r = client.http.get(client.url + "/api/incidents",
                            params={"job": job, "limit": "1000"}, timeout=30,
                            headers={"Authorization": f"Bearer {client.token}"})
        r.raise_for_status()
        return all(i["state"] not in ("queued", "waiting", "acting")
                   for i in r.json()["incidents"])

    wait_for(check, timeout=timeout, interval=0.1, what=f"{job}'s queue drained")


def bursts(args: argparse.Namespace, base: Path, run_name: str, client: Any) -> None:
    port = int(client.url.rsplit(":", 1)[1])
    t0 = time.time() + 10_000
    tg: list[float] = []
    floor: list[float] = []
    drains: list[float] = []
    ratios: list[float] = []
    with bare_server(base / "secrets" / "webhook-token") as bare:
        for r in range(args.rounds):
            bodies = []
            for k in range(args.burst):
                b = payload(run_name)
                b["alerts"][0]["startsAt"] = rfc3339(t0 + r * 1000 + k * 0.001)
                bodies.append(json.dumps(b).encode())
            f = burst(bare, bodies)
            start = time.perf_counter()
            t = burst(port, bodies)
            ratios.append(pct(t, 0.99) / pct(f, 0.99))
            print(f"  round {r + 1}: floor p50 {statistics.median(f) * 1e3:6.1f} ms "
                  f"p99 {pct(f, 0.99) * 1e3:6.1f} ms | trainguard p50 "
                  f"{statistics.median(t) * 1e3:6.1f} ms p99 {pct(t, 0.99) * 1e3:6.1f} ms"
                  f" | p99 ratio {ratios[-1]:.2f}x")
            floor += f
            tg += t
            drained(client, run_name)
            drains.append(time.perf_counter() - start)
    print(f"\n{args.rounds} bursts of {args.burst} concurrent new deliveries "
          f"(interleaved: floor, trainguard, ...)")
    report("bare Flask+waitress floor", floor)
    report("trainguard remediator", tg)
    print(f"p50 ratio {statistics.median(tg) / statistics.median(floor):.2f}x   "
          f"p99 ratio {pct(tg, 0.99) / pct(floor, 0.99):.2f}x (all rounds pooled)   "
          f"per-round p99 ratio median {statistics.median(ratios):.2f}x, worst "
          f"{max(ratios):.2f}x   (goal: p99 within 1.5x)")
    print(f"dry-run worker drained each burst in {min(drains):.1f}..{max(drains):.1f} s "
          f"({args.burst / statistics.median(drains):.0f} incidents/s, median)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with open("/proc/loadavg") as f:
        print(f"load average {' '.join(f.read().split()[:3])}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        run = make_run(base, "bench-lora")
        config = write_config(base, [run], dry_run=True)
        with process_server(config, base / "remediator.log") as client:
            body = payload(run.name)
            client.post_alert(body)  # warm-up, creates the incident
            dup = timed(lambda i: client.post_alert(body), args.n)
            t0 = time.time()

            def fresh(i: int) -> Any:
                b = payload(run.name)
                b["alerts"][0]["startsAt"] = rfc3339(t0 + i * 0.001)
                return client.post_alert(b)

            new = timed(fresh, args.n)
            print(f"trainguard remediator webhook, real HTTP on 127.0.0.1, "
                  f"{args.n} deliveries each")
            report("duplicate deliveries", dup)
            report("new incidents (dry run)", new)
            if args.burst:
                drained(client, run.name)
                bursts(args, base, run.name, client)
    return 0


if __name__ == "__main__":
    sys.exit(main())

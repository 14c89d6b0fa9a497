"""Webhook latency over real HTTP: prints figures, asserts nothing.

Starts ``trainguard remediator`` as a subprocess (dry run, one job with no process and no
checkpoint, so no real remediation can happen) and times 1,000 deliveries of
(a) one alert repeated (the duplicate path: one SQLite upsert) and
(b) 1,000 distinct alerts (new incidents: insert + queue; the dry-run worker drains them).

    .venv/bin/python bench/bench_webhook.py [--n 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.remediator import make_run, payload, process_server, rfc3339, write_config  # noqa: E402


def timed(fn: object, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = fn(i)  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
        if r.status_code != 202:
            raise SystemExit(f"delivery {i}: HTTP {r.status_code}: {r.text}")
    return out


def report(name: str, samples: list[float]) -> None:
    s = sorted(samples)
    p99 = s[min(len(s) - 1, round(0.99 * len(s)) - 1)]
    print(f"{name:<28} n={len(s):5d}  median {statistics.median(s) * 1e3:7.2f} ms  "
          f"p99 {p99 * 1e3:7.2f} ms  max {s[-1] * 1e3:7.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        run = make_run(base, "bench-lora")
        config = write_config(base, [run], dry_run=True)
        with process_server(config, base / "remediator.log") as client:
            body = payload(run.name)
            client.post_alert(body)  # warm-up, creates the incident
            dup = timed(lambda i: client.post_alert(body), args.n)
            t0 = time.time()

            def fresh(i: int) -> object:
                b = payload(run.name)
                b["alerts"][0]["startsAt"] = rfc3339(t0 + i * 0.001)
                return client.post_alert(b)

            new = timed(fresh, args.n)
        print(f"trainguard remediator webhook, real HTTP on 127.0.0.1, {args.n} deliveries each")
        report("duplicate deliveries", dup)
        report("new incidents (dry run)", new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Replay healthy and hung training runs through the alert rules; print detection latency
and every false alarm, today's fixed thresholds against the run's own rhythm (figures,
never assertions; tests/deploy/test_replay.py asserts the behaviour).

    .venv/bin/python bench/bench_replay.py [--only SUBSTRING] [--keep DIR]

Each scenario (bench/replay/scenarios.py) is a run of sd-scripts, a diffusers example or
the HF Trainer in simulated time: its log written by the real rich handler and tqdm bars,
read every 15 s by the real exporter progress collector, with the host's process, GPU and
checkpoint facts beside it; then ``promtool test rules`` evaluates both rule sets over
those series (bench/replay/baseline holds today's rules, deploy/prometheus/rules the
shipped ones).  Latency is from the moment the trainer stopped to the remediating alert
firing (Alertmanager's group_wait, the kill and the relaunch come on top: 25-55 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent)]

from replay.evaluate import Outcome, evaluate  # noqa: E402
from replay.scenarios import corpus  # noqa: E402

SETS = ["today", "rhythm"]


def cell(o: Outcome, healthy: bool) -> str:
    if healthy:
        return "ok" if not o.false_alarms else "FALSE ALARM"
    if o.detected is None:
        return "missed"
    return f"{o.latency:6.0f} s {o.detected.alert}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run scenarios whose name contains this")
    ap.add_argument("--keep", type=Path, help="keep the generated promtool tests here")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="trainguard-replay-"))
    rows = []
    started = time.monotonic()
    for i, sc in enumerate(s for s in corpus() if args.only in s.name):
        outcome = evaluate(sc, root / f"{i:02d}", SETS)
        rows.append((sc, outcome))
        print(f"  {sc.name}: done", file=sys.stderr)
    width = max(len(sc.name) for sc, _ in rows)
    head = f"{'scenario':{width}}  {'today (fixed thresholds)':34}  {'rhythm (shipped rules)':34}"
    print(head)
    print("-" * len(head))
    for sc, outcome in rows:
        print(f"{sc.name:{width}}  {cell(outcome['today'], sc.healthy):34}  "
              f"{cell(outcome['rhythm'], sc.healthy):34}")
    print()
    print("False alarms (a remediating alert on a healthy run, or before the hang):")
    any_false = False
    for sc, outcome in rows:
        for rules in SETS:
            for f in outcome[rules].false_alarms:
                any_false = True
                print(f"  {rules:7} {sc.name}: {f.alert} firing at {f.first:.0f} s "
                      f"({f.evaluations} evaluations)")
    if not any_false:
        print("  none")
    notices = [(sc, r, f) for sc, o in rows for r in SETS for f in o[r].notices]
    if notices:
        print("Notify-only alerts (no remediation):")
        for sc, rules, f in notices:
            print(f"  {rules:7} {sc.name}: {f.alert} first at {f.first:.0f} s")
    print(f"\n{len(rows)} scenarios in {time.monotonic() - started:.0f} s; "
          f"promtool tests under {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

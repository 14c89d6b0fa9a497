"""One scenario through one rule set: its false alarms and its detection latency."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from replay import promtool
from replay.scenarios import Scenario
from replay.series import scrape

REPO = Path(__file__).resolve().parents[2]
RULES = {
    "today": [REPO / "bench/replay/baseline/tunables.yml",
              REPO / "bench/replay/baseline/trainguard.rules.yml"],
    "rhythm": [REPO / "deploy/prometheus/rules/tunables.yml",
               REPO / "deploy/prometheus/rules/trainguard.rules.yml"],
}


@dataclass(frozen=True)
class Outcome:
    false_alarms: tuple[promtool.Fired, ...]   # remediating alerts a healthy moment raised
    detected: promtool.Fired | None            # the first remediating alert after the hang
    latency: float | None                      # its firing time minus the hang's start
    notices: tuple[promtool.Fired, ...]        # notify-only alerts, for the record


def evaluate(sc: Scenario, folder: Path, rule_sets: list[str]) -> dict[str, Outcome]:
    tl = sc.timeline()
    end = (tl.hang_at + sc.tail) if tl.hang_at is not None else tl.t + 300.0
    series, count = scrape(tl, folder, end, log=sc.log, step_pattern=sc.step_pattern)
    out = {}
    for name in rule_sets:
        test = folder / f"{name}.test.yml"
        promtool.write_test(test, RULES[name], series, count)
        fired = promtool.run(test)
        remediating = [f for f in fired if f.remediate]
        hang = tl.hang_at
        false = tuple(f for f in remediating if hang is None or f.first < hang)
        after = [f for f in remediating if hang is not None and f.first >= hang]
        first = min(after, key=lambda f: f.first) if after else None
        out[name] = Outcome(false, first,
                            None if first is None or hang is None else first.first - hang,
                            tuple(f for f in fired if not f.remediate))
    return out

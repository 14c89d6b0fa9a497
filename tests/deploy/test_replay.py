"""The shipped rules over the replay corpus (bench/replay): what issue 12 promises.

bench/bench_replay.py prints the figures; this asserts the behaviour: no healthy run of the
corpus ever raises a remediating alert, every hang is caught, a run stepping every ~2 s
that hangs mid-epoch is called within 135 s of its last step (so that Alertmanager's 10 s
group_wait and a 30 s kill grace still resume it within 3 minutes), and no hang is caught
later than with today's fixed thresholds, except where those only "caught" it by the
stall rule that calls every run without a log stalled.  Everything is simulated time
through real promtool: nothing here is a timing that could flake.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers.common import REPO

sys.path.insert(0, str(REPO / "bench"))

from replay.evaluate import evaluate
from replay.scenarios import corpus

pytestmark = pytest.mark.slow
SCENARIOS = {sc.name: sc for sc in corpus()}


@pytest.mark.parametrize("name", [n for n, sc in SCENARIOS.items() if sc.healthy])
def test_healthy_runs_raise_no_remediating_alert(name: str, tmp_path: Path) -> None:
    outcome = evaluate(SCENARIOS[name], tmp_path, ["rhythm"])["rhythm"]
    assert outcome.false_alarms == ()


@pytest.mark.parametrize("name", [n for n, sc in SCENARIOS.items() if not sc.healthy])
def test_hangs_are_caught_no_later_than_today(name: str, tmp_path: Path) -> None:
    sc = SCENARIOS[name]
    out = evaluate(sc, tmp_path, ["today", "rhythm"])
    new, old = out["rhythm"], out["today"]
    assert new.false_alarms == ()
    assert new.latency is not None, "the hang was never caught"
    if name == "sd-scripts: hang mid-epoch":
        assert new.latency <= 135
    if sc.log:
        assert old.latency is not None and new.latency <= old.latency

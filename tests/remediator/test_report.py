"""What the remediator's report says for each outcome (remediator.report.build): the words
a person reads at 3 a.m., built from the incident the pipeline recorded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from remediator.report import ALERTNAME, HOLD_SECONDS, build, outcome_of, signature
from remediator.store import Incident
from trainguard.config import Config, load_config

NOW = 1_700_000_000.0


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "trainguard.yaml"
    path.write_text(yaml.safe_dump({
        "jobs": [{"name": "lora", "output_dir": str(tmp_path / "out"),
                  "log_file": str(tmp_path / "out" / "train.log")}],
        "remediator": {"listen": "0.0.0.0:9843"},
        "notify": {"receivers": [{"kind": "discord", "secret_file": "secrets/d"}]}}))
    return load_config(path)


def incident(**kw: object) -> Incident:
    base = Incident(id=12, host="", job="lora", alertname="TrainingStalled", starts_at="x",
                    starts_ts=NOW - 600, fingerprint=None, state="done", outcome="resumed",
                    reason="resume from /o/lora-step00000020-state (step 20): pid 7 alive",
                    created=NOW - 60, updated=NOW, deliveries=1,
                    evidence={"launched": {"checkpoint": "/o/lora-step00000020-state",
                                           "step": 20}})
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_a_rescue_says_what_was_seen_what_was_done_and_from_where(config: Config) -> None:
    a = build(config, config.jobs[0], incident(), now=NOW)
    assert a is not None
    assert a["labels"] == {"alertname": ALERTNAME, "training_job": "lora", "incident": "12",
                           "outcome": "resumed", "severity": "info", "remediate": "false"}
    # A fleet's alert has a host label; its report repeats it (the inhibit rules pair on it).
    fleet = build(config, config.jobs[0], incident(host="gpu-b"), now=NOW)
    assert fleet is not None and fleet["labels"]["host"] == "gpu-b"
    ann = a["annotations"]
    assert ann["summary"] == "lora: rescued: resumed from its newest usable checkpoint"
    assert ann["seen"].startswith("no training progress")
    assert ann["action"].startswith("resume from /o/lora-step00000020-state")
    assert ann["checkpoint"] == "/o/lora-step00000020-state (step 20)"
    assert "up to 3 restarts within 6 h" in ann["next"]
    assert ann["status_page"] == "http://127.0.0.1:9843/"   # a wildcard listen -> loopback
    assert a["endsAt"] > a["startsAt"] and HOLD_SECONDS == 4 * 3600


def test_a_refusal_says_why_and_that_the_run_was_left_alone(config: Config) -> None:
    a = build(config, config.jobs[0], incident(
        state="refused", outcome="refused", evidence=None,
        reason="the disk of /o has 10.0 MiB free, less than one more save needs (240.0 MiB"
               ", the size of lora-step00000020-state)"), now=NOW)
    assert a is not None and a["labels"]["outcome"] == "refused"
    ann = a["annotations"]
    assert "left as it was" in ann["summary"] and "less than one more save" in ann["action"]
    assert "checkpoint" not in ann and "delivered again" in ann["next"]


def test_giving_up_names_the_log_and_the_reset(config: Config, tmp_path: Path) -> None:
    a = build(config, config.jobs[0], incident(state="gave_up", outcome=None,
                                               reason="restart budget spent"), now=NOW)
    assert a is not None
    nxt = a["annotations"]["next"]
    assert str(tmp_path / "out" / "train.log") in nxt
    assert f"trainguard remediator reset lora --config {config.path}" in nxt


def test_failed_for_good_names_the_error_and_the_fix(config: Config) -> None:
    a = build(config, config.jobs[0], incident(
        alertname="TrainingProcessDown", state="failed_permanently",
        outcome="failed_permanently", reason="not relaunched: ...", evidence=None,
        failure_class="resources", failure_cause="cuda-out-of-memory",
        failure_line="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
        now=NOW)
    assert a is not None
    ann = a["annotations"]
    assert ann["summary"] == ("lora: not relaunched: torch.OutOfMemoryError: CUDA out of "
                              "memory. Tried to allocate 2.00 GiB")
    assert "the GPU ran out of memory" in ann["seen"]
    assert "came back after trainguard's retry" in ann["action"]
    assert ann["next"].startswith("make the run need less GPU memory")


def test_open_or_quiet_incidents_are_not_reported_and_long_text_is_clipped(
        config: Config) -> None:
    for state in ("queued", "waiting", "acting", "skipped", "cancelled", "ignored"):
        assert outcome_of(incident(state=state)) is None
        assert build(config, config.jobs[0], incident(state=state)) is None
    a = build(config, config.jobs[0], incident(state="done", outcome="failed",
                                               reason="x" * 5000), now=NOW)
    assert a is not None and len(a["annotations"]["action"]) <= 1200
    assert signature(incident()) != signature(incident(reason="other"))

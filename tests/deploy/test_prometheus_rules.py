"""Prometheus config and rules: promtool check config/rules, the promtool unit tests, and
the contract of DESIGN.md §2 (every alert, which ones remediate, the tunables)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from deploy_testlib import FAST_TUNABLES, PROMETHEUS_DIR, RULES, TUNABLES, run_tool

REMEDIATING = {"TrainingGPUIdle", "TrainingStalled", "TrainingProcessDown"}
NOTIFY_ONLY = {"TrainingCheckpointInvalid", "TrainingCheckpointStale",
               "TrainingRemediationGaveUp", "TrainingRemediationRefused",
               "TrainguardExporterDown", "TrainingFailedPermanently", "TrainingDiskLow"}
PER_JOB = REMEDIATING | NOTIFY_ONLY - {"TrainguardExporterDown"}


def rules_of(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_promtool_check_config() -> None:
    out = run_tool(["promtool", "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert "2 rule files found" in out, out


def test_promtool_check_rules() -> None:
    run_tool(["promtool", "check", "rules", str(RULES), str(TUNABLES), str(FAST_TUNABLES)])


def test_promtool_rule_unit_tests() -> None:
    tests = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert len(tests) >= 5, tests
    out = run_tool(["promtool", "test", "rules", *map(str, tests)], cwd=PROMETHEUS_DIR)
    assert out.count("SUCCESS") == len(tests), out


def test_every_alert_of_the_contract_with_its_routing_label() -> None:
    alerts = [r for r in rules_of(RULES) if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert names == REMEDIATING | NOTIFY_ONLY
    for a in alerts:
        want = "true" if a["alert"] in REMEDIATING else "false"
        assert a["labels"]["remediate"] == want, a["alert"]
        assert a["labels"]["severity"] in {"warning", "critical"}, a["alert"]
        assert a["annotations"]["summary"] and a["annotations"]["description"], a["alert"]
        # Per-job alerts carry the exclusions (completed, writing, grace) through one record,
        # and a job is (host, training_job): two hosts' jobs of one name never merge.
        if a["alert"] in PER_JOB:
            assert "unless on (host, training_job) (trainguard:job_quiet == 1)" in a["expr"], \
                a["alert"]
    for expr in (r["expr"] for r in rules_of(RULES)):
        groupings = re.findall(r"\b(?:by|on) \(([^)]*)\)", expr)
        assert all(g.startswith("host, training_job") for g in groupings), (groupings, expr)


def test_durations_come_from_tunables_not_for() -> None:
    """Every per-job alert's `for:` is the short debounce; the durations a user tunes are
    read from tunables, so the override file is the only thing to change."""
    for a in rules_of(RULES):
        if a.get("alert") in PER_JOB:
            assert a["for"] == "15s", a["alert"]


def test_fast_tunables_override_every_default() -> None:
    def values(path: Path) -> dict[str, float]:
        out = {}
        for r in rules_of(path):
            m = re.fullmatch(r"vector\(([0-9.]+)\)", r["expr"].strip())
            assert m, (path, r)
            out[r["record"]] = float(m.group(1))
        return out

    default, fast = values(TUNABLES), values(FAST_TUNABLES)
    assert set(default) == set(fast)
    used = set(re.findall(r"trainguard:tunable:\w+", RULES.read_text()))
    assert used == set(default), "a tunable is defined but unused, or used but undefined"
    for name, value in default.items():
        if name.endswith("_seconds"):
            assert fast[name] < value, name

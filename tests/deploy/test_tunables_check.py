"""A tunables file checked against the set of `trainguard:tunable:*` records the rules
read (deploy/run_stack.py; run-stack.sh runs it before starting anything).

Why: Prometheus and promtool accept a tunables file with a misspelled or missing record,
and the alert that reads the real name then never fires (scalar() of nothing is NaN)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_testlib import DEPLOY, FAST_TUNABLES, RULES, TUNABLES, run_tool

from demo.stack import FAST_TUNABLES as DEMO_VALUES
from demo.stack import tunables_yaml

sys.path.insert(0, str(DEPLOY))
import run_stack  # deploy/ is no package; this is the file run-stack.sh runs


def check(path: Path) -> subprocess.CompletedProcess[str]:
    """What a user runs for a tunables file used elsewhere (compose, their own Prometheus)."""
    return subprocess.run([sys.executable, str(DEPLOY / "run_stack.py"), "check-tunables",
                           str(path)], capture_output=True, text=True, timeout=60, check=False)


def test_the_rules_read_every_shipped_tunable_and_nothing_else() -> None:
    read = run_stack.tunables_read_by_rules([RULES])
    shipped = {r["record"].rsplit(":", 1)[1]
               for r in yaml.safe_load(TUNABLES.read_text())["groups"][0]["rules"]}
    assert set(read) == shipped
    assert "TrainingGPUIdle" in read["gpu_idle_seconds"]
    assert run_stack.default_rule_files() == [RULES]


@pytest.mark.parametrize("path", [TUNABLES, FAST_TUNABLES], ids=["shipped", "fast"])
def test_shipped_tunables_files_pass(path: Path) -> None:
    assert run_stack.tunables_problems(path) == []
    proc = check(path)
    assert proc.returncode == 0 and "every record the rules read is there" in proc.stdout


def test_the_demos_generated_tunables_pass(tmp_path: Path) -> None:
    path = tmp_path / "tunables.yml"
    path.write_text(tunables_yaml(DEMO_VALUES))
    assert run_stack.tunables_problems(path) == []


def test_misspelled_missing_and_doubled_records_are_each_named(tmp_path: Path) -> None:
    text = TUNABLES.read_text()
    text = text.replace("trainguard:tunable:stall_seconds", "trainguard:tunable:stal_seconds")
    doc = yaml.safe_load(text)
    rules = doc["groups"][0]["rules"]
    rules[:] = [r for r in rules if not r["record"].endswith(":process_down_seconds")]
    rules.append({"record": "trainguard:tunable:gpu_spin_seconds", "expr": "vector(60)"})
    path = tmp_path / "mine.yml"
    path.write_text(yaml.safe_dump(doc))
    run_tool(["promtool", "check", "rules", str(path)])  # promtool sees nothing wrong

    proc = check(path)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    p = f"check-tunables: {path}"
    assert lines == [
        f"{p}: record trainguard:tunable:gpu_spin_seconds is defined 2 times",
        f"{p}: record trainguard:tunable:stal_seconds is read by no rule; did you mean "
        "trainguard:tunable:stall_seconds?",
        f"{p}: no record trainguard:tunable:process_down_seconds, which TrainingProcessDown "
        "read(s): without it they never fire",
        f"{p}: no record trainguard:tunable:stall_seconds, which "
        "trainguard:job_stall_allowance_seconds, TrainingStalled read(s): "
        "without it they never fire",
    ], lines


def test_a_file_that_is_not_a_rule_file_is_one_line(tmp_path: Path) -> None:
    for text, why in (("groups: [\n", "not valid YAML"), ("a: 1\n", "no `groups:` list")):
        path = tmp_path / "bad.yml"
        path.write_text(text)
        proc = check(path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert str(path) in line and why in line, line

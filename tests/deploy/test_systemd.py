"""deploy/systemd units: systemd-analyze accepts them (apart from the placeholder install
path), they bind loopback, and both run as the training user rather than root."""

from __future__ import annotations

import configparser
import shutil
import subprocess

import pytest
from deploy_testlib import DEPLOY

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def test_systemd_analyze_verify() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed")
    proc = subprocess.run(["systemd-analyze", "verify", *map(str, UNITS)],
                          capture_output=True, text=True, timeout=60, check=False)
    # The ExecStart path is a placeholder (/opt/trainguard/.venv) that the user adapts.
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_runs_as_a_user_on_loopback(unit: object) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(str(unit))
    service = parser["Service"]
    assert service["User"] not in ("", "root")
    assert "--listen 127.0.0.1:" in service["ExecStart"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""

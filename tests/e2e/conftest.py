"""Print the end-to-end rescue timings after the run, whatever pytest captured."""

from __future__ import annotations

import sys

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    module = sys.modules.get("tests.e2e.test_rescue") or next(
        (m for name, m in sys.modules.items() if name.endswith("test_rescue")), None)
    timings = getattr(module, "TIMINGS", None)
    if not timings:
        return
    tr = terminalreporter
    tr.section("trainguard rescue timings (end to end, real stack)")
    tr.write_line(f"{'scenario':<10} {'configured':>10} {'to resume':>10} {'overhead':>9} "
                  f"{'to 1st step':>11} {'overhead':>9}")
    for name, configured, resumed, stepped in timings:
        tr.write_line(f"{name:<10} {configured:>9.1f}s {resumed:>9.1f}s "
                      f"{resumed - configured:>8.1f}s {stepped:>10.1f}s "
                      f"{stepped - configured:>8.1f}s")
    tr.write_line("configured = the tunable + the rules' for: debounce + Alertmanager group_wait; "
                  "overhead = what the pipeline adds beyond it (detection slack, kill, "
                  "resume, accelerate start-up)")

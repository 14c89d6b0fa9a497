"""Print the end-to-end timings after the run, whatever pytest captured."""

from __future__ import annotations

import sys

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    _rescue_summary(terminalreporter)
    _restart_summary(terminalreporter)


def _rescue_summary(terminalreporter: pytest.TerminalReporter) -> None:
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


def _restart_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures of test_stack_restart.py (issue 16), when it ran."""
    module = next((m for name, m in sys.modules.items() if name.endswith("test_stack_restart")),
                  None)
    timings = getattr(module, "RESTART_TIMINGS", None)
    if not timings:
        return
    terminalreporter.section("trainguard: a stack restarted right after a rescue "
                             "(run-stack.sh, shipped intervals)")
    for what, seconds in timings:
        terminalreporter.write_line(f"{what:<42} {seconds:7.1f}s")

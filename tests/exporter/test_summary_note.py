"""The test summary explains its "1 deselected": the gpu test that needs a real driver."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers.common import REPO


def test_summary_explains_the_deselected_gpu_test() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRAINGUARD_REAL_NVML"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "tests/exporter/test_gpu_real.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert "1 deselected" in out, out
    note = next((line for line in out.splitlines() if line.startswith("note: 1 deselected")),
                None)
    assert note is not None, out
    assert "test_gpu_real.py" in note and "TRAINGUARD_REAL_NVML=1" in note, note

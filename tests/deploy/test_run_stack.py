"""deploy/run-stack.sh: shell syntax and its refusals (exit 2, a message, nothing started).
A full run binds the fixed ports 9090/9093/9842/9843, which parallel test sessions may
hold, so it is checked by hand (see deploy/README.md), not here."""

from __future__ import annotations

import subprocess
from pathlib import Path

from deploy_testlib import DEPLOY

SCRIPT = DEPLOY / "run-stack.sh"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=30, cwd=cwd, check=False)


def test_syntax() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_refuses_without_config_or_with_unknown_arguments(tmp_path: Path) -> None:
    for args, message in (((), "--config FILE is required"),
                          (("--config", str(tmp_path / "nope.yaml")), "no such config"),
                          (("--bogus",), "unknown argument")):
        proc = run(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr, proc.stderr
    assert not (tmp_path / ".trainguard-stack").exists()


def test_refuses_a_config_without_a_token_for_the_remediator(tmp_path: Path) -> None:
    cfg = tmp_path / "tg.yaml"
    cfg.write_text(f"jobs:\n  - name: a\n    output_dir: {tmp_path}\n")
    proc = run("--config", str(cfg), "--state", str(tmp_path / "state"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "token_file" in proc.stderr

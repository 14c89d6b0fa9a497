"""`trainguard remediator reset JOB` typed as the remediator's log prints it: without
--config, the config is found where a user keeps it (trainguard/default_config.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainguard.default_config import NoConfigError, find_config

TRAINGUARD = str(Path(sys.executable).with_name("trainguard"))


@pytest.fixture
def fluxgym_root(tmp_path: Path) -> Path:
    """A FluxGym root with the config `trainguard init` would write beside it."""
    root = tmp_path / "fluxgym"
    (root / "outputs" / "my-lora").mkdir(parents=True)
    token = root / "secrets" / "trainguard-webhook-token"
    token.parent.mkdir()
    token.write_text("t" * 32 + "\n")
    token.chmod(0o600)
    (root / "trainguard.yaml").write_text(yaml.safe_dump({
        "jobs": [{"name": "my-lora", "output_dir": "outputs/my-lora"}],
        "remediator": {"token_file": "secrets/trainguard-webhook-token"}}))
    return root


def reset(*args: str, cwd: Path, env_config: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRAINGUARD_CONFIG"}
    if env_config is not None:
        env["TRAINGUARD_CONFIG"] = env_config
    return subprocess.run([TRAINGUARD, "remediator", "reset", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_reset_as_the_log_suggests_it_in_the_configs_folder(fluxgym_root: Path) -> None:
    proc = reset("my-lora", cwd=fluxgym_root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("my-lora: re-armed")
    # it wrote the state file the config names (default: beside the config)
    assert (fluxgym_root / "trainguard-state.sqlite3").is_file()


def test_reset_finds_the_config_through_TRAINGUARD_CONFIG(fluxgym_root: Path,
                                                          tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = reset("my-lora", cwd=elsewhere, env_config=str(fluxgym_root / "trainguard.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert (fluxgym_root / "trainguard-state.sqlite3").is_file()


def test_reset_without_any_config_says_where_it_looked(tmp_path: Path) -> None:
    proc = reset("my-lora", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for hint in ("--config FILE", "TRAINGUARD_CONFIG", "trainguard.yaml", str(tmp_path)):
        assert hint in lines[0], lines[0]


def test_an_explicit_config_wins_and_a_wrong_job_is_named(fluxgym_root: Path,
                                                          tmp_path: Path) -> None:
    proc = reset("other", "--config", str(fluxgym_root / "trainguard.yaml"), cwd=tmp_path,
                 env_config=str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2
    assert "no job named 'other'" in proc.stderr and "my-lora" in proc.stderr


def test_find_config_order(tmp_path: Path) -> None:
    (tmp_path / "trainguard.yaml").write_text("jobs: []\n")
    env = {"TRAINGUARD_CONFIG": "/etc/tg.yaml"}
    assert find_config("given.yaml", cwd=tmp_path, environ=env) == Path("given.yaml")
    assert find_config(None, cwd=tmp_path, environ=env) == Path("/etc/tg.yaml")
    assert find_config(None, cwd=tmp_path, environ={}) == tmp_path / "trainguard.yaml"
    with pytest.raises(NoConfigError):
        find_config(None, cwd=tmp_path / "nothing-here", environ={})

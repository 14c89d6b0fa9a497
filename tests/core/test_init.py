"""`trainguard init` on a FluxGym-like tree built from the real generator-shaped scripts."""

from __future__ import annotations

import argparse
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from helpers.common import PYTHON

from trainguard.cli import CommandRegistry
from trainguard.config import load_config
from trainguard.init import register
from trainguard.progress import output_name

FLUXGYM = Path("/work/shared/fixtures/fluxgym")


def fluxgym(tmp_path: Path, script: str = "train.sh", sd_scripts: bool = True) -> Path:
    root = tmp_path / "fluxgym"
    run = root / "outputs" / "my-lora"
    run.mkdir(parents=True)
    shutil.copy(FLUXGYM / script, run / script)
    if sd_scripts:
        (root / "sd-scripts").mkdir()
    return run


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The front door's shape: a parser with the registry, init registered into it."""
    parser = argparse.ArgumentParser(prog="trainguard")
    commands = parser.add_subparsers(dest="command")
    ckpt = commands.add_parser("checkpoint").add_subparsers()
    register(CommandRegistry(commands=commands, checkpoint=ckpt))
    args = parser.parse_args(argv)
    code = args.handler(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_writes_a_config_that_loads_from_anywhere(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = fluxgym(tmp_path)
    root = run.parent.parent
    code, out, err = cli(["init", str(run)], capsys)
    assert code == 0, err
    cfg_path = root / "trainguard.yaml"
    cfg = load_config(cfg_path)
    (job,) = cfg.jobs
    assert job.name == "my-lora"
    assert job.output_dir == run.resolve()
    assert job.launch is not None and job.launch.script == (run / "train.sh").resolve()
    assert job.launch.workdir == root.resolve()
    assert job.log_file == (run / "train.log").resolve()
    assert output_name(job) == "my-lora"
    token = cfg.remediator.token_file
    assert token is not None and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text().strip()) >= 32
    # How to start the run with its output where trainguard reads it.
    assert "bash outputs/my-lora/train.sh 2>&1 | tee -a outputs/my-lora/train.log" in out
    # The fixture's absolute --output_dir points at /workspace/fluxgym: say so.
    assert "/workspace/fluxgym/outputs/my-lora" in out
    # Loaded from another cwd in another process, the paths are the same (seed 003).
    shown = subprocess.run([PYTHON, "-c", "import sys; from trainguard.config import load_config;"
                            " print(load_config(sys.argv[1]).jobs[0].output_dir)",
                            str(cfg_path)], cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert shown == str(run.resolve())


def test_refuses_to_overwrite_and_keeps_the_token(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = fluxgym(tmp_path)
    assert cli(["init", str(run)], capsys)[0] == 0
    cfg_path = run.parent.parent / "trainguard.yaml"
    before = cfg_path.read_text()
    token = load_config(cfg_path).remediator.token_file
    assert token is not None
    secret = token.read_text()
    code, _, err = cli(["init", str(run)], capsys)
    assert code == 2 and "already exists" in err and str(cfg_path) in err
    assert cfg_path.read_text() == before
    other = tmp_path / "cfg" / "second.yaml"
    code, out, _ = cli(["init", str(run), "--out", str(other)], capsys)
    assert code == 0 and load_config(other).jobs[0].output_dir == run.resolve()
    assert "created webhook token" in out  # its own secrets/ beside it
    assert token.read_text() == secret


def test_windows_script_and_missing_sd_scripts(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = fluxgym(tmp_path, script="train.bat", sd_scripts=False)
    code, out, _ = cli(["init", str(run)], capsys)
    assert code == 0
    assert "no sd-scripts/" in out
    job = load_config(run.parent.parent / "trainguard.yaml").jobs[0]
    assert job.launch is not None and job.launch.script == (run / "train.bat").resolve()
    assert output_name(job) == "my-lora"


@pytest.mark.parametrize("case", ["missing", "no-script", "inside"])
def test_bad_input_is_exit_2_with_a_clear_message(tmp_path: Path, case: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = fluxgym(tmp_path)
    argv = ["init", str(run)]
    expected = ""
    if case == "missing":
        argv = ["init", str(tmp_path / "nope")]
        expected = "not a folder"
    elif case == "no-script":
        (run / "train.sh").unlink()
        expected = "no train.sh or train.bat"
    else:
        argv += ["--out", str(run / "trainguard.yaml")]
        expected = "outside the run folder"
    code, out, err = cli(argv, capsys)
    assert code == 2 and expected in err and err.count("\n") == 1 and out == ""
    assert not list(tmp_path.rglob("*.yaml"))


def test_notify_receivers_are_written_with_their_secrets_left_in_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`trainguard init --notify KIND=SECRET_FILE`: one command, the secret never copied."""
    run = fluxgym(tmp_path)
    root = run.parent.parent
    secrets = root / "secrets"
    secrets.mkdir()
    files = {"discord": "https://discord.com/api/webhooks/1/abc-SECRET",
             "telegram": "123456:SECRET-token", "email": "SECRET password"}
    for name, text in files.items():
        (secrets / name).write_text(text + "\n")
        (secrets / name).chmod(0o600)
    code, out, err = cli(["init", str(run),
                          "--notify", f"discord={secrets / 'discord'}",
                          "--notify", f"telegram={secrets / 'telegram'},chat_id=-100123",
                          "--notify", f"email={secrets / 'email'},to=me@example.org,"
                                      "from=tg@example.org,smarthost=smtp.example.org:587"],
                         capsys)
    assert code == 0, err
    assert "people hear through: discord, telegram, email" in out
    text = (root / "trainguard.yaml").read_text()
    assert "SECRET" not in text
    cfg = load_config(root / "trainguard.yaml")
    assert cfg.notify is not None
    d, t, e = cfg.notify.receivers
    assert (d.kind, d.secret_file) == ("discord", (secrets / "discord").resolve())
    assert (t.kind, t.chat_id) == ("telegram", -100123)
    assert (e.kind, e.to, e.sender, e.smarthost) == ("email", "me@example.org",
                                                     "tg@example.org", "smtp.example.org:587")
    # The written config makes a valid Alertmanager config.
    from trainguard.alertmanager import render

    assert "discord_configs" in render(cfg)


@pytest.mark.parametrize("arg, message", [
    ("pager=/x", "expected KIND=SECRET_FILE"),
    ("discord", "expected KIND=SECRET_FILE"),
    ("telegram={f}", "telegram needs chat_id=..."),
    ("telegram={f},chat_id=abc", "chat_id must be a number"),
    ("discord={f},webhook_url=https://x", "the secret goes in the file, never here"),
    ("discord={f}", "readable by other users"),
    ("discord=/nonexistent/secret", "cannot read"),
])
def test_bad_notify_arguments_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            arg: str, message: str) -> None:
    run = fluxgym(tmp_path)
    f = tmp_path / "open-secret"
    f.write_text("https://discord.com/api/webhooks/1/abc\n")
    f.chmod(0o644)
    code, _out, err = cli(["init", str(run), "--notify", arg.format(f=f)], capsys)
    assert code == 2 and message in err, err
    assert not (run.parent.parent / "trainguard.yaml").exists()

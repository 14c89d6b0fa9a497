"""`trainguard init` on a FluxGym-like tree built from the real generator-shaped scripts."""

from __future__ import annotations

import argparse
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.common import PYTHON, REPO

from trainguard import init as init_mod
from trainguard.cli import CommandRegistry
from trainguard.config import load_config
from trainguard.init import register
from trainguard.progress import output_name

FLUXGYM = REPO / "tests" / "fixtures" / "fluxgym"  # a copy of shared/fixtures/fluxgym
DEPLOY = REPO / "deploy"


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


def test_next_step_is_the_whole_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The exporter alone never rescues anything: init points at run-stack.sh."""
    run = fluxgym(tmp_path)
    code, out, _ = cli(["init", str(run)], capsys)
    assert code == 0
    cfg = run.parent.parent / "trainguard.yaml"
    script = REPO / "deploy" / "run-stack.sh"
    assert f"  {script} --config {cfg}" in out.splitlines()
    assert "trainguard exporter" not in out


def test_warns_when_the_script_saves_no_state(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for script in ("train.sh", "train.bat"):
        case = tmp_path / script
        run = fluxgym(case, script=script)
        data = (run / script).read_bytes()
        assert data.rstrip().endswith(b"--save_state")
        # FluxGym without the Advanced-tab flag: the script ends in a dangling continuation
        # after --loss_type l2 (shared/fixtures/fluxgym/README.md); .bat keeps its CRLF.
        eol = b"\r\n" if script.endswith(".bat") else b"\n"
        (run / script).write_bytes(data.rstrip()[: -len(b"--save_state")].rstrip() + eol)
        code, out, _ = cli(["init", str(run)], capsys)
        assert code == 0
        warning = [line for line in out.splitlines() if "--save_state" in line]
        assert len(warning) == 1 and warning[0].startswith("warning: ")
        assert "from step 0" in warning[0] and "Advanced" in warning[0]
    with_state = fluxgym(tmp_path / "ok")
    code, out, _ = cli(["init", str(with_state)], capsys)
    assert code == 0 and "--save_state" not in out


def test_a_commented_save_state_does_not_count(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = fluxgym(tmp_path)
    text = (run / "train.sh").read_text().replace("  --save_state", "  --seed 1")
    (run / "train.sh").write_text("# add --save_state to resume\n" + text)
    code, out, _ = cli(["init", str(run)], capsys)
    assert code == 0 and "does not pass --save_state" in out


def _seconds(text: str) -> float:
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


def test_detection_times_match_the_shipped_files(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """init carries the shipped figures (deploy/ is not installed with the package): they
    must be deploy's own, and the README must say the same sentence."""
    tunables = yaml.safe_load((DEPLOY / "prometheus/rules/tunables.yml").read_text())
    shipped = {r["record"].rsplit(":", 1)[1]: float(r["expr"].strip()[len("vector("):-1])
               for r in tunables["groups"][0]["rules"]}
    assert {k: shipped[k] for k in init_mod.SHIPPED_TUNABLES} == init_mod.SHIPPED_TUNABLES
    rules = yaml.safe_load((DEPLOY / "prometheus/rules/trainguard.rules.yml").read_text())
    fors = {_seconds(r["for"]) for g in rules["groups"] for r in g["rules"]
            if r.get("labels", {}).get("remediate") == "true"}
    assert fors == {init_mod.RULE_FOR_SECONDS}
    am = yaml.safe_load((DEPLOY / "alertmanager/alertmanager.yml").read_text())
    (route,) = [r for r in am["route"]["routes"] if r["receiver"] == "trainguard-remediator"]
    assert _seconds(route["group_wait"]) == init_mod.GROUP_WAIT_SECONDS

    summary = init_mod.detection_summary()
    for figure in ("about 10 min after its GPU goes idle", "about 2 min after its last step",
                   "never later than about 20 min", "about 5 min after it starts spinning",
                   "about 1.5 min after its process"):
        assert figure in summary, summary
    run = fluxgym(tmp_path)
    code, out, _ = cli(["init", str(run)], capsys)
    assert code == 0 and summary in out.splitlines()
    assert "--tunables FILE" in out
    readme = " ".join((REPO / "README.md").read_text().split())
    assert summary.lower() in readme.lower(), "README.md must state the shipped detection times"


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

"""`trainguard checkpoint list|inspect|latest|repair` through the real front door."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.checkpoints import make_accelerate_checkpoint, set_mtime

from trainguard.cli import main

OLD = time.time() - 3600


@pytest.fixture
def out(tmp_path: Path) -> Path:
    o = tmp_path / "out"
    make_accelerate_checkpoint(o / "lora-step00000010-state", 10, mtime=OLD)
    # Whole, but its RNG file names numpy.core (a numpy 1.x writer): this environment's
    # accelerate (>= 1.1, numpy >= 2.1) cannot load it until repaired.
    make_accelerate_checkpoint(o / "lora-step00000020-state", 20, numpy_module="numpy.core",
                               mtime=OLD)
    half = make_accelerate_checkpoint(o / "lora-step00000030-state", 30)
    (half / "random_states_0.pkl").unlink()
    set_mtime(half, OLD)
    return o


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["checkpoint", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_list_json(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "list", str(out), "--json")
    rows = json.loads(stdout)
    assert code == 0
    assert [(r["step"], r["status"]) for r in rows] == [
        (30, "invalid"), (20, "valid"), (10, "valid")]
    assert all(Path(r["path"]).is_absolute() and isinstance(r["problems"], list) for r in rows)


def test_list_table(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "list", str(out))
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].split()[:2] == ["STEP", "STATUS"]
    assert "random_states_0.pkl is missing" in stdout


def test_latest(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "latest", str(out), "--json")
    assert code == 0 and json.loads(stdout)["step"] == 20


def test_latest_none_usable_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "latest", str(tmp_path / "empty"))
    assert code == 1 and "no usable checkpoint" in err


@pytest.mark.parametrize("action", ["list", "inspect", "latest", "repair"])
def test_missing_folder_is_a_usage_error(tmp_path: Path, action: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run(capsys, action, str(tmp_path / "nope"))
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "nope" in err and "Traceback" not in err


def test_inspect_exit_codes(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "inspect", str(out / "lora-step00000010-state"), "--json")
    obj = json.loads(stdout)
    assert code == 0 and obj["status"] == "valid" and obj["verdict"]["loads"] is True
    code, stdout, _ = run(capsys, "inspect", str(out / "lora-step00000020-state"), "--json")
    obj = json.loads(stdout)
    # Whole files (exit 0); this environment needs them repaired before it can load them.
    assert code == 0 and obj["status"] == "valid"
    assert obj["verdict"]["loads"] is False and obj["verdict"]["repairs"] == ["rewrite-rng-numpy"]
    code, stdout, _ = run(capsys, "inspect", str(out / "lora-step00000030-state"), "--json")
    assert code == 1 and json.loads(stdout)["status"] == "invalid"


def test_inspect_of_a_save_in_progress_exits_1(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    half = make_accelerate_checkpoint(tmp_path / "lora-step00000040-state", 40)
    (half / "random_states_0.pkl").unlink()  # fresh: still being written
    code, stdout, _ = run(capsys, "inspect", str(half), "--json")
    assert code == 1 and json.loads(stdout)["status"] == "writing"


def test_inspect_of_a_folder_that_is_no_checkpoint_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "my-notes"
    plain.mkdir()
    (plain / "readme.txt").write_text("not a checkpoint\n")
    (plain / "sub").mkdir()
    for folder in (plain, tmp_path / "my-notes" / "sub"):
        code, stdout, err = run(capsys, "inspect", str(folder))
        assert code == 2 and stdout == "", (code, stdout)
        assert len(err.strip().splitlines()) == 1, err
        assert "is not a checkpoint" in err and str(folder) in err
        assert "save" not in err.split("is not a checkpoint", 1)[0]
        assert "dead" not in err and "writing" not in err and "missing" not in err


def test_inspect_of_an_output_folder_points_to_list(
        out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run(capsys, "inspect", str(out), "--json")
    assert code == 2 and stdout == ""
    assert "output folder holding 3 checkpoint folder(s)" in err
    assert f"trainguard checkpoint list {out}" in err


def test_inspect_still_judges_a_dead_save_by_its_name_or_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only folders with neither a checkpoint name nor a save's files are refused: an
    empty state folder or renamed half-save is still a (dead) checkpoint."""
    empty = tmp_path / "lora-step00000010-state"
    empty.mkdir()
    renamed = make_accelerate_checkpoint(tmp_path / "backup-copy", 10, mtime=OLD)
    (renamed / "random_states_0.pkl").unlink()
    set_mtime(renamed, OLD)
    for folder in (empty, renamed):
        code, stdout, _ = run(capsys, "inspect", str(folder), "--json")
        assert code == 1 and json.loads(stdout)["status"] == "invalid", folder


def test_repair_help_says_it_needs_the_torch_extra(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["checkpoint", "repair", "--help"])
    assert exit_info.value.code == 0
    assert "pip install 'trainguard[torch]'" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["checkpoint", "--help"])
    listing = " ".join(capsys.readouterr().out.split())
    assert "repair make a checkpoint's RNG files loadable where it resumes (with a backup; " \
           "needs the torch extra)" in listing


def test_repair_dry_run_then_repair(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = out / "lora-step00000020-state"
    before = (c / "random_states_0.pkl").read_bytes()
    code, stdout, _ = run(capsys, "repair", str(c), "--dry-run")
    assert code == 0 and "would rewrite-rng-numpy" in stdout and "-> numpy._core" in stdout
    assert (c / "random_states_0.pkl").read_bytes() == before
    code, stdout, _ = run(capsys, "repair", str(c))
    assert code == 0 and "backup:" in stdout
    code, stdout, _ = run(capsys, "repair", str(c))
    assert code == 0 and "nothing to repair" in stdout
    code, _, err = run(capsys, "repair", str(out / "lora-step00000030-state"))
    assert code == 1 and "invalid" in err


def test_repair_leaves_a_loadable_sd_scripts_state_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An sd-scripts epoch-end state (RNG step 0, train_state 20) loads as it is here."""
    c = make_accelerate_checkpoint(tmp_path / "lora-000002-state", 20, rng_step=0, epoch=2,
                                   mtime=OLD)
    before = {p.name: p.read_bytes() for p in c.iterdir()}
    code, stdout, _ = run(capsys, "repair", str(c))
    assert code == 0 and "nothing to repair" in stdout
    assert {p.name: p.read_bytes() for p in c.iterdir()} == before


def test_repair_names_the_environment_fix_where_no_file_change_helps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The seed's stack (accelerate 0.33, torch 2.6): KeyError: 'step' comes from
    weights_only refusing numpy globals; the fix is an environment variable."""
    c = make_accelerate_checkpoint(tmp_path / "kristy-000030-state", 360, rng_step=0,
                                   epoch=30, mtime=OLD)
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '{\"torch\": \"2.6.0\", \"accelerate\": \"0.33.0\", "
                    "\"numpy\": \"2.4.0\"}'\n")
    fake.chmod(0o755)
    code, stdout, _ = run(capsys, "repair", str(c), "--python", str(fake))
    assert code == 0 and "nothing to repair" in stdout
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1" in stdout


def test_console_script_runs_without_torch_loaded(out: Path) -> None:
    # The doctor must work where torch is broken: it never imports it.
    code = ("import sys; from trainguard.cli import main; "
            "rc = main(['checkpoint', 'list', sys.argv[1], '--json']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 3

"""trainguard.config: strict keys, paths anchored at the config file (seed 003), clear errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers.common import PYTHON

from trainguard.config import ConfigError, load_config

GOOD = """\
jobs:
  - name: my-lora
    output_dir: outputs/my-lora
    launch:
      script: outputs/my-lora/train.sh
      workdir: .
    log_file: outputs/my-lora/train.log
remediator:
  token_file: secrets/webhook-token
"""


def write(tmp_path: Path, text: str, name: str = "trainguard.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def test_relative_paths_resolve_against_the_config_folder_not_cwd(tmp_path: Path) -> None:
    cfg_dir = tmp_path / "fluxgym"
    (cfg_dir / "outputs" / "my-lora").mkdir(parents=True)
    (cfg_dir / "outputs" / "my-lora" / "train.sh").write_text("accelerate launch t.py\n")
    path = write(cfg_dir, GOOD)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Load from another cwd in a separate process, as a service manager would start it.
    code = ("import sys; from trainguard.config import load_config; c = load_config(sys.argv[1]);"
            "j = c.jobs[0]; print(j.output_dir, j.launch.script, j.launch.workdir, j.log_file,"
            " c.remediator.token_file)")
    out = subprocess.run([PYTHON, "-c", code, os.path.relpath(path, elsewhere)], cwd=elsewhere,
                         capture_output=True, text=True, check=True).stdout.split()
    root = cfg_dir.resolve()
    assert out == [str(root / "outputs/my-lora"), str(root / "outputs/my-lora/train.sh"),
                   str(root), str(root / "outputs/my-lora/train.log"),
                   str(root / "secrets/webhook-token")]


@pytest.mark.parametrize(("text", "keypath"), [
    ("jobs: [{name: a, output_dir: o, ouput_dir: o}]\n", "jobs[0].ouput_dir"),
    ("jobs: [{name: a, output_dir: o, launch: {script: s, sript: s}}]\n", "jobs[0].launch.sript"),
    ("jobs: [{name: a, output_dir: o}]\nexporter: {lissen: x}\n", "exporter.lissen"),
    ("jobs: [{name: a, output_dir: o}]\nremediator: {restart_budget: {max: 1}}\n",
     "remediator.restart_budget.max"),
    ("jobs: [{name: a, output_dir: o}]\nextra: 1\n", "extra"),
])
def test_unknown_keys_at_every_level_name_file_and_key_path(
        tmp_path: Path, text: str, keypath: str) -> None:
    path = write(tmp_path, text)
    err = error(path)
    assert err.keypath == keypath
    assert str(path) in str(err) and keypath in str(err) and "unknown key" in str(err)


@pytest.mark.parametrize(("text", "keypath", "expected"), [
    ("jobs: [{name: a, output_dir: 3}]\n", "jobs[0].output_dir", "a string"),
    ("jobs: [{name: a, output_dir: o, startup_grace_seconds: yes}]\n",
     "jobs[0].startup_grace_seconds", "a number"),
    ("jobs: [{name: a, output_dir: o}]\nremediator: {dry_run: 1}\n",
     "remediator.dry_run", "true or false"),
    ("jobs: {name: a}\n", "jobs", "list"),
    ("jobs: [{name: 'a b', output_dir: o}]\n", "jobs[0].name", "letters"),
    ("jobs: [{name: a}]\n", "jobs[0].output_dir", "missing"),
    ("jobs: [{name: a, output_dir: o, launch: {workdir: .}}]\n", "jobs[0].launch",
     "exactly one"),
    ("jobs: [{name: a, output_dir: o, step_pattern: 'step (\\d+'}]\n",
     "jobs[0].step_pattern", "not a valid regular expression"),
    ("jobs: [{name: a, output_dir: o, step_pattern: 'step (\\d+)'}]\n",
     "jobs[0].step_pattern", "(?P<step>"),
])
def test_wrong_types_and_shapes(tmp_path: Path, text: str, keypath: str, expected: str) -> None:
    err = error(write(tmp_path, text))
    assert err.keypath == keypath
    assert expected in err.message


def test_duplicate_job_names(tmp_path: Path) -> None:
    err = error(write(tmp_path, "jobs: [{name: a, output_dir: o}, {name: a, output_dir: p}]\n"))
    assert err.keypath == "jobs[1].name" and "duplicate" in err.message


@pytest.mark.parametrize("listen", ["9842", "host:", "host:99999", ":80x", "[::1]9842"])
def test_bad_listen(tmp_path: Path, listen: str) -> None:
    err = error(write(tmp_path, f"jobs: [{{name: a, output_dir: o}}]\n"
                                f"exporter: {{listen: '{listen}'}}\n"))
    assert err.keypath == "exporter.listen"
    assert "HOST:PORT" in err.message or "out of range" in err.message


def test_good_listen_including_ipv6(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "jobs: [{name: a, output_dir: o}]\n"
                                      "remediator: {listen: '[::1]:9000'}\n"))
    assert (cfg.remediator.listen.host, cfg.remediator.listen.port) == ("::1", 9000)
    assert str(cfg.exporter.listen) == "127.0.0.1:9842"  # the documented default


def test_missing_file(tmp_path: Path) -> None:
    err = error(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err) and "no such file" in err.message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    err = error(write(tmp_path, "jobs:\n  - name: a\n    output_dir: [unclosed\n  bad: {\n"))
    assert "line " in err.message
    line = int(err.message.split("line ")[1].split(",")[0])
    assert 3 <= line <= 5


def test_sections_of_the_wrong_kind_are_rejected_not_ignored(tmp_path: Path) -> None:
    """`remediator: []` or `false` is a mistake, not "use the defaults"."""
    from trainguard.config import ConfigError, parse_config

    for bad in ([], False, 0, ""):
        with pytest.raises(ConfigError, match=r"remediator: expected a mapping"):
            parse_config({"jobs": [{"name": "a", "output_dir": "x"}], "remediator": bad},
                         tmp_path / "c.yml")


def test_job_gpus_accept_indexes_uuids_or_all(tmp_path: Path) -> None:
    from trainguard.config import ConfigError, parse_config

    def gpus(value: object) -> object:
        return parse_config({"jobs": [{"name": "a", "output_dir": "x", "gpus": value}]},
                            tmp_path / "c.yml").jobs[0].gpus

    assert gpus([0, "GPU-1234"]) == ("0", "GPU-1234")
    assert gpus("all") == ("all",)
    assert gpus(None) is None
    for bad in (["nope"], [-1], [], "some", [True]):
        with pytest.raises(ConfigError, match=r"jobs\[0\]\.gpus"):
            gpus(bad)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinite_durations_are_rejected(tmp_path: Path, value: str) -> None:
    err = error(write(tmp_path, "jobs: [{name: a, output_dir: o}]\n"
                                f"remediator: {{kill_grace_seconds: {value}}}\n"))
    assert err.keypath == "remediator.kill_grace_seconds" and "finite" in err.message


def test_one_output_dir_for_two_jobs_is_rejected_however_spelled(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "o")
    err = error(write(tmp_path, "jobs: [{name: a, output_dir: o}, "
                                "{name: b, output_dir: ./link/.}]\n"))
    assert err.keypath == "jobs[1].output_dir" and "jobs[0]" in err.message


def test_a_launch_script_or_workdir_that_is_not_there_is_rejected(tmp_path: Path) -> None:
    err = error(write(tmp_path, "jobs: [{name: a, output_dir: o, "
                                "launch: {script: outputs/a/trian.sh}}]\n"))
    assert err.keypath == "jobs[0].launch.script" and "trian.sh" in err.message
    (tmp_path / "train.sh").write_text("accelerate launch t.py\n")
    err = error(write(tmp_path, "jobs: [{name: a, output_dir: o, "
                                "launch: {script: train.sh, workdir: gone}}]\n"))
    assert err.keypath == "jobs[0].launch.workdir" and "gone" in err.message
    err = error(write(tmp_path, "jobs: [{name: a, output_dir: o, launch: {script: train.sh}},"
                                " {name: b, output_dir: p, launch: {script: ./train.sh}}]\n"))
    assert err.keypath == "jobs[1].launch.script"


def test_output_flags_are_flags(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "jobs: [{name: a, output_dir: o, "
                                      "output_flags: [--logging_root]}]\n"))
    assert cfg.jobs[0].output_flags == ("--logging_root",)
    err = error(write(tmp_path, "jobs: [{name: a, output_dir: o, output_flags: [out dir]}]\n"))
    assert err.keypath == "jobs[0].output_flags[0]"

"""The resumed copy of a training script, over every shape real scripts come in.

The sh copies are checked by *running* them under bash with a fake ``accelerate`` on PATH
that writes the argv it got: the flag value is what the shell really passes, not what a
parser of ours thinks.  The bat copies are parsed back with cmd's rules (``^`` + CRLF
continuations, double quotes) by an independent splitter.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from helpers.common import REPO

from remediator.actions.script import (
    FlagSet,
    ScriptError,
    resume_argv,
    resumed_copy_path,
    rewrite,
    write_resumed_copy,
)

FLUXGYM = REPO / "tests" / "fixtures" / "fluxgym"
CKPT = "/work space/outputs/my lora/my-lora-step00000120-state"


def run_sh(tmp_path: Path, script: Path) -> list[str]:
    """Run a sh script with fake accelerate/python on PATH; return accelerate's argv."""
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    out = tmp_path / "argv.json"
    for name in ("accelerate", "python", "python3"):
        tool = fake / name
        tool.write_text("#!/bin/sh\nprintf '%s\\0' \"$0\" \"$@\" > " + shlex.quote(str(out))
                        + "\n")
        tool.chmod(0o755)
    uv = fake / "uv"  # `uv run CMD...` runs CMD
    uv.write_text('#!/bin/sh\nshift\nexec "$@"\n')
    uv.chmod(0o755)
    out.unlink(missing_ok=True)
    subprocess.run(["bash", str(script)], cwd=tmp_path, check=True, timeout=20,
                   env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path)})
    argv = out.read_bytes().split(b"\0")[:-1]
    return [a.decode() for a in argv[1:]]


def bat_words(text: str) -> list[str]:
    """cmd's view of a one-command .bat: join ^CRLF continuations, split on unquoted spaces."""
    joined = re.sub(r"\^\r\n", "", text)
    return [w.replace('"', "").replace("%%", "%")
            for w in re.findall(r'(?:"[^"]*"|[^\s"])+', joined)]


def flag_values(words: list[str], flag: str) -> list[str]:
    vals = []
    for i, w in enumerate(words):
        if w == flag:
            vals.append(words[i + 1])
        elif w.startswith(flag + "="):
            vals.append(w.split("=", 1)[1])
    return vals


def test_fluxgym_sh_copy_runs_with_the_flag_and_leaves_the_original(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    original = (FLUXGYM / "train.sh").read_bytes()
    script.write_bytes(original)
    script.chmod(0o750)
    copy = write_resumed_copy(script, FlagSet.resume("--resume", Path(CKPT)))
    assert copy == tmp_path / "train.trainguard-resume.sh"
    assert script.read_bytes() == original
    assert stat.S_IMODE(copy.stat().st_mode) == 0o750
    subprocess.run(["bash", "-n", str(copy)], check=True)
    before = run_sh(tmp_path, script)
    after = run_sh(tmp_path, copy)
    assert flag_values(after, "--resume") == [CKPT]
    # everything else reaches accelerate unchanged and in order
    assert [w for w in after if w not in ("--resume", CKPT)] == before


def test_fluxgym_bat_copy_keeps_crlf_and_carries_the_flag(tmp_path: Path) -> None:
    script = tmp_path / "train.bat"
    original = (FLUXGYM / "train.bat").read_bytes()
    script.write_bytes(original)
    win = r"C:\pinokio\api\fluxgym.git\outputs\my lora\my-lora-000004-state"
    copy = write_resumed_copy(script, FlagSet.resume("--resume", Path("/abs/placeholder")))
    text = copy.read_bytes().decode()
    assert script.read_bytes() == original
    assert "\n" not in text.replace("\r\n", "")  # every line still ends in CRLF
    assert flag_values(bat_words(text), "--resume") == ["/abs/placeholder"]
    # a Windows path with spaces, written by the same code path
    new = rewrite(original.decode(), "bat", FlagSet((("--resume", win),)))
    words = bat_words(new)
    assert flag_values(words, "--resume") == [win]
    assert [w for w in words if w not in ("--resume", win)] == bat_words(original.decode())


SHAPES = {
    "dangling continuation on the last line":
        "accelerate launch \\\n  train.py \\\n  --loss_type l2 \\\n",
    "dangling continuation then a blank line and another command":
        "accelerate launch \\\n  train.py \\\n  --loss_type l2 \\\n\necho done\n",
    "flags sharing a line":
        "accelerate launch --mixed_precision bf16 train.py --sample_prompts p.txt "
        "--sample_every_n_steps 100 --optimizer_type adamw8bit \\\n  --loss_type l2\n",
    "existing --resume X in the middle":
        "accelerate launch \\\n  train.py \\\n  --resume /old/state \\\n  --loss_type l2\n",
    "existing --resume=X":
        "accelerate launch train.py --resume=/old/state --loss_type l2\n",
    "resume flag on its own line, value on the next":
        "accelerate launch \\\n  train.py \\\n  --resume \\\n  '/old state' \\\n  --seed 1\n",
    "resume flag as the last line":
        "accelerate launch \\\n  train.py \\\n  --seed 1 \\\n  --resume /old\n",
    "cd and export before the command":
        "#!/bin/bash\nset -e\ncd \"$(dirname \"$0\")\"\nexport HF_HOME=/tmp/hf\n"
        "accelerate launch \\\n  train.py --seed 1\n",
    "redirect and pipe after the command":
        "accelerate launch train.py --seed 1 2>&1 | cat > /dev/null\n",
    "trailing comment":
        "accelerate launch \\\n  train.py \\\n  --seed 1  # the seed \\\n",
    "python instead of accelerate, no trailing newline":
        "python3 train.py --seed 1 \\\n  --save_state",
    "environment runner with options of its own before the launcher":
        "timeout 10h nice -n 5 accelerate launch train.py --seed 1\n",
    "uv run":
        "uv run accelerate launch --num_processes 1 \\\n  train.py --seed 1\n",
    "pip install before, python -m pip never taken for training":
        "python -m pip install -q -r requirements.txt\naccelerate launch train.py --seed 1\n",
    "several --resume occurrences":
        "accelerate launch train.py --resume /a \\\n  --resume=/b \\\n  --resume /c --x 1\n",
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_sh_shape_gets_exactly_one_flag(tmp_path: Path, shape: str) -> None:
    script = tmp_path / "train.sh"
    script.write_text(SHAPES[shape])
    (tmp_path / "train.py").write_text("")
    copy = write_resumed_copy(script, FlagSet.resume("--resume", Path(CKPT)))
    subprocess.run(["bash", "-n", str(copy)], check=True)
    argv = run_sh(tmp_path, copy)
    assert flag_values(argv, "--resume") == [CKPT], copy.read_text()
    assert "train.py" in argv
    assert script.read_text() == SHAPES[shape]


def test_python_m_module_is_a_training_command(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text("cd sd-scripts\npython -m library.train_network --seed 1 | tee log\n")
    argv = run_sh(tmp_path, write_resumed_copy(script, FlagSet.resume("--resume", Path(CKPT))))
    assert argv == ["-m", "library.train_network", "--seed", "1", "--resume", CKPT]


def test_flags_other_than_resume_survive(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text(SHAPES["existing --resume X in the middle"])
    argv = run_sh(tmp_path, write_resumed_copy(script, FlagSet.resume("--resume", Path(CKPT))))
    assert argv == ["launch", "train.py", "--loss_type", "l2", "--resume", CKPT]


def test_similar_flag_names_are_not_touched() -> None:
    text = "accelerate launch train.py --resume_from_huggingface x --resumes y\n"
    new = rewrite(text, "sh", FlagSet((("--resume", "/p"),)))
    words = shlex.split(new)
    assert words[:7] == shlex.split(text)
    assert flag_values(words, "--resume") == ["/p"]


def test_diffusers_flag_name() -> None:
    text = "accelerate launch train_dreambooth.py --resume_from_checkpoint latest\n"
    new = rewrite(text, "sh", FlagSet((("--resume_from_checkpoint", "/o/checkpoint-500"),)))
    assert flag_values(shlex.split(new), "--resume_from_checkpoint") == ["/o/checkpoint-500"]


def test_no_training_command_is_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text("echo hello\nls -l\npython -m pip install -r requirements.txt\n"
                      "python setup.py develop\n")
    with pytest.raises(ScriptError, match=r"train\.sh: no training command"):
        write_resumed_copy(script, FlagSet.resume("--resume", Path(CKPT)))
    assert not resumed_copy_path(script).exists()


def test_unterminated_quote_is_a_clear_error() -> None:
    with pytest.raises(ScriptError, match="line 2: unterminated"):
        rewrite("accelerate launch \\\n  train.py --x 'oops\n", "sh",
                FlagSet((("--resume", "/p"),)))


def test_relative_checkpoint_refused(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text("accelerate launch train.py\n")
    with pytest.raises(ScriptError, match="absolute"):
        write_resumed_copy(script, FlagSet.resume("--resume", Path("outputs/x-state")))


def test_rewriting_an_old_copy_replaces_it_whole(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text(SHAPES["flags sharing a line"])
    write_resumed_copy(script, FlagSet.resume("--resume", Path("/first")))
    copy = write_resumed_copy(script, FlagSet.resume("--resume", Path("/second")))
    assert flag_values(run_sh(tmp_path, copy), "--resume") == ["/second"]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_command_jobs_argv() -> None:
    cmd = ("accelerate", "launch", "t.py", "--resume", "/old", "--x", "1", "--resume=/o2")
    assert resume_argv(cmd, FlagSet((("--resume", "/new"),))) == [
        "accelerate", "launch", "t.py", "--x", "1", "--resume", "/new"]
    assert json.dumps(resume_argv(("python", "t.py"), FlagSet((("--resume", "/a b"),)))) == \
        '["python", "t.py", "--resume", "/a b"]'

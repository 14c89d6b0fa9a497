"""trainguard.progress: a follower fed the way tqdm and sd-scripts really write."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.common import PYTHON, REPO, TINY_TRAIN, wait_for

from trainguard.config import JobConfig, parse_config
from trainguard.progress import (
    MAX_PARTIAL,
    TAIL_BYTES,
    LogFollower,
    Progress,
    job_completed,
    output_name,
)

FLUXGYM = REPO / "tests" / "fixtures" / "fluxgym"  # a copy of shared/fixtures/fluxgym


def bar(n: int, total: int, desc: str = "steps", post: str = "avr_loss=0.1") -> str:
    pct = 100 * n // total
    meter = "█" * (pct // 10)
    return f"\r{desc}: {pct:3d}%|{meter:10s}| {n}/{total} [00:10<00:12, 1.2it/s, {post}]"


def append(path: Path, text: str | bytes) -> None:
    with open(path, "ab") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def test_cr_redraws_partial_lines_and_last_progress(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    f = LogFollower(log)
    assert f.poll(now=1.0) == Progress(None, None, None, False, 0)  # no file yet
    append(log, "running training / 学習開始\n" + bar(0, 360) + bar(1, 360))
    p = f.poll(now=10.0)
    assert (p.step, p.total, p.last_progress) == (1, 360, 10.0)
    # The same step redrawn with a new postfix is no progress.
    append(log, bar(1, 360, post="avr_loss=0.09"))
    assert f.poll(now=20.0).last_progress == 10.0
    # A bar cut mid-write must not be read as 162/36.
    full = bar(162, 360)
    cut = full.index("/36") + 3
    append(log, full[:cut])
    p = f.poll(now=30.0)
    assert (p.step, p.total) == (1, 360)
    append(log, full[cut:])
    p = f.poll(now=40.0)
    assert (p.step, p.total, p.last_progress) == (162, 360, 40.0)


def test_other_bars_and_epoch_lines_are_not_steps(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    f = LogFollower(log)
    append(log, bar(5, 100) + "\n")
    append(log, "epoch 2/16\n" + bar(7, 9, desc="validation steps") + "\n"
           + "\r100%|██████████| 20/20 [00:01<00:00, 19.5it/s]\n"
           + bar(3, 4, desc="caching latents") + "\n")
    p = f.poll(now=5.0)
    assert (p.step, p.total) == (5, 100)
    assert p.lines_read == 5


def test_diffusers_steps_bar_counts(tmp_path: Path) -> None:
    # diffusers' train_*.py: tqdm(range(max_train_steps), desc="Steps")
    log = tmp_path / "train.log"
    f = LogFollower(log)
    append(log, bar(450, 1000, desc="Steps", post="loss=0.1, lr=0.0001"))
    p = f.poll(now=5.0)
    assert (p.step, p.total) == (450, 1000)


def test_a_jobs_step_pattern_reads_other_trainers(tmp_path: Path) -> None:
    # HF Trainer's bar has no description; the default rule rightly ignores it (sd-scripts'
    # caching bars look the same), so such a job names its own pattern.
    job = parse_config({"jobs": [{
        "name": "hf", "output_dir": "out", "log_file": "train.log",
        "step_pattern": r"^\s*\d+%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)"}]},
        tmp_path / "c.yml").jobs[0]
    f = LogFollower.for_job(job)
    assert f is not None and f.path == tmp_path / "train.log"
    hf = "\r 13%|█▎        | 40/300 [00:10<01:05,  3.97it/s]"
    append(f.path, bar(12, 300, desc="steps") + "\n" + hf[:hf.index("/300") + 3])
    assert f.poll(now=1.0).step is None  # the bar is cut ("40/30"): wait for the rest
    append(f.path, hf[hf.index("/300") + 3:] + "\n{'loss': 0.5, 'epoch': 0.13}\n")
    p = f.poll(now=2.0)
    assert (p.step, p.total, p.last_progress) == (40, 300, 2.0)
    assert LogFollower(f.path).poll(now=3.0).step == 12  # the default rule sees only steps:


def test_completion_marker_then_resume_in_the_same_log(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    f = LogFollower(log)
    rich_log = "2025-01-01 12:00:00 INFO     model saved.     train_network.py:1\n"
    append(log, bar(10, 10) + "\n" + rich_log)
    assert f.poll(now=1.0).completed
    append(log, "resume training from local state: /x/my-lora-state\n")
    p = f.poll(now=2.0)
    assert not p.completed and p.run_started == 2.0
    append(log, bar(10, 20))
    assert not f.poll(now=3.0).completed


def test_bar_going_backwards_is_a_new_run(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    f = LogFollower(log)
    append(log, bar(50, 100) + "\nmodel saved.\n")
    assert f.poll(now=1.0).completed
    append(log, bar(0, 100))
    p = f.poll(now=2.0)
    # The new run's first draw is not progress (its warm-up has not produced a step yet);
    # its first step is.
    assert (p.step, p.completed, p.run_started, p.last_progress) == (0, False, 2.0, 1.0)
    append(log, bar(1, 100))
    assert f.poll(now=3.0).last_progress == 3.0


def test_truncation_starts_over(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    f = LogFollower(log)
    append(log, "x" * 5000 + "\n" + bar(90, 100) + "\nmodel saved.\n")
    assert f.poll(now=1.0).completed
    log.write_text(bar(3, 50))  # `tee` without -a: same inode, shorter file
    p = f.poll(now=2.0)
    assert (p.step, p.total, p.completed) == (3, 50, False)
    assert f.reopened == 1 and f.offset == log.stat().st_size


def test_rotation_starts_over_on_the_new_file(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    f = LogFollower(log)
    append(log, bar(40, 100))
    assert f.poll(now=1.0).step == 40
    os.rename(log, tmp_path / "train.log.1")
    assert f.poll(now=2.0).step == 40  # gone for a moment: keep what we knew
    append(log, bar(41, 100))
    p = f.poll(now=3.0)
    assert (p.step, p.last_progress) == (41, 3.0)
    assert f.reopened == 1


def test_partial_line_buffer_is_bounded(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    f = LogFollower(log)
    append(log, b"\x1b[?25l" + b"#" * (3 * MAX_PARTIAL))
    f.poll(now=1.0)
    assert len(f._partial) <= MAX_PARTIAL
    append(log, bar(2, 9))
    assert f.poll(now=2.0).step == 2


def test_big_log_reads_only_the_tail_then_only_what_is_appended(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    line = bar(1, 100_000)
    with open(log, "wb") as out:
        chunk = "".join(bar(n, 100_000) for n in range(1, 2001)).encode()
        while out.tell() < 16 * TAIL_BYTES:
            out.write(chunk)
        out.write(bar(4242, 100_000).encode())
    size = log.stat().st_size
    f = LogFollower(log)
    later = log.stat().st_mtime + 500  # the step happened when the file was written
    p = f.poll(now=later)
    assert p.step == 4242
    assert f.bytes_read == TAIL_BYTES  # not the 16 MiB before it
    assert p.last_progress == pytest.approx(log.stat().st_mtime)
    # Nothing new: nothing read.
    f.poll(now=later + 1)
    assert f.bytes_read == TAIL_BYTES
    extra = (line + bar(4243, 100_000)).encode()
    append(log, extra)
    p = f.poll(now=later + 2)
    assert p.step == 4243
    assert f.bytes_read == TAIL_BYTES + len(extra)
    assert f.offset == size + len(extra)


@pytest.mark.slow
def test_follows_the_real_tiny_trainer(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    f = LogFollower(log)
    seen: set[int] = set()
    with open(log, "wb") as out:
        proc = subprocess.Popen([PYTHON, str(TINY_TRAIN), "--output_dir", str(tmp_path / "out"),
                                 "--max_train_steps", "12", "--step_seconds", "0.05"],
                                stdout=out, stderr=subprocess.STDOUT)

        def done() -> bool:
            p = f.poll()
            if p.step is not None:
                seen.add(p.step)
            return proc.poll() is not None and f.poll().completed

        wait_for(done, timeout=120, interval=0.02, what="the tiny trainer to finish")
    p = f.poll()
    assert (p.step, p.total, p.completed) == (12, 12, True)
    assert len(seen) >= 2  # followed it while it ran, not just read the end


# --------------------------------------------------------------------------- completion


def job(tmp_path: Path, launch: dict[str, object] | None = None) -> JobConfig:
    spec: dict[str, object] = {"name": "j", "output_dir": "out"}
    if launch is not None:
        spec["launch"] = launch
    (tmp_path / "out").mkdir(exist_ok=True)
    return parse_config({"jobs": [spec]}, tmp_path / "c.yaml").jobs[0]


def touch(path: Path, mtime: float, folder: bool = False) -> None:
    path.mkdir() if folder else path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))


def test_output_name_from_scripts_and_commands(tmp_path: Path) -> None:
    for name in ("train.sh", "train.bat"):
        shutil.copy(FLUXGYM / name, tmp_path / name)
        assert output_name(job(tmp_path, {"script": name})) == "my-lora"
    cmd = ["accelerate", "launch", "t.py", "--output_name=run7"]
    assert output_name(job(tmp_path, {"command": cmd})) == "run7"
    assert output_name(job(tmp_path, {"command": ["python", "t.py"]})) == "last"
    assert output_name(job(tmp_path)) == "last"


def test_job_completed_rules(tmp_path: Path) -> None:
    j = job(tmp_path, {"command": ["python", "t.py", "--output_name", "my-lora"]})
    out = j.output_dir
    running = Progress(5, 10, 1.0, False, 3)
    assert not job_completed(j, None, process_alive=False)           # nothing at all
    assert job_completed(j, Progress(5, 10, 1.0, True, 3), process_alive=True)
    assert job_completed(j, Progress(10, 10, 1.0, False, 3), process_alive=False)
    assert not job_completed(j, Progress(10, 10, 1.0, False, 3), process_alive=True)
    touch(out / "my-lora-state", 1000.0, folder=True)
    touch(out / "my-lora.safetensors", 1001.0)
    assert job_completed(j, None, process_alive=False)               # final weights, last
    assert not job_completed(j, running, process_alive=True)         # a new run is going
    # A later run started after those weights (seen in the log) and died: not complete.
    assert not job_completed(j, Progress(5, 10, 2000.0, False, 3, run_started=1500.0), False)
    # ... or, with no log, its intermediate save is newer than the final weights.
    touch(out / "my-lora-step00000004-state", 1002.0, folder=True)
    assert not job_completed(j, None, process_alive=False)
    # Epoch weights with the same stem are not the final weights.
    (out / "my-lora.safetensors").unlink()
    touch(out / "my-lora-000004.safetensors", 3000.0)
    assert not job_completed(j, None, process_alive=False)

"""trainguard.progress on logs as the real trainers write them (issues 11 and 12).

The log text comes from the real writers (tests/helpers/upstream_log.py: rich's
RichHandler set up as sd-scripts does, real tqdm bars, the HF Trainer's own
ProgressCallback), never from hand-typed strings; each test names the upstream behaviour
it stands on.  Every test here fails on the follower before these issues.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.common import PYTHON, REPO, wait_for
from helpers.upstream_log import UpstreamLog

from trainguard.config import parse_config
from trainguard.progress import LogFollower, Progress, job_completed

HF_PATTERN = r"^\s*\d+%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)"
STATE = "/workspace/fluxgym/outputs/my-lora/my-lora-{:06d}-state"


class Run:
    """A log file fed from an UpstreamLog and a follower polled at chosen times."""

    def __init__(self, path: Path, up: UpstreamLog | None = None,
                 pattern: str | None = None) -> None:
        self.path = path
        self.up = up or UpstreamLog()
        self.follower = LogFollower(path, pattern)

    def poll(self, now: float) -> Progress:
        self.up.clock = now
        with open(self.path, "ab") as f:
            f.write(self.up.take())
        return self.follower.poll(now=now)


# ------------------------------------------------------------------ completion (issue 11)

def test_sd_scripts_final_redraw_keeps_completed(tmp_path: Path) -> None:
    # train_network.py:1729 logs "model saved." last; its steps bar (1357) is never closed,
    # so tqdm draws it once more when train() returns, and the buffered print()s of the
    # final save (1300) come with the exit flush.
    r = Run(tmp_path / "train.log")
    r.up.rich("preparing accelerator", "preparing accelerator")
    r.up.print("running training / 学習開始")
    bar = r.up.bar(8)
    r.up.steps(bar, 8)
    assert r.poll(10.0).step == 8
    r.up.print("\nsaving checkpoint: /workspace/fluxgym/outputs/my-lora/my-lora.safetensors")
    r.up.rich("model saved.", "model saved")
    assert r.poll(20.0).completed
    r.up.exit()
    p = r.poll(21.0)
    assert (p.step, p.total, p.completed) == (8, 8, True)
    assert p.phase == "finished"
    job = parse_config({"jobs": [{"name": "j", "output_dir": "out"}]}, tmp_path / "c.yml").jobs[0]
    assert job_completed(job, p, process_alive=True)  # before the process is gone
    # A new run in the same log is still told apart: its bar goes backwards.
    r.up.print("running training / 学習開始")
    r.up.bar(8)
    p = r.poll(30.0)
    assert (p.step, p.completed, p.run_started) == (0, False, 30.0)


# ------------------------------------------------------------------ nested bars (issue 11)

def test_hf_trainer_evaluation_bar_is_not_the_training_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # transformers' ProgressCallback draws the evaluation bar while the training bar is
    # open: tqdm nests it one line below, ending each draw with a cursor-up.  A job for
    # the Trainer names a pattern for bars without a description, which both match.
    import tqdm.std
    from transformers.trainer_callback import ProgressCallback

    # tqdm draws at most every 0.1 s of its clock: give it the seconds a real step takes.
    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])

    log = tmp_path / "train.log"
    follower = LogFollower(log, HF_PATTERN)
    stream = io.StringIO()
    cb = ProgressCallback()
    args = SimpleNamespace()
    state = SimpleNamespace(is_world_process_zero=True, is_local_process_zero=True,
                            max_steps=60, global_step=0)

    def poll(now: float) -> Progress:
        with open(log, "ab") as f:
            f.write(stream.getvalue().encode())
        stream.seek(0)
        stream.truncate()
        return follower.poll(now=now)

    with contextlib.redirect_stderr(stream):
        cb.on_train_begin(args, state, None)
        for step in range(1, 41):
            clock[0] += 2.0
            state.global_step = step
            cb.on_step_end(args, state, None)
    p = poll(100.0)
    assert (p.step, p.total) == (40, 60)
    with contextlib.redirect_stderr(stream):
        for _ in range(6):  # evaluation over 10 batches hangs after the 6th
            clock[0] += 1.0
            cb.on_prediction_step(args, state, None, eval_dataloader=[0] * 10)
    p = poll(110.0)
    assert (p.step, p.total, p.last_progress) == (40, 60, 100.0)
    assert (p.phase, p.phase_started) == ("validation", 110.0)   # issue 12
    with contextlib.redirect_stderr(stream):
        for _ in range(4):
            clock[0] += 1.0
            cb.on_prediction_step(args, state, None, eval_dataloader=[0] * 10)
        cb.on_evaluate(args, state, None)
        clock[0] += 2.0
        state.global_step = 41
        cb.on_step_end(args, state, None)
        cb.on_train_end(args, state, None)
    p = poll(140.0)
    assert (p.step, p.total, p.last_progress) == (41, 60, 140.0)
    assert p.phase == "training"
    assert dict(p.phase_max) == {"validation": 30.0}


def test_sd_scripts_validation_and_sampling_bars_are_nested(tmp_path: Path) -> None:
    # train_network.py:1542 ("validation steps") and flux_train_utils.py:353 (the sample
    # denoising bar, no description) are created while the steps bar is open.
    r = Run(tmp_path / "train.log", pattern=HF_PATTERN.replace(r"^\s*", r"^(?:steps: )?\s*"))
    bar = r.up.bar(100)
    r.up.steps(bar, 30)
    val = r.up.bar(12, desc="validation steps")
    val.update(5)
    p = r.poll(50.0)
    assert (p.step, p.total) == (30, 100)
    assert p.phase == "validation"
    r.up.steps(bar, 1)
    r.up.rich("generating sample images at step / サンプル画像生成 ステップ: 31", "sample")
    den = r.up.bar(20, desc=None)
    den.update(7)
    p = r.poll(60.0)
    assert (p.step, p.total) == (31, 100)
    assert p.phase == "sampling"


# ------------------------------------------------------------------ phases (issue 12)

def test_sd_scripts_phases_from_wrapped_rich_records(tmp_path: Path) -> None:
    r = Run(tmp_path / "train.log")
    up = r.up
    up.rich("preparing accelerator", "preparing accelerator")
    assert (r.poll(0.0).phase, r.poll(0.0).phase_started) == ("startup", 0.0)
    up.rich("caching latents...", "caching latents")
    cache = up.bar(40, desc=None)            # train_util.py:1171 tqdm(image_infos)
    cache.update(40)
    cache.close()
    up.rich("caching Text Encoder outputs...", "caching te")
    p = r.poll(30.0)
    assert (p.phase, p.phase_started, p.step) == ("caching", 30.0, None)
    up.print("running training / 学習開始")
    bar = up.bar(80)
    p = r.poll(150.0)
    assert (p.phase, p.phase_started, p.step, p.total) == ("training", 150.0, 0, 80)
    for i in range(1, 21):
        up.steps(bar)
        p = r.poll(150.0 + 2 * i)
    assert (p.step, p.last_progress) == (20, 190.0)
    # sampling: the record starts on the bar's line and wraps over three lines:
    # "generating sample images at" / "step / サンプル画像生成" / "ステップ: 20"
    up.rich("", "sample")
    up.rich("generating sample images at step / サンプル画像生成 ステップ: 20", "sample")
    up.rich("prompt: a photo of sks dog", "prompt")
    up.print("Encoding prompt: a photo of sks dog")       # flux_train_utils.py:206, print
    den = up.bar(20, desc=None)
    den.update(10)
    lines = up._log.getvalue().splitlines()
    # What rich really wrote: the empty record on the bar's line, the message wrapped.
    at = next(i for i, line in enumerate(lines) if "generating sample images at" in line)
    assert lines[at - 1].split("\r")[-1].startswith("steps: ")
    assert "flux_train_utils.py:61" in lines[at - 1]
    assert [lines[at + 1].strip(), lines[at + 2].strip()] == ["step / サンプル画像生成",
                                                              "ステップ: 20"]
    p = r.poll(192.0)
    assert (p.phase, p.phase_started, p.step) == ("sampling", 192.0, 20)
    # A print flushed late by the denoise bar's creation ("saving checkpoint:" from the
    # epoch save, train_network.py:1300) does not date a save.
    up.print("\nsaving checkpoint: /workspace/fluxgym/outputs/my-lora/my-lora-000001.safetensors")
    up.bar(20, desc=None).update(20)
    assert r.poll(300.0).phase == "sampling"
    up.steps(bar)
    p = r.poll(432.0)
    assert (p.phase, p.phase_started, p.step, p.last_progress) == ("training", 432.0, 21, 432.0)
    assert dict(p.phase_max)["sampling"] == 240.0
    # An epoch-end state save: logger lines, on time.
    up.steps(bar, 19)
    r.poll(470.0)
    up.rich("", "saving state epoch")
    up.rich("saving state at epoch 1", "saving state epoch")
    up.rich(f"save train state to {STATE.format(1)}/train_state.json at epoch 1 step 40",
            "save train state")
    p = r.poll(472.0)
    assert (p.phase, p.phase_started) == ("saving", 472.0)
    up.steps(bar)
    p = r.poll(532.0)
    assert p.phase == "training" and dict(p.phase_max)["saving"] == 60.0
    up.steps(bar, 39)
    up.rich("model saved.", "model saved")
    p = r.poll(600.0)
    assert (p.phase, p.completed, p.step) == ("finished", True, 80)


def test_sample_at_first_is_sampling_although_the_banner_arrives_then(tmp_path: Path) -> None:
    # --sample_at_first (train_network.py:1332) samples before the steps bar exists: the
    # first tqdm bar of the run is then the denoising bar, whose creation flushes the
    # buffered "running training" banner (987) into the middle of the sampling phase.
    r = Run(tmp_path / "train.log")
    r.up.rich("preparing accelerator", "preparing accelerator")
    r.poll(0.0)
    r.up.rich("caching latents...", "caching latents")
    r.up.print("running training / 学習開始")
    r.poll(10.0)
    r.up.rich("generating sample images at step / サンプル画像生成 ステップ: 0", "sample")
    r.up.bar(20, desc=None).update(5)
    text = r.up._log.getvalue()
    assert text.index("サンプル画像生成") < text.index("running training")
    p = r.poll(20.0)
    assert (p.phase, p.phase_started) == ("sampling", 20.0)
    r.up.kill()     # (the denoise bar closes; the steps bar is created)
    r.up.bar(80)
    p = r.poll(260.0)
    assert (p.phase, p.step, dict(p.phase_max)) == (
        "training", 0, {"caching": 10.0, "sampling": 240.0})


def test_plain_lines_never_date_a_phase(tmp_path: Path) -> None:
    # With --console_log_simple (or no rich) sd-scripts logs to stdout like print(), late.
    r = Run(tmp_path / "train.log")
    bar = r.up.bar(10)
    r.up.steps(bar, 2)
    r.up.print("generating sample images at step / サンプル画像生成 ステップ: 2")
    r.up.print("saving state at epoch 1")
    r.up.print("caching latents...")
    r.up.flush_stdout()
    assert r.poll(5.0).phase == "training"


def test_diffusers_example_phases(tmp_path: Path) -> None:
    # examples/dreambooth/train_dreambooth_lora_flux.py: a "Caching latents" bar, then
    # logger.info through logging.basicConfig on stderr; accelerate logs its save.
    r = Run(tmp_path / "train.log")
    cache = r.up.bar(8, desc="Caching latents")
    cache.update(8)
    cache.close()
    assert r.poll(10.0).phase == "caching"
    r.up.logging_line("***** Running training *****")
    assert r.poll(40.0).phase == "startup"
    bar = r.up.bar(500, desc="Steps")
    r.up.steps(bar, 100)
    assert r.poll(60.0).phase == "training"
    r.up.logging_line("Saving current state to out/checkpoint-100", "accelerate.accelerator")
    assert r.poll(61.0).phase == "saving"
    r.up.logging_line("Saved state to out/checkpoint-100")
    r.up.steps(bar, 1)
    p = r.poll(70.0)
    assert (p.phase, dict(p.phase_max)) == ("training", {"startup": 20.0, "saving": 9.0})
    r.up.logging_line("Running validation... \n Generating 4 images with prompt: sks dog.")
    assert r.poll(80.0).phase == "sampling"


# ------------------------------------------------------------------ cumulative step (issue 11)

def _run_to(r: Run, bar: object, upto: int, now: float) -> Progress:
    while r.up.bars and getattr(bar, "n", 0) < upto:
        r.up.steps(bar)
    return r.poll(now)


def _epoch_save(r: Run, epoch: int, own_step: int) -> None:
    r.up.rich(f"saving state at epoch {epoch}", "saving state epoch")
    r.up.rich(f"save train state to {STATE.format(epoch)}/train_state.json at epoch {epoch} "
              f"step {own_step}", "save train state")


def _resume(r: Run, epoch: int, own_step: int, total: int, *, initial_epoch: bool = False,
            skip: int | None = None) -> object:
    r.up.kill()   # the hung process was killed: its bars draw nothing more
    r.up.rich("preparing accelerator", "preparing accelerator")
    r.up.rich(f"resume training from local state: {STATE.format(epoch)}", "resume")
    r.up.rich(f"load train state from {STATE.format(epoch)}/train_state.json: "
              f"{{'current_epoch': {epoch}, 'current_step': {own_step}}}", "load state")
    if initial_epoch:
        r.up.rich("steps from the state is ignored because initial_step is specified / "
                  "initial_stepが指定されているため、stateからのステップ数は無視されます",
                  "ignored", level=30)
    if skip is not None:
        r.up.rich(f"skipping {skip} steps / {skip}ステップをスキップします", "skipping")
    r.up.print("running training / 学習開始")
    return r.up.bar(total)


def test_sd_scripts_resumes_publish_the_true_cumulative_step(tmp_path: Path) -> None:
    # 4 epochs of 10 steps.  train_network.py ~1258-1275: without --skip_until_initial_step
    # a resume skips whole epochs and restarts global_step and the bar at 0; the states it
    # then saves hold its own count (current_step), while current_epoch stays true.
    r = Run(tmp_path / "train.log")
    r.up.rich("preparing accelerator", "preparing accelerator")
    bar = r.up.bar(40)
    _run_to(r, bar, 10, 10.0)
    _epoch_save(r, 1, 10)
    _run_to(r, bar, 20, 20.0)
    _epoch_save(r, 2, 20)
    assert _run_to(r, bar, 25, 25.0).step == 25                      # ... and hangs
    bar = _resume(r, 2, 20, 40)                                       # plain --resume
    p = r.poll(100.0)
    assert (p.step, p.total, p.last_progress) == (20, 40, 25.0)
    assert p.run_step == 0
    _run_to(r, bar, 10, 110.0)
    _epoch_save(r, 3, 10)                      # the state holds this run's own count: 10
    p = _run_to(r, bar, 12, 112.0)
    assert (p.step, p.run_step) == (32, 12)                           # ... hangs again
    bar = _resume(r, 3, 10, 40, initial_epoch=True)   # trainguard's --initial_epoch 4
    p = r.poll(200.0)
    assert (p.step, p.run_step, p.total) == (30, 0, 40)
    p = _run_to(r, bar, 10, 210.0)
    assert (p.step, p.last_progress) == (40, 210.0)


def test_skip_until_initial_step_and_an_exporter_that_saw_no_save(tmp_path: Path) -> None:
    # With --skip_until_initial_step the run logs "skipping N steps" (train_network.py:1265)
    # and its bar counts the rest: range(max_train_steps - initial_step) (1357), whose total
    # shrinks by the steps left in the skipped epoch.
    r = Run(tmp_path / "train.log")
    bar = r.up.bar(40)
    _run_to(r, bar, 27, 10.0)
    bar = _resume(r, 3, 25, 35, skip=25)
    p = r.poll(50.0)
    assert (p.step, p.total) == (25, 40)
    assert p.run_step == 0
    assert _run_to(r, bar, 3, 56.0).step == 28
    # An exporter (re)started after the first run saw none of its saves: the state's own
    # current_step is the offset (true for a state of a run that was never resumed).
    fresh = Run(tmp_path / "other.log")
    fresh.poll(0.0)
    _resume(fresh, 2, 20, 40)
    p = fresh.poll(5.0)
    assert (p.step, p.run_step) == (20, 0)


# ------------------------------------------------------------------ rhythm (issue 12)

def test_rhythm_is_learned_live_per_run_and_phases_per_job(tmp_path: Path) -> None:
    r = Run(tmp_path / "train.log")
    bar = r.up.bar(100)
    r.poll(0.0)
    r.up.steps(bar)
    p = r.poll(40.0)                         # a slow first step (warm-up): not a sample
    assert (p.step, p.step_gap_max, p.step_seconds) == (1, None, None)
    for i in range(1, 11):
        r.up.steps(bar)
        p = r.poll(40.0 + 2 * i)
    assert (p.step_gap_max, p.step_seconds) == (2.0, 2.0)
    r.up.steps(bar, 7)                       # one scrape sees 7 steps
    p = r.poll(75.0)
    assert p.step_gap_max == 15.0 and p.step_seconds == pytest.approx(35.0 / 17)
    r.up.rich("generating sample images at step / サンプル画像生成 ステップ: 18", "sample")
    r.poll(80.0)
    r.up.steps(bar)
    p = r.poll(200.0)                        # sampling took 120 s: not a step gap
    assert (p.step_gap_max, dict(p.phase_max)) == (15.0, {"sampling": 120.0})
    # A resume: the step rhythm starts over, the phases' durations are the job's.
    r.up.kill()
    r.up.rich("preparing accelerator", "preparing accelerator")
    p = r.poll(300.0)
    assert (p.step_gap_max, p.step_seconds, dict(p.phase_max)) == (None, None,
                                                                   {"sampling": 120.0})
    # Catching up on an existing log teaches nothing: every line carries its mtime.
    late = LogFollower(r.path).poll(now=10_000.0)
    assert (late.step, late.phase, late.step_gap_max, late.phase_max) == (19, "startup", None, ())


# ------------------------------------------------------------------ a real subprocess

CHILD = textwrap.dedent("""
    import sys, time
    from helpers.upstream_log import UpstreamLog

    def wait(stage):
        if sys.stdin.readline().strip() != stage:
            raise SystemExit("out of step")

    def train():
        # sd-scripts' logging and bar, buffered print()s: the real Python doing it.
        up = UpstreamLog(real=True)
        up.rich("preparing accelerator", "preparing accelerator")
        up.rich("caching latents...", "caching latents")
        wait("bar")
        up.print("running training / 学習開始")
        bar = up.bar(6)
        up.steps(bar, 3)
        wait("sample")
        up.rich("", "sample")
        up.rich("generating sample images at step / サンプル画像生成 ステップ: 3", "sample")
        den = up.bar(20, desc=None)
        den.update(20)
        den.close()
        wait("finish")
        up.steps(bar, 3)
        up.print("saving checkpoint: out/my-lora.safetensors")
        up.rich("model saved.", "model saved")
        wait("exit")

    train()   # returns: its never-closed bar draws once more; then the exit flush
""")


@pytest.mark.slow
def test_real_sd_scripts_logging_in_a_subprocess(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "train.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(COLUMNS="80", PYTHONPATH=str(REPO / "tests"))
    f = LogFollower(log)
    with open(log, "wb") as out:
        child = subprocess.Popen([PYTHON, str(script)], stdin=subprocess.PIPE, stdout=out,
                                 stderr=subprocess.STDOUT, env=env, text=True)
        assert child.stdin is not None

        def step(stage: str, check: Callable[[Progress], bool], what: str) -> Progress:
            assert child.stdin is not None
            if stage:
                child.stdin.write(stage + "\n")
                child.stdin.flush()

            def seen() -> Progress | None:
                p = f.poll()
                return p if check(p) else None

            return wait_for(seen, timeout=60, interval=0.05, what=what)

        try:
            step("", lambda p: p.phase == "caching", "the caching phase")
            step("bar", lambda p: p.step == 3 and p.phase == "training", "three steps")
            step("sample", lambda p: p.phase == "sampling", "the sampling phase")
            p = step("finish", lambda p: p.completed, "model saved.")
            assert (p.step, p.phase) == (6, "finished")
            child.stdin.write("exit\n")
            child.stdin.close()
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    p = f.poll()
    assert (p.step, p.total, p.completed, p.phase) == (6, 6, True, "finished")
    text = log.read_text(encoding="utf-8")
    # What made this test worth having: the print()s really came late, after the
    # completion marker and the exit redraw.
    assert text.index("model saved.") < text.index("saving checkpoint:")


def test_a_log_that_appears_while_watched_is_live(tmp_path: Path) -> None:
    # The exporter started before the run: the log it then sees appear is being written
    # now, so its lines are dated by the polls and teach the rhythm (unlike a log that was
    # already there, which is only caught up on).
    r = Run(tmp_path / "train.log")
    assert r.follower.poll(now=0.0).step is None        # no file yet
    bar = r.up.bar(50)
    r.up.steps(bar)
    assert r.poll(10.0).last_progress == 10.0
    r.up.steps(bar)
    r.poll(12.0)
    r.up.steps(bar)
    assert r.poll(14.0).step_gap_max == 2.0

"""The trainer simulators behave as upstream does (they are only as good as that).

Each expectation below is upstream behaviour, cited where the simulator implements it
(tests/fixtures/sd_scripts_sim.py, tests/fixtures/diffusers_sim.py); the runs are real
(accelerate on the CPU, real tqdm, real rich logging, output as under ``2>&1 | tee``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers.sdscripts import DIFFUSERS_SIM, SD_SIM, events, run_sim, upstream_kept

from demo.fluxgym import FluxGymRun, write_dataset

pytestmark = pytest.mark.slow

ESC_UP = "\x1b[A"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[dict[str, object]]]:
    """An uninterrupted FluxGym-configured run: 4 images x 2 repeats (8 steps an epoch),
    3 epochs, states every epoch and every 5 steps, sampling every 4 steps and at first,
    a validation split."""
    root = tmp_path_factory.mktemp("sim")
    run = FluxGymRun(root, "lora")
    run.output_dir.mkdir(parents=True)
    write_dataset(run, images=4, repeats=2)
    record = root / "events.jsonl"
    proc = run_sim(SD_SIM, [
        "--output_dir", str(run.output_dir), "--output_name", "lora",
        "--dataset_config", str(run.output_dir / "dataset.toml"), "--max_train_epochs", "3",
        "--save_every_n_epochs", "1", "--save_every_n_steps", "5", "--save_state",
        "--sample_every_n_steps", "4", "--sample_at_first",
        "--sample_prompts", str(run.output_dir / "sample_prompts.txt"),
        "--validation_split", "0.25", "--cache_latents_to_disk", "--cache_text_encoder_outputs",
        "--sim_step_seconds", "0", "--sim_sample_seconds", "0.1", "--record", str(record)],
        cwd=root)
    return run.output_dir, proc.stdout, events(record)


def test_steps_per_epoch_come_from_the_dataset_config(
        finished: tuple[Path, str, list[dict[str, object]]]) -> None:
    _, log, evs = finished
    (start,) = [e for e in evs if e["event"] == "start"]
    assert (start["steps_per_epoch"], start["max_train_steps"]) == (8, 24)
    assert "num batches per epoch / 1epochのバッチ数: 8" in log


def test_an_uninterrupted_run_keeps_what_upstream_keeps(
        finished: tuple[Path, str, list[dict[str, object]]]) -> None:
    out, _, evs = finished
    states = {p.name for p in out.iterdir() if p.name.endswith("-state")}
    assert states == set(upstream_kept(steps_per_epoch=8, epochs=3, output_name="lora",
                                       save_every_n_epochs=1, save_every_n_steps=5))
    assert (out / "lora.safetensors").is_file() and (out / "lora-000002.safetensors").is_file()
    saved = {Path(str(e["path"])).name: e for e in evs
             if e["event"] == "save" and e["kind"] == "state"}
    # train_state.json holds the steps done (global_step, +1 of the value set before the
    # step, train_network.py:945-948) and the epoch in progress or just ended.
    assert saved["lora-000002-state"]["train_state"] == {"current_epoch": 2, "current_step": 16}
    assert saved["lora-step00000010-state"]["train_state"] == {"current_epoch": 2,
                                                               "current_step": 10}
    # accelerate's own counter: micro-batches since the epoch began, 0 at its end.
    assert saved["lora-000002-state"]["accelerate_step"] == 0
    assert saved["lora-step00000010-state"]["accelerate_step"] == 2


def test_the_log_is_shaped_as_under_fluxgym(
        finished: tuple[Path, str, list[dict[str, object]]]) -> None:
    _, log, _ = finished
    lines = re.split(r"[\r\n]", log)
    # rich's handler at 80 columns: the upstream file and line at the right, wrapped text.
    # Each is 80 columns: time (or blank), level, message, path; one may start on the
    # line of the last bar redraw, right after the bar.
    logged = [ln for ln in log.split("\n") if re.search(r"\S+\.py:\d+$", ln)]
    layout = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d| {19}) (INFO|WARNING|ERROR) ")
    assert logged and all(layout.match(ln[-80:]) for ln in logged), \
        [ln for ln in logged if not layout.match(ln[-80:])][:3]
    assert all(len(ln) == 80 for ln in logged if "it/s" not in ln)  # no bar before it
    assert any(re.search(r"steps:.*\] +INFO ", ln) for ln in log.split("\n"))
    assert any(ln.rstrip().endswith("flux_train_utils.py:61")
               and "generating sample images at" in ln for ln in logged)
    assert "caching latents with caching" in log and "train_util.py:1120" in log
    # print()s on stdout.
    assert "\nepoch 1/3\n" in log and "saving checkpoint: " in log
    # the steps bar: tqdm redraws with \r; the nested validation bar ends with cursor-up.
    bars = [ln for ln in lines if ln.startswith("steps:")]
    assert bars and bars[-1].startswith("steps: 100%") and "24/24" in bars[-1]
    assert any(ln.startswith("validation steps") or ln.startswith("epoch validation steps")
               for ln in lines)
    assert ESC_UP in log
    # "model saved." then the bar once more at N/N (tqdm.__del__ when train() returns),
    # never closed before; and the last print() ("saving checkpoint: <final>"), written
    # before "model saved.", still sits in stdout's buffer until the process exits.
    tail = log[log.rindex("model saved."):]
    assert re.search(r"\rsteps: 100%[^\r\n]*24/24", tail), tail[-300:]
    assert "lora.safetensors" in tail and "saving checkpoint" in tail


def test_resume_without_flags_restarts_global_step_and_only_skips_epochs(
        tmp_path: Path) -> None:
    """train_network.py:1248-1275: steps_from_state // steps per epoch whole epochs, then
    global_step = 0; with --initial_epoch, the file's count is ignored (:1233-1238)."""
    record = tmp_path / "ev.jsonl"
    base = ["--output_dir", str(tmp_path / "o"), "--output_name", "x", "--max_train_epochs",
            "4", "--sim_dataset_size", "5", "--save_every_n_steps", "7", "--save_state",
            "--sim_step_seconds", "0", "--sim_sample_seconds", "0", "--record", str(record)]
    run_sim(SD_SIM, base, cwd=tmp_path)
    state = tmp_path / "o" / "x-step00000014-state"
    assert json.loads((state / "train_state.json").read_text())["current_step"] == 14
    run_sim(SD_SIM, [*base, "--resume", str(state)], cwd=tmp_path)
    run_sim(SD_SIM, [*base, "--resume", str(state), "--initial_epoch", "4"], cwd=tmp_path)
    starts = [e for e in events(record) if e["event"] == "start"]
    assert [(s["epoch_to_start"], s["global_step"]) for s in starts] == [(0, 0), (2, 0), (3, 0)]
    assert [s["steps_from_state"] for s in starts] == [None, 14, 14]


def test_diffusers_resume_latest_counts_on_from_the_folder_name(tmp_path: Path) -> None:
    """train_text_to_image.py:928-953: "latest" is the highest checkpoint-N, global_step = N;
    --checkpoints_total_limit removes the oldest before a save (:1068-1086).  The resumed
    epoch starts from its first batch (no skipping in this version), so the count reaches
    max_train_steps before the data does, and the break at :1095 ends only the inner
    loop: every epoch left takes one more step (here 13 for 12)."""
    record, out = tmp_path / "ev.jsonl", tmp_path / "o"
    base = ["--output_dir", str(out), "--max_train_steps", "12", "--checkpointing_steps", "3",
            "--checkpoints_total_limit", "2", "--train_batch_size", "4", "--sim_step_seconds",
            "0", "--record", str(record), "--once_marker", str(tmp_path / "once")]
    run_sim(DIFFUSERS_SIM, [*base, "--crash_at_step", "8"], cwd=tmp_path, expect_rc=1)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    run_sim(DIFFUSERS_SIM, [*base, "--resume_from_checkpoint", "latest"], cwd=tmp_path)
    starts = [e for e in events(record) if e["event"] == "start"]
    assert starts[1]["global_step"] == 6
    steps = [e["global_step"] for e in events(record, "step")]
    assert steps == [*range(1, 8), *range(7, 14)]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-9"]
    assert (out / "checkpoint-12" / "unet" / "config.json").is_file()

"""Trainer profiles: what each trainer needs added to a resumed command (pure, no I/O).

The sd-scripts cases are the situations train_network.py (sd3 branch, commit 48d368fa)
puts a run in; tests/e2e/test_resume_cycles.py runs them for real.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from trainguard.checkpoint import CheckpointInfo, Status
from trainguard.ledger import Resume, ResumeLedger
from trainguard.trainers import (
    ACCELERATE,
    DIFFUSERS,
    HF_TRAINER,
    INITIAL_EPOCH,
    INITIAL_STEP,
    SD_SCRIPTS,
    SD_SCRIPTS_FINETUNE,
    SKIP,
    UNKNOWN,
    at_risk,
    flag_value,
    profile_name,
    resume_edits,
)

FLUXGYM = ["accelerate", "launch", "--mixed_precision", "bf16",
           "--num_cpu_threads_per_process", "1", "sd-scripts/flux_train_network.py",
           "--output_dir", "/w/outputs/my-lora", "--output_name", "my-lora",
           "--max_train_epochs", "16", "--save_every_n_epochs", "4", "--save_state"]
OUT = Path("/w/outputs/my-lora")


def state(name: str, *, epoch: int, current_step: int, rng_step: int | None,
          scheduler_step: int | None, kind: str, mtime: float = 1000.0,
          processes: int = 1) -> CheckpointInfo:
    """What the doctor reports for an sd-scripts state (see tests/checkpoint for the doctor)."""
    step = scheduler_step if scheduler_step is not None and scheduler_step > current_step \
        else current_step
    return CheckpointInfo(
        path=OUT / name, name=name, step=step,
        step_source="scheduler.bin" if step != current_step else "train_state.json",
        epoch=epoch, status=Status.VALID, problems=(), mtime=mtime, rng_step=rng_step,
        train_state_step=current_step, numpy_module="numpy._core", final=kind == "final",
        name_kind=kind, name_step=int(name.split("-step")[1][:8]) if kind == "step" else None,
        scheduler_step=scheduler_step, processes=processes)


def flags(edits: object) -> dict[str, str | None]:
    return dict(edits.set_flags)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("words", "profile"), [
    (FLUXGYM, SD_SCRIPTS),
    (["python", "/opt/sd-scripts/train_network.py", "--output_dir", "o"], SD_SCRIPTS),
    (["accelerate", "launch", "sdxl_train_network.py"], SD_SCRIPTS),
    (["accelerate", "launch", "sd-scripts/flux_train.py"], SD_SCRIPTS_FINETUNE),
    (["accelerate", "launch", "diffusers/examples/text_to_image/train_text_to_image.py",
      "--output_dir", "o"], DIFFUSERS),
    (["accelerate", "launch", "my/train_dreambooth_flux.py", "--checkpointing_steps", "500"],
     DIFFUSERS),
    (["python", "run_clm.py", "--output_dir", "o"], HF_TRAINER),
    (["torchrun", "finetune.py", "--do_train", "--output_dir", "o"], HF_TRAINER),
    (["accelerate", "launch", "my_loop.py", "--output_dir", "o"], ACCELERATE),
    (["python", "my_loop.py", "--out", "o"], UNKNOWN),
    ([], UNKNOWN),
])
def test_profile_is_recognised_from_the_command(words: list[str], profile: str) -> None:
    assert profile_name(words) == profile


def test_accelerate_launch_flags_are_not_the_scripts() -> None:
    words = ["accelerate", "launch", "--gradient_accumulation_steps", "4", "train_network.py",
             "--output_name=x"]
    assert flag_value(words, "--gradient_accumulation_steps") is None
    assert flag_value(words, "--output_name") == "x"


def test_sd_scripts_epoch_state_gets_the_next_epoch_and_loses_user_initial_flags() -> None:
    # A state from a resumed run: its train_state.json undercounts (20 for epoch 8).
    info = state("my-lora-000008-state", epoch=8, current_step=20, rng_step=0,
                 scheduler_step=40, kind="epoch")
    words = [*FLUXGYM, "--initial_step", "7", "--skip_until_initial_step"]
    e = resume_edits(words, "--resume", info)
    assert e.profile == SD_SCRIPTS
    assert flags(e) == {"--resume": str(OUT / "my-lora-000008-state"), INITIAL_EPOCH: "9"}
    assert set(e.remove_flags) == {INITIAL_STEP, SKIP}
    assert "1248-1273" in e.note and "my-lora-000008-state" in e.note
    assert e.rewrites is None  # no step saves in this command: nothing is written again


def test_sd_scripts_mid_epoch_step_state_skips_to_its_true_step() -> None:
    info = state("my-lora-step00000045-state", epoch=5, current_step=25, rng_step=5,
                 scheduler_step=45, kind="step")
    words = [*FLUXGYM, "--save_every_n_steps", "5", "--initial_epoch", "2"]
    e = resume_edits(words, "--resume", info)
    assert flags(e) == {"--resume": str(info.path), INITIAL_STEP: "45", SKIP: None}
    assert e.remove_flags == (INITIAL_EPOCH,)
    # global_step restarts at the remainder 5 (train_network.py:1344): names above it
    # will be written again, in place.
    assert e.rewrites is not None and e.rewrites.above == 5
    names = ["my-lora-step00000005-state", "my-lora-step00000010-state",
             "my-lora-step00000045-state", "my-lora-step00000010.safetensors",
             "my-lora-step00000010-state.trainguard-kept-1", "my-lora-000004-state",
             "other-step00000010-state", "my-lora.safetensors"]
    assert at_risk(names, e) == ["my-lora-step00000010-state",
                                 "my-lora-step00000010.safetensors",
                                 "my-lora-step00000045-state"]


def test_sd_scripts_step_state_at_an_epoch_end_is_an_epoch_boundary() -> None:
    info = state("my-lora-step00000040-state", epoch=4, current_step=40, rng_step=0,
                 scheduler_step=40, kind="step")
    e = resume_edits([*FLUXGYM, "--save_every_n_steps", "10"], "--resume", info)
    assert flags(e)[INITIAL_EPOCH] == "5" and INITIAL_STEP not in flags(e)
    assert e.rewrites is not None and e.rewrites.above == 0


def test_sd_scripts_without_a_trusted_count_trusts_only_what_it_can() -> None:
    # No scheduler count: a first-run state (per the ledger) keeps train_state.json's step...
    info = state("at-step00000025-state", epoch=3, current_step=25, rng_step=5,
                 scheduler_step=None, kind="step", mtime=500.0)
    ledger = ResumeLedger((Resume(launched_at=900.0, checkpoint="at-step00000020-state"),))
    words = ["accelerate", "launch", "train_network.py", "--save_every_n_steps", "5"]
    assert flags(resume_edits(words, "--resume", info, ledger))[INITIAL_STEP] == "25"
    # ... a state written after a resume does not: the in-progress epoch is redone.
    later = replace(info, mtime=950.0)
    e = resume_edits(words, "--resume", later, ledger)
    assert flags(e) == {"--resume": str(info.path), INITIAL_EPOCH: "3"}
    assert e.rewrites is not None and e.rewrites.prefix == "at-step"  # sd-scripts' default
    # ... and without a ledger, only a first-epoch count is trusted.
    assert INITIAL_EPOCH in flags(resume_edits(words, "--resume", info))


def test_sd_scripts_gradient_accumulation_falls_back_to_the_epoch() -> None:
    info = state("x-step00000045-state", epoch=5, current_step=45, rng_step=10,
                 scheduler_step=45, kind="step")
    words = [*FLUXGYM, "--gradient_accumulation_steps", "2"]
    e = resume_edits(words, "--resume", info)
    assert flags(e)[INITIAL_EPOCH] == "5" and "gradient accumulation" in e.note


def test_sd_scripts_several_processes_use_the_step_not_the_epoch() -> None:
    info = state("x-000004-state", epoch=4, current_step=40, rng_step=0, scheduler_step=40,
                 kind="epoch", processes=2)
    e = resume_edits(FLUXGYM, "--resume", info)
    assert flags(e)[INITIAL_STEP] == "40" and INITIAL_EPOCH in e.remove_flags


def test_sd_scripts_final_state_adds_nothing_and_says_why() -> None:
    info = state("my-lora-state", epoch=16, current_step=80, rng_step=0, scheduler_step=80,
                 kind="final")
    e = resume_edits(FLUXGYM, "--resume", info)
    assert flags(e) == {"--resume": str(info.path)} and "finished" in e.note


@pytest.mark.parametrize(("words", "flag"), [
    (["accelerate", "launch", "examples/text_to_image/train_text_to_image.py"],
     "--resume_from_checkpoint"),
    (["python", "run_clm.py", "--do_train"], "--resume_from_checkpoint"),
    (["accelerate", "launch", "loop.py"], "--resume"),
    (["python", "loop.py"], "--resume"),
    (["accelerate", "launch", "sd-scripts/flux_train.py"], "--resume"),
])
def test_other_trainers_get_the_plain_resume_flag(words: list[str], flag: str) -> None:
    info = replace(state("checkpoint-500", epoch=1, current_step=500, rng_step=3,
                         scheduler_step=500, kind="checkpoint"), epoch=None)
    e = resume_edits(words, flag, info)
    assert e.set_flags == ((flag, str(info.path)),)
    assert e.remove_flags == () and e.rewrites is None
    assert e.note.startswith(f"{e.profile}: ")


def test_ledger_round_trips_and_rejects_bad_entries() -> None:
    ledger = ResumeLedger((Resume(20.0, "b", 40, 4, SD_SCRIPTS), Resume(10.0, "a")))
    assert [r.checkpoint for r in ledger.resumes] == ["a", "b"]  # oldest first, always
    assert ResumeLedger.from_json(ledger.to_json()) == ledger
    done = ledger.with_reached(57)
    assert done.latest() == Resume(20.0, "b", 40, 4, SD_SCRIPTS, reached=57)
    assert ResumeLedger.from_json(done.to_json()) == done and ResumeLedger().with_reached(3) \
        == ResumeLedger()
    assert (ledger.run_of(5.0), ledger.run_of(10.0), ledger.run_of(15.0), ledger.run_of(99.0)) \
        == (0, 1, 1, 2)
    for bad, what in [([{"checkpoint": "a"}], "launched_at"),
                      ([{"launched_at": float("nan"), "checkpoint": "a"}], "launched_at"),
                      ([{"launched_at": 1, "checkpoint": ""}], "checkpoint"),
                      ([{"launched_at": 1, "checkpoint": "a", "step": -1}], "step"),
                      (["x"], "object")]:
        with pytest.raises(ValueError, match=what):
            ResumeLedger.from_json(bad)  # type: ignore[arg-type]

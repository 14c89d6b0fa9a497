"""inspect_checkpoint on real accelerate checkpoints and a corruption corpus."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers.checkpoints import (
    make_accelerate_checkpoint,
    set_mtime,
    truncate,
    write_malicious_rng,
)

from trainguard.checkpoint import Status, inspect_checkpoint
from trainguard.checkpoint.formats import check_safetensors, check_torch_zip
from trainguard.checkpoint.rng import read_rng_state

FILES = ["model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
         "train_state.json"]


def test_whole_checkpoint_is_valid(ckpt: Path) -> None:
    info = inspect_checkpoint(ckpt)
    assert info.status is Status.VALID, info.problems
    assert (info.step, info.step_source, info.rng_step, info.train_state_step) == \
        (40, "train_state.json", 40, 40)
    assert info.numpy_module == "numpy._core"  # numpy 2.x wrote it
    assert info.path == ckpt.absolute() and info.problems == ()
    assert abs(info.mtime - os.stat(ckpt / "model.safetensors").st_mtime) < 1e-6


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "random_states_0.pkl"])
def test_required_file_missing_is_invalid_when_old_and_writing_when_fresh(
        ckpt: Path, name: str) -> None:
    (ckpt / name).unlink()
    set_mtime(ckpt, time.time() - 3600)
    old = inspect_checkpoint(ckpt)
    assert old.status is Status.INVALID
    assert any(name.split(".")[0] in p for p in old.problems), old.problems
    fresh = inspect_checkpoint(ckpt, now=time.time() - 3590, writing_fresh_seconds=60)
    assert fresh.status is Status.WRITING


def test_missing_scheduler_is_a_run_without_scheduler(ckpt: Path) -> None:
    # Decision: the RNG file is written after the scheduler, so its presence means the
    # scheduler is not "still coming"; accelerate runs without a scheduler write none.
    (ckpt / "scheduler.bin").unlink()
    assert inspect_checkpoint(ckpt).status is Status.VALID


def test_missing_train_state_falls_back_to_the_name(ckpt: Path) -> None:
    (ckpt / "train_state.json").unlink()
    info = inspect_checkpoint(ckpt)
    assert info.status is Status.VALID
    assert (info.step, info.step_source, info.train_state_step) == (40, "name", None)


@pytest.mark.parametrize("name", FILES)
def test_zero_byte_file_is_invalid(ckpt: Path, name: str) -> None:
    truncate(ckpt / name, 0)
    set_mtime(ckpt, time.time() - 3600)
    info = inspect_checkpoint(ckpt)
    assert info.status is Status.INVALID
    assert any(name in p and "empty" in p for p in info.problems), info.problems


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "scheduler.bin",
                                  "random_states_0.pkl"])
@pytest.mark.parametrize("where", ["4", "12", "half", "last-byte"])
def test_truncated_file_is_invalid(ckpt: Path, name: str, where: str) -> None:
    size = (ckpt / name).stat().st_size
    cut = {"4": 4, "12": 12, "half": size // 2, "last-byte": size - 1}[where]
    truncate(ckpt / name, cut)
    set_mtime(ckpt, time.time() - 3600)
    info = inspect_checkpoint(ckpt)
    assert info.status is Status.INVALID
    assert any(name in p for p in info.problems), info.problems


def test_fresh_truncation_looks_like_a_save_in_progress(ckpt: Path) -> None:
    truncate(ckpt / "optimizer.bin", 100)
    assert inspect_checkpoint(ckpt).status is Status.WRITING


def test_trailing_garbage_after_safetensors_is_invalid(ckpt: Path) -> None:
    with open(ckpt / "model.safetensors", "ab") as f:
        f.write(b"\0" * 10)
    assert "trailing" in (check_safetensors(ckpt / "model.safetensors") or "")


def test_format_checks_accept_real_files(ckpt: Path) -> None:
    assert check_safetensors(ckpt / "model.safetensors") is None
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        assert check_torch_zip(ckpt / name) is None


@pytest.mark.parametrize(("module", "name", "code"), [
    ("os", "system", "touch {m}"),
    ("posix", "system", "touch {m}"),
    ("builtins", "exec", "open({m!r}, 'w').close()"),
    ("subprocess", "getoutput", "touch {m}"),
])
def test_pickle_that_would_run_code_is_invalid_and_never_runs(
        ckpt: Path, tmp_path: Path, module: str, name: str, code: str) -> None:
    marker = tmp_path / "pwned"
    write_malicious_rng(ckpt / "random_states_0.pkl", module, name, code.format(m=str(marker)))
    info = inspect_checkpoint(ckpt)
    assert not marker.exists()
    assert info.status is Status.INVALID
    assert any(f"{module}.{name}" in p for p in info.problems), info.problems


def test_restricted_reader_really_would_have_been_dangerous(ckpt: Path, tmp_path: Path) -> None:
    # The payload is live: plain pickle would run it.  Proves the test above can fail.
    import pickle

    from helpers.checkpoints import malicious_pickle
    marker = tmp_path / "proof"
    pickle.loads(malicious_pickle("os", "system", f"touch {marker}"))
    assert marker.exists()


def test_numpy_1x_names_are_recorded(tmp_path: Path) -> None:
    c = make_accelerate_checkpoint(tmp_path / "checkpoint-5", 5, numpy_module="numpy.core")
    info = inspect_checkpoint(c)
    assert info.status is Status.VALID
    assert info.numpy_module == "numpy.core"
    assert read_rng_state(c / "random_states_0.pkl").step == 5


def test_seed_000_step_zero_against_360_is_whole_and_valid(tmp_path: Path) -> None:
    # Every sd-scripts epoch-end state looks like this: sd-scripts never sets
    # accelerator.step and accelerate returns it to 0 at each epoch end.  The files are
    # whole; whether an environment loads them is the verdict's question (test_compat).
    c = make_accelerate_checkpoint(tmp_path / "kristy-000030-state", 360, rng_step=0, epoch=30)
    info = inspect_checkpoint(c)
    assert info.status is Status.VALID and info.problems == ()
    assert (info.step, info.rng_step, info.epoch) == (360, 0, 30)


def test_gradient_accumulation_counter_is_not_a_defect(tmp_path: Path) -> None:
    # accelerate's step counts micro-batches: 4 per optimizer step here.
    c = make_accelerate_checkpoint(tmp_path / "checkpoint-100", 100, rng_step=400)
    assert inspect_checkpoint(c).status is Status.VALID


def test_damaged_train_state_is_invalid(ckpt: Path) -> None:
    (ckpt / "train_state.json").write_text('{"current_step": "many"}')
    set_mtime(ckpt, time.time() - 3600)
    info = inspect_checkpoint(ckpt)
    assert info.status is Status.INVALID
    assert any("current_step" in p for p in info.problems)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        inspect_checkpoint(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        inspect_checkpoint(tmp_path / "f")


def test_twenty_gigabyte_model_is_checked_from_its_header(ckpt: Path) -> None:
    from helpers.checkpoints import make_sparse_safetensors
    make_sparse_safetensors(ckpt / "model.safetensors", 20 << 30)
    assert inspect_checkpoint(ckpt).status is Status.VALID
    truncate(ckpt / "model.safetensors", (20 << 30) - 1)
    set_mtime(ckpt, time.time() - 3600)
    assert inspect_checkpoint(ckpt).status is Status.INVALID


LONG_AGO = time.time() - 3600.0  # a dead save: incomplete means invalid, not writing


# diffusers' LoRA scripts register a save hook that pops every model from accelerate's
# list and writes its own file, so the state folder has no model.safetensors at all;
# save_pretrained-style hooks write sub-folders instead.  Same bytes, other places.
@pytest.mark.parametrize("place", ["pytorch_lora_weights.safetensors",
                                   "unet/diffusion_pytorch_model.safetensors"])
def test_weights_written_by_a_save_hook_count(ckpt: Path, place: str) -> None:
    target = ckpt / place
    target.parent.mkdir(exist_ok=True)
    (ckpt / "model.safetensors").rename(target)
    info = inspect_checkpoint(ckpt)
    assert info.status is Status.VALID, info.problems

    truncate(target, target.stat().st_size - 1)
    set_mtime(ckpt, LONG_AGO)
    info = inspect_checkpoint(ckpt)
    assert info.status is Status.INVALID
    assert any(target.name in p for p in info.problems), info.problems


def test_no_weights_anywhere_is_incomplete(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    (ckpt / "notes").mkdir()
    (ckpt / "notes" / "readme.txt").write_text("not weights")
    set_mtime(ckpt, LONG_AGO)
    info = inspect_checkpoint(ckpt)
    assert info.status is Status.INVALID
    assert any("no model weights" in p for p in info.problems)


@pytest.mark.parametrize("layout", ["fsdp", "deepspeed"])
def test_sharded_model_and_optimizer_layouts_are_whole(ckpt: Path, layout: str) -> None:
    """FSDP SHARDED_STATE_DICT and DeepSpeed write folders where accelerate's plain save
    writes model.safetensors and optimizer.bin; the RNG file still closes the save."""
    (ckpt / "model.safetensors").unlink()
    optimizer = (ckpt / "optimizer.bin").read_bytes()  # a real torch zip, as shards are
    (ckpt / "optimizer.bin").unlink()
    if layout == "fsdp":
        (ckpt / "pytorch_model_fsdp_0").mkdir()
        (ckpt / "pytorch_model_fsdp_0" / "__0_0.distcp").write_bytes(b"shard")
        (ckpt / "optimizer_0").mkdir()
        (ckpt / "optimizer_0" / "__0_0.distcp").write_bytes(b"shard")
    else:
        (ckpt / "pytorch_model").mkdir()
        (ckpt / "pytorch_model" / "mp_rank_00_model_states.pt").write_bytes(optimizer)
        (ckpt / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(
            optimizer)
    set_mtime(ckpt, LONG_AGO)
    info = inspect_checkpoint(ckpt)
    assert info.status is Status.VALID, info.problems

    # Without the optimizer shards the state cannot resume training.
    for shard in ckpt.glob("*/*"):
        if "optim" in str(shard.relative_to(ckpt)):
            shard.unlink()
    set_mtime(ckpt, LONG_AGO)
    assert inspect_checkpoint(ckpt).status is Status.INVALID

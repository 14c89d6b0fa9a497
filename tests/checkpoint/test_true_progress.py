"""The doctor on folders real trainers leave behind: order by true progress, and every
weights file counts, sub-folders included.

The folders come from the faithful simulators (tests/fixtures/sd_scripts_sim.py,
tests/fixtures/diffusers_sim.py) doing what upstream does, resumes included; the truth
to compare with is the simulator's own record of which position each save held.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from helpers.checkpoints import set_mtime, truncate
from helpers.sdscripts import DIFFUSERS_SIM, SD_SIM, events, replay_states, run_sim

from trainguard.checkpoint import Status, inspect_checkpoint, latest_usable, list_checkpoints
from trainguard.ledger import Resume, ResumeLedger

pytestmark = pytest.mark.slow

COMMON = ["--output_name", "L", "--max_train_epochs", "8", "--sim_dataset_size", "10",
          "--sim_step_seconds", "0", "--sim_sample_seconds", "0", "--save_state", "--seed", "1"]


def _lineage(root: Path, save: list[str], crashes: list[int],
             resumes: list[list[str]]) -> tuple[Path, Path]:
    """A run that crashes, then resumes as a user (or trainguard) would, crash after crash."""
    out, record = root / "out", root / "events.jsonl"
    base = ["--output_dir", str(out), *COMMON, *save, "--record", str(record),
            "--once_marker", str(root / "once")]
    for c in crashes:
        base += ["--crash_at_step", str(c)]
    run_sim(SD_SIM, base, cwd=root, expect_rc=1)
    for extra in resumes:
        run_sim(SD_SIM, [*base, *extra], cwd=root, expect_rc=None)
    return out, record


@pytest.fixture(scope="module")
def epoch_states(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """8 epochs of 10 steps, a state every 2 epochs.  It crashes at step 45 and is resumed
    from its epoch-4 state as upstream resumes (--resume alone): global_step restarts at 0,
    so the epoch-6 state it writes says current_step 20, below epoch 4's 40."""
    root = tmp_path_factory.mktemp("epochs")
    out, record = _lineage(root, ["--save_every_n_epochs", "2"], [45, 65],
                           [["--resume", str(root / "out" / "L-000004-state")]])
    return out, record


@pytest.fixture(scope="module")
def step_states(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A state every 5 steps.  It crashes at 27 and is resumed from step 25 with
    --initial_step 25 --skip_until_initial_step: global_step restarts at 5, the
    within-epoch remainder (train_network.py:1344), so steps 30, 35 and 40 are saved into
    the folders named step 10, 15 and 20, in place; the original step-25 folder stays."""
    root = tmp_path_factory.mktemp("steps")
    out, record = _lineage(root, ["--save_every_n_steps", "5"], [27, 43],
                           [["--resume", str(root / "out" / "L-step00000025-state"),
                             "--initial_step", "25", "--skip_until_initial_step"]])
    return out, record


def test_the_simulated_lineages_are_what_upstream_leaves(
        epoch_states: tuple[Path, Path], step_states: tuple[Path, Path]) -> None:
    book = replay_states(events(epoch_states[1]))
    assert book.positions == {"L-000002-state": 20, "L-000004-state": 40, "L-000006-state": 60}
    saved = {e["path"].rsplit("/", 1)[1]: e["train_state"]
             for e in events(epoch_states[1], "save") if e["kind"] == "state"}
    assert saved["L-000006-state"] == {"current_epoch": 6, "current_step": 20}
    book = replay_states(events(step_states[1]))
    assert book.positions == {"L-step00000005-state": 5, "L-step00000010-state": 30,
                              "L-step00000015-state": 35, "L-step00000020-state": 40,
                              "L-step00000025-state": 25}
    assert sorted(book.overwritten) == ["L-step00000010-state", "L-step00000015-state",
                                        "L-step00000020-state"]


@pytest.mark.parametrize("scheduler", ["with scheduler.bin", "without scheduler.bin"])
@pytest.mark.parametrize("lineage", ["epoch_states", "step_states"])
def test_order_is_true_progress(lineage: str, scheduler: str, request: pytest.FixtureRequest,
                                tmp_path: Path) -> None:
    out, record = request.getfixturevalue(lineage)
    if scheduler == "without scheduler.bin":
        # Without the scheduler's count the epoch, accelerate's in-epoch counter and the
        # end-of-epoch mark must carry the order on their own.
        copy = tmp_path / "out"
        shutil.copytree(out, copy)
        for f in copy.glob("*/scheduler.bin"):
            f.unlink()
        out = copy
    truth = replay_states(events(record)).positions
    infos = list_checkpoints(out)
    assert all(i.status is Status.VALID for i in infos), [(i.name, i.problems) for i in infos]
    assert [i.name for i in infos] == sorted(truth, key=truth.__getitem__, reverse=True)
    best = latest_usable(out)
    assert best is not None and truth[best.name] == max(truth.values())


def test_step_is_the_true_cumulative_step_after_a_resume(
        epoch_states: tuple[Path, Path], step_states: tuple[Path, Path]) -> None:
    """The scheduler's count rides along in every state (restored on resume), so the step
    reported for a resumed run's state is how far training got, not the new run's count."""
    for out, record in (epoch_states, step_states):
        truth = replay_states(events(record)).positions
        for info in list_checkpoints(out):
            assert info.step == truth[info.name], info
            assert info.train_state_step is not None and info.train_state_step <= info.step


def test_epoch_end_states_with_rng_step_zero_are_valid_as_they_are(
        epoch_states: tuple[Path, Path]) -> None:
    for info in list_checkpoints(epoch_states[0]):
        assert info.rng_step == 0 and info.status is Status.VALID and info.problems == ()


def test_a_ledger_orders_what_nothing_else_can(step_states: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    """Strip every clue but the trainer's own restarting count (no train_state epoch, no
    scheduler, no RNG file order): the ledger of trainguard's resumes still tells which run
    wrote what, and a later run started from the newest usable state."""
    out, record = step_states
    evs = events(record)
    truth = replay_states(evs).positions
    resumed_at = next(e["time"] for e in evs if e["event"] == "start" and e["resume"])
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for f in copy.glob("*/scheduler.bin"):
        f.unlink()
    for f in copy.glob("*/train_state.json"):  # the files keep their mtimes (copytree)
        f.unlink()
    ledger = ResumeLedger((Resume(resumed_at, "L-step00000025-state", 25),))
    with_ledger = [i.name for i in list_checkpoints(copy, ledger=ledger)]
    assert with_ledger == sorted(truth, key=truth.__getitem__, reverse=True)
    without = [i.name for i in list_checkpoints(copy)]
    assert without[0] == "L-step00000025-state"  # by name alone: wrong, and why a ledger


# ---------------------------------------------------------------------------------------
# diffusers: the model sharded inside transformer/


@pytest.fixture(scope="module")
def diffusers_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("diffusers")
    out = root / "out"
    run_sim(DIFFUSERS_SIM, ["--output_dir", str(out), "--max_train_steps", "10",
                            "--checkpointing_steps", "5", "--train_batch_size", "4",
                            "--sim_step_seconds", "0", "--sim_model_folder", "transformer",
                            "--sim_max_shard_size", "2KB"], cwd=root)
    return out


@pytest.fixture
def sharded(diffusers_out: Path, tmp_path: Path) -> Path:
    ckpt = tmp_path / "checkpoint-5"
    shutil.copytree(diffusers_out / "checkpoint-5", ckpt)
    assert len(list((ckpt / "transformer").glob("*-of-*.safetensors"))) >= 2
    assert not (ckpt / "model.safetensors").exists()
    set_mtime(ckpt, time.time() - 3600)
    return ckpt


def test_diffusers_checkpoint_with_a_sharded_subfolder_is_valid(sharded: Path) -> None:
    info = inspect_checkpoint(sharded)
    assert info.status is Status.VALID, info.problems
    assert (info.step, info.step_source) == (5, "name")


@pytest.mark.parametrize("damage", ["missing shard", "cut index", "cut shard"])
def test_damaged_subfolder_shards_make_it_invalid(sharded: Path, damage: str) -> None:
    shard = sorted((sharded / "transformer").glob("*-of-*.safetensors"))[1]
    index = sharded / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    if damage == "missing shard":
        shard.unlink()
    elif damage == "cut index":
        truncate(index, index.stat().st_size // 2)
    else:
        truncate(shard, shard.stat().st_size - 1)
    set_mtime(sharded, time.time() - 3600)
    info = inspect_checkpoint(sharded)
    assert info.status is Status.INVALID
    assert any("transformer/" in p for p in info.problems), info.problems


def test_subfolder_weights_are_checked_beside_top_level_weights(sharded: Path) -> None:
    """Two models in one state: accelerate's own model.safetensors and a save_pretrained
    sub-folder (a hook that saves one model and leaves the other to accelerate)."""
    (sharded / "model.safetensors").write_bytes(
        (sharded / "transformer" / "diffusion_pytorch_model-00001-of-00003.safetensors")
        .read_bytes())
    shard = sorted((sharded / "transformer").glob("*-of-*.safetensors"))[2]
    truncate(shard, shard.stat().st_size - 1)
    set_mtime(sharded, time.time() - 3600)
    assert inspect_checkpoint(sharded).status is Status.INVALID


def test_a_save_writing_its_subfolder_first_is_in_progress(sharded: Path) -> None:
    """The example's save hook writes transformer/ before accelerate writes anything at the
    top (accelerate's save_state: pre-hooks first): minutes for a FLUX transformer."""
    for f in sharded.iterdir():
        if f.is_file():
            f.unlink()
    set_mtime(sharded, time.time())
    info = inspect_checkpoint(sharded)
    assert info.status is Status.WRITING, info.problems

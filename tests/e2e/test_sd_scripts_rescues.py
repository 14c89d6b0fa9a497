"""Issue 11 end to end: rescue after rescue, a real sd-scripts run ends where an
uninterrupted run ends.

The real stack (exporter, Prometheus with deploy/'s rules, Alertmanager with deploy/'s
routes, remediator) watches two FluxGym-shaped runs of the faithful sd-scripts simulator
(tests/fixtures/sd_scripts_sim.py: upstream's resume arithmetic, state names, hooks and
log), started as FluxGym starts them, each hanging three times at different points, each
on its own fake-NVML GPU.  One saves epoch-named states, the other step-named ones.

Real sd-scripts restarts its step count on ``--resume`` (train_network.py:1258-1275), so
after the first rescue the newest state records a smaller ``current_step`` than older
ones, and a step-named run writes its state folders again under old names.  Each rescue
must still start from the newest state by true progress, the optimizer steps taken must
stay within one epoch of an uninterrupted run's, every state an uninterrupted run keeps
must exist at the end (kept aside, never written over), the finished run must be left
alone, and ``train.sh`` must be byte-identical.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers.fakenvml import FakeGPUs, env_for
from helpers.sdscripts import events, optimizer_steps, upstream_kept

from demo.fluxgym import FluxGymRun, make_run, start_run
from demo.stack import FAST_TUNABLES, REPO, Stack
from trainguard.checkpoint import inspect_checkpoint
from trainguard.checkpoint.names import parse_name

pytestmark = pytest.mark.slow

IMAGES, EPOCHS = 10, 8  # 10 steps an epoch, 80 steps
TOTAL = IMAGES * EPOCHS
TUNABLES = {**FAST_TUNABLES, "startup_grace_seconds": 10, "stall_seconds": 15,
            "gpu_idle_seconds": 6, "gpu_spin_seconds": 8, "process_down_seconds": 4}


@dataclass
class Case:
    name: str
    save: list[str]
    hangs: list[int]       # true steps (each a few after a save)
    run: FluxGymRun | None = None
    script_sha: str = ""
    finished_at: float = 0.0
    kept: dict[str, int] = field(default_factory=dict)


CASES = [Case("lora-epoch", ["--save_every_n_epochs", "2"], [23, 45, 64]),
         Case("lora-step", ["--save_every_n_steps", "5"], [27, 48, 66])]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def rescued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[Case]]]:
    workdir = tmp_path_factory.mktemp("sd")
    gpus = FakeGPUs(workdir / "fake-gpus")
    gpus.add(len(CASES))
    env = env_for(gpus.root)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    env.pop("PYTHONUNBUFFERED", None)  # FluxGym sets none
    jobs = []
    for index, case in enumerate(CASES):
        case.run = make_run(workdir / "fluxgym", case.name, images=IMAGES, flags=[
            "--max_train_epochs", str(EPOCHS), *case.save, "--sim_step_seconds", "0.2",
            "--sim_sample_seconds", "0", "--once_marker", str(workdir / f"{case.name}.once"),
            "--fake_gpu", str(gpus.path(index)),
            *[w for h in case.hangs for w in ("--hang_at_step", str(h))]])
        case.script_sha = sha(case.run.script)
        jobs.append({"name": case.name, "output_dir": str(case.run.output_dir),
                     "launch": {"script": str(case.run.script), "workdir": str(case.run.root)},
                     "log_file": str(case.run.log)})
    stack = Stack.prepare(workdir, jobs, exporter={"writing_fresh_seconds": 6},
                          remediator={"kill_grace_seconds": 3, "verify_alive_seconds": 2,
                                      "gpu_release_timeout_seconds": 5,
                                      "restart_budget": {"max_restarts": 5,
                                                         "window_seconds": 3600,
                                                         "backoff_seconds": 0}})
    try:
        stack.start(env=env, tunables=TUNABLES)
        for case in CASES:
            assert case.run is not None
            start_run(case.run, env)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            for case in CASES:
                assert case.run is not None
                if not case.finished_at and events(case.run.record, "finish"):
                    case.finished_at = time.time()
            if all(c.finished_at for c in CASES):
                break
            time.sleep(1)
        # Let the finished runs sit under the rules: nothing may touch them.
        time.sleep(TUNABLES["process_down_seconds"] + TUNABLES["stall_seconds"] + 5)
        yield stack, CASES
    finally:
        stack.stop()
        print(f"--- remediator log tail ---\n{stack.log_tail('remediator', 6000)}")


def positions_on_disk(run: FluxGymRun) -> dict[str, int | None]:
    """Every state folder now (kept-aside ones too) and the true step it holds."""
    out: dict[str, int | None] = {}
    for p in run.output_dir.iterdir():
        if p.is_dir() and parse_name(p.name) is not None:
            out[p.name] = inspect_checkpoint(p).step
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_three_rescues_each_from_the_newest_state_end_where_an_uninterrupted_run_ends(
        rescued: tuple[Stack, list[Case]], case: Case) -> None:
    assert case.run is not None
    evs = events(case.run.record)
    assert case.finished_at, f"{case.name} did not finish: {evs[-3:]}"
    hangs = [e for e in evs if e["event"] == "hang"]
    starts = [e for e in evs if e["event"] == "start"]
    assert [h["step"] for h in hangs] == case.hangs
    assert len(starts) == 4 and starts[0]["resume"] is None, starts
    for hang, start in zip(hangs, starts[1:], strict=True):
        assert start["resume"], f"restarted without a state: {start}"
        before = [e for e in evs if e["event"] == "save" and e.get("kind") == "state"
                  and e["time"] < hang["time"]]
        newest = max(e["position"] for e in before)
        assert start["step"] == newest, (f"resumed at {start['step']} from {start['resume']}, "
                                         f"the newest state held {newest}")
    lost = sum(h["step"] - 1 - s["step"] for h, s in zip(hangs, starts[1:], strict=True))
    taken = optimizer_steps(evs)
    assert taken == TOTAL + lost, (taken, lost)
    assert taken - TOTAL <= IMAGES, f"{taken} steps for {TOTAL}: more than one epoch over"
    print(f"\n{case.name}: {taken} optimizer steps for {TOTAL} (work lost since the "
          f"last saves: {lost})")
    # Every state an uninterrupted run keeps is on disk, by the step it holds.
    save = case.save
    kept = upstream_kept(steps_per_epoch=IMAGES, epochs=EPOCHS, output_name=case.name,
                         save_every_n_epochs=int(save[1]) if "epochs" in save[0] else None,
                         save_every_n_steps=int(save[1]) if "steps" in save[0] else None)
    held = set(positions_on_disk(case.run).values())
    assert set(kept.values()) <= held, (sorted(kept.values()), sorted(h for h in held if h))
    assert sha(case.run.script) == case.script_sha, "the user's train.sh was modified"


def test_the_finished_runs_are_left_alone(rescued: tuple[Stack, list[Case]]) -> None:
    stack, cases = rescued
    incidents: list[dict[str, Any]] = stack.get_json(
        "remediator", "/api/incidents?limit=1000", token=True)["incidents"]
    for case in cases:
        assert case.run is not None
        late = [i for i in incidents if i["job"] == case.name
                and i["created"] > case.finished_at and i["outcome"] in ("resumed",
                                                                         "restarted")]
        assert not late, late
        assert len(events(case.run.record, "start")) == 4
        assert len(events(case.run.record, "finish")) == 1

"""End to end: the real stack rescues real runs, and leaves a finished run alone.

One stack (exporter, Prometheus with deploy/'s rules and a shortened tunables override,
Alertmanager with deploy/'s routes, remediator) watches five FluxGym-shaped jobs at
once, each a real accelerate run of the tiny trainer started by ``bash
outputs/<job>/train.sh`` from a FluxGym root, each on its own fake-NVML GPU:

* ``hang-idle``  hangs at step 12 with its GPU idle          -> TrainingGPUIdle / Stalled
* ``hang-spin``  hangs at step 12, GPU 100 % at idle power   -> TrainingStalled
* ``crash``      exits 1 at step 12                          -> TrainingProcessDown
* ``half-save``  dies half-way through saving step 20        -> resumes from 10, not 20
* ``completes``  finishes normally                           -> nothing happens

Each assertion is what the user would check: the run resumed from the right step and
finished, no checkpoint was deleted, the user's train.sh is byte-for-byte unchanged, and
the finished run was never touched.  The time from each hang to the resumed process and
to its first new step is printed next to the configured detection time.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.fakenvml import FakeGPUs, env_for

from demo.fluxgym import TINY_TRAIN, FluxGymRun, make_run, start_run
from demo.narrate import scrape
from demo.stack import FAST_TUNABLES, REPO, Stack, detection_seconds

pytestmark = pytest.mark.slow

STEPS = 30
E2E_TUNABLES = {**FAST_TUNABLES, "startup_grace_seconds": 10, "stall_seconds": 15,
                "gpu_idle_seconds": 8, "gpu_spin_seconds": 8, "process_down_seconds": 4}
WRITING_FRESH_SECONDS = 6


def configured_detection(name: str) -> float:
    """What the configuration alone makes the user wait before an alert reaches us."""
    t = E2E_TUNABLES
    base = {"hang-idle": t["gpu_idle_seconds"],
            "hang-spin": min(t["gpu_spin_seconds"], t["stall_seconds"]),
            "crash": t["process_down_seconds"],
            # the half-save first counts as a save in progress, then the GPU is idle
            "half-save": WRITING_FRESH_SECONDS + t["gpu_idle_seconds"]}[name]
    return detection_seconds(base)


# (scenario, configured detection, failure -> resumed process, failure -> first new step),
# printed by tests/e2e/conftest.py at the end of the run: a benchmark, never asserted.
TIMINGS: list[tuple[str, float, float, float]] = []


@dataclass
class Scenario:
    name: str
    flags: list[str]
    expect_resume_from: int | None  # None: must never be remediated
    run: FluxGymRun | None = None
    script_sha: str = ""
    states_before: frozenset[str] = frozenset()


SCENARIOS = [
    Scenario("hang-idle", ["--hang_at_step", "12", "--hang_mode", "idle"], 10),
    Scenario("hang-spin", ["--hang_at_step", "12", "--hang_mode", "spin"], 10),
    Scenario("crash", ["--crash_at_step", "12"], 10),
    Scenario("half-save", ["--die_during_save_at_step", "20"], 10),
    Scenario("completes", [], None),
]


def events(run: FluxGymRun) -> list[dict[str, Any]]:
    if not run.record.exists():
        return []
    return [json.loads(line) for line in run.record.read_text().splitlines() if line]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_dirs(run: FluxGymRun) -> frozenset[str]:
    return frozenset(p.name for p in run.output_dir.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def rescued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[Scenario]]]:
    workdir = tmp_path_factory.mktemp("e2e")
    gpus = FakeGPUs(workdir / "fake-gpus")
    gpus.add(len(SCENARIOS))
    env = env_for(gpus.root)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    jobs = []
    for index, sc in enumerate(SCENARIOS):
        # The idealised tiny trainer until this test moves to the new pipeline and the
        # faithful simulator (issue 11's e2e; tests/e2e/test_resume_cycles.py shows why).
        sc.run = make_run(workdir / "fluxgym", sc.name, trainer=TINY_TRAIN, flags=[
            "--max_train_steps", str(STEPS), "--save_every_n_steps", "10",
            "--step_seconds", "0.2", "--once_marker", str(workdir / f"{sc.name}.once"),
            "--fake_gpu", str(gpus.path(index)), *sc.flags])
        sc.script_sha = sha(sc.run.script)
        jobs.append({"name": sc.name, "output_dir": str(sc.run.output_dir),
                     "launch": {"script": str(sc.run.script), "workdir": str(sc.run.root)},
                     "log_file": str(sc.run.log),
                     "startup_grace_seconds": E2E_TUNABLES["startup_grace_seconds"]})
    stack = Stack.prepare(workdir, jobs,
                          exporter={"writing_fresh_seconds": WRITING_FRESH_SECONDS},
                          remediator={"kill_grace_seconds": 3, "verify_alive_seconds": 2,
                                      "gpu_release_timeout_seconds": 5})
    try:
        stack.start(env=env, tunables=E2E_TUNABLES)
        for sc in SCENARIOS:
            assert sc.run is not None
            start_run(sc.run, env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for sc in SCENARIOS:
                assert sc.run is not None
                if not sc.states_before and any(e["event"] in ("hang", "crash", "half_save")
                                                for e in events(sc.run)):
                    sc.states_before = state_dirs(sc.run)
            if all(any(e["event"] == "finish" for e in events(sc.run or SCENARIOS[0].run))
                   for sc in SCENARIOS):
                break
            time.sleep(1)
        # Let the finished run sit under the rules for a while: nothing may touch it.
        time.sleep(max(E2E_TUNABLES["process_down_seconds"], 5) + 3)
        yield stack, SCENARIOS
    finally:
        stack.stop()
        for name in ("remediator", "exporter"):
            print(f"--- {name} log tail ---\n{stack.log_tail(name, 4000)}")


@pytest.mark.parametrize("sc", [s for s in SCENARIOS if s.expect_resume_from is not None],
                         ids=lambda s: s.name)
def test_run_is_rescued_from_the_right_checkpoint(rescued: tuple[Stack, list[Scenario]],
                                                  sc: Scenario) -> None:
    _, _ = rescued
    assert sc.run is not None
    evs = events(sc.run)
    starts = [e for e in evs if e["event"] == "start"]
    assert len(starts) == 2, f"{sc.name}: expected one start and one resume, got {starts}"
    resumed = starts[1]
    assert resumed["resume"] is not None, f"{sc.name}: restarted without --resume"
    assert Path(resumed["resume"]).parent == sc.run.output_dir
    assert resumed["step"] == sc.expect_resume_from, f"{sc.name}: resumed at {resumed}"
    assert any(e["event"] == "finish" and e["step"] == STEPS for e in evs), \
        f"{sc.name}: the resumed run did not finish: {evs[-3:]}"
    assert sha(sc.run.script) == sc.script_sha, "the user's train.sh was modified"
    assert sc.states_before, "the failure was never observed"
    assert sc.states_before <= state_dirs(sc.run), "a checkpoint folder disappeared"

    fail = next(e for e in evs if e["event"] in ("hang", "crash", "half_save"))
    first = next(e for e in evs if e["event"] == "first_step" and e["time"] > resumed["time"])
    TIMINGS.append((sc.name, configured_detection(sc.name), resumed["time"] - fail["time"],
                    first["time"] - fail["time"]))


def test_completed_run_is_left_alone(rescued: tuple[Stack, list[Scenario]]) -> None:
    stack, scenarios = rescued
    sc = next(s for s in scenarios if s.expect_resume_from is None)
    assert sc.run is not None
    evs = events(sc.run)
    assert [e["event"] for e in evs if e["event"] in ("start", "finish")] == ["start", "finish"]
    assert sha(sc.run.script) == sc.script_sha
    samples = scrape(stack)
    assert samples[("trainguard_job_completed", (("training_job", sc.name),))] == 1
    remediator_metrics = stack.get("remediator", "/metrics").decode()
    acted = [line for line in remediator_metrics.splitlines()
             if line.startswith("trainguard_remediations_total{")
             and f'training_job="{sc.name}"' in line and not line.endswith(" 0.0")]
    assert not acted, f"the completed run was remediated: {acted}"


def test_each_incident_acted_on_once(rescued: tuple[Stack, list[Scenario]]) -> None:
    """Alertmanager repeats and Prometheus keeps firing: still one resume per failure."""
    _, scenarios = rescued
    for sc in scenarios:
        assert sc.run is not None
        starts = [e for e in events(sc.run) if e["event"] == "start"]
        expected = 1 if sc.expect_resume_from is None else 2
        assert len(starts) == expected, f"{sc.name}: {len(starts)} starts"


def test_the_demos_where_to_look_pages_answer_while_its_stack_runs(
        rescued: tuple[Stack, list[Scenario]]) -> None:
    """No link that goes nowhere: Debian's Prometheus 2.42 has only its classic pages and
    Debian's Alertmanager no web UI; and the demo says when the pages go away."""
    from demo.__main__ import where_to_look

    stack, _ = rescued
    pages = stack.where_to_look()
    assert {what for what, _ in pages} >= {"remediator status page", "Prometheus alerts"}
    for what, url in pages:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200, (what, url)
    for stays_up, when in ((True, "until you press Enter"), (False, "only until the demo exits")):
        lines = where_to_look(stack, stays_up)
        assert when in lines[0] and "stops" in lines[0]
        assert all(any(url in line for line in lines) for _, url in pages)

"""Alert to resumed run, end to end: real hung trainers, real HTTP, real kills.

Each run is the tiny accelerate trainer started as FluxGym does (``bash
outputs/<name>/train.sh`` from the FluxGym root, ``accelerate launch`` inside), hanging
or crashing on cue.  The trainer's ``--record`` file says what really happened: which
checkpoint a resumed run loaded and which step it started from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.common import REPO, wait_for
from helpers.remediator import (
    VENV_BIN,
    Run,
    alive_pids,
    job_tree_pids,
    kill_tree,
    make_run,
    metric_value,
    payload,
    pids_of,
    process_server,
    thread_server,
    write_config,
)

from remediator.actions.script import resumed_copy_path

pytestmark = pytest.mark.slow
TRAINGUARD = str(Path(sys.executable).parent / "trainguard")


def start_hung(run: Run) -> tuple[subprocess.Popen[bytes], set[int]]:
    proc = run.start()
    wait_for(lambda: run.events("hang"), timeout=90, what=f"{run.name} to hang")
    pids = pids_of(proc)
    assert pids and job_tree_pids(run) == pids
    return proc, pids


def resumed_starts(run: Run) -> list[dict[str, object]]:
    return [e for e in run.events("start") if e.get("resume")]


def cleanup(*runs: Run) -> None:
    for run in runs:
        kill_tree(job_tree_pids(run))


def test_one_alert_delivered_50_times_across_a_restart_resumes_once(tmp_path: Path) -> None:
    run = make_run(tmp_path, "my-lora", steps=40, extra=("--hang_at_step 25",))
    script_hash = run.script_hash()
    proc, hung_pids = start_hung(run)
    config = write_config(tmp_path, [run])
    body = payload(run.name)
    # The same hang also trips a second rule a moment later: a different incident that
    # must find the job already handled.
    other = payload(run.name, alertname="TrainingGPUIdle", starts=time.time())
    log = tmp_path / "remediator.log"
    try:
        with process_server(config, log) as client:
            codes = []

            def deliver(n: int) -> None:
                for _ in range(n):
                    codes.append(client.post_alert(body).status_code)

            threads = [threading.Thread(target=deliver, args=(5,)) for _ in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # stop the remediator while it is (probably) mid-remediation
        with process_server(config, log) as client:
            for _ in range(25):
                codes.append(client.post_alert(body).status_code)
            codes.append(client.post_alert(other).status_code)
            assert codes == [202] * 51
            wait_for(lambda: run.events("finish"), timeout=120, what="the resumed run to finish")
            incidents = client.settled(run.name, n=2)
            text = client.metrics()
        assert alive_pids(hung_pids) == set()
        starts = resumed_starts(run)
        assert len(starts) == 1, run.records()
        want = run.output_dir / f"{run.name}-step00000020-state"
        assert starts[0]["resume"] == str(want) and starts[0]["step"] == 20
        assert run.script_hash() == script_hash
        copy = resumed_copy_path(run.script)
        assert f"--resume {want}" in copy.read_text()
        stalled = [i for i in incidents if i["alertname"] == "TrainingStalled"]
        assert len(stalled) == 1 and stalled[0]["deliveries"] == 50
        resumes = [a for i in incidents for a in i["actions"] if a["action"] == "resume"]
        assert len(resumes) == 1
        idle = next(i for i in incidents if i["alertname"] == "TrainingGPUIdle")
        assert idle["state"] == "skipped"
        killed = {p["pid"] for p in stalled[0]["evidence"]["processes"]}
        assert killed == hung_pids
        assert metric_value(text, "trainguard_remediations_total", training_job=run.name,
                            action="resume", outcome="started") == 1
        assert metric_value(text, "trainguard_remediation_last_timestamp_seconds",
                            training_job=run.name) > 0
        assert "test-token" not in log.read_text()
    finally:
        cleanup(run)
        proc.wait(10)


def test_half_written_newest_checkpoint_is_skipped(tmp_path: Path) -> None:
    run = make_run(tmp_path, "half", steps=30, extra=("--die_during_save_at_step 20",))
    proc, hung_pids = start_hung(run)
    config = write_config(tmp_path, [run], saving_wait_seconds=2)
    try:
        with thread_server(config) as client:
            assert client.post_alert(payload(run.name)).status_code == 202
            wait_for(lambda: run.events("finish"), timeout=120, what="the resumed run to finish")
            (inc,) = client.settled(run.name)
        assert alive_pids(hung_pids) == set()
        (start,) = resumed_starts(run)
        assert start["resume"] == str(run.output_dir / "half-step00000010-state")
        assert start["step"] == 10
        skipped = inc["evidence"]["checkpoints_skipped"]
        assert [s["path"] for s in skipped] == [str(run.output_dir / "half-step00000020-state")]
        assert skipped[0]["status"] in ("writing", "invalid")
        assert any(a["action"] == "wait" and a["outcome"] == "saving" for a in inc["actions"])
    finally:
        cleanup(run)
        proc.wait(10)


def test_rng_step_zero_loads_as_it_is_and_is_never_rewritten(tmp_path: Path) -> None:
    """accelerate's RNG step 0 beside train_state.json's 20 is what every sd-scripts
    epoch-end state holds (sd-scripts never sets it; accelerate resets it each epoch).
    It loads as it is here, so the remediator resumes from it without touching it."""
    run = make_run(tmp_path, "rngbug", steps=30, extra=("--rng_step_bug", "--hang_at_step 25"))
    proc, _hung = start_hung(run)
    state = run.output_dir / "rngbug-step00000020-state"
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    config = write_config(tmp_path, [run])
    try:
        with thread_server(config) as client:
            client.post_alert(payload(run.name))
            wait_for(lambda: resumed_starts(run), timeout=90, what="a resumed start")
            (inc,) = client.settled(run.name)
        (start,) = resumed_starts(run)
        # Run as sd-scripts (flux_train_network.py), its step-named states are moved aside
        # before the resume (a real sd-scripts resume writes them again in place).
        resumed = Path(str(start["resume"]))
        assert resumed.name == state.name or resumed.name.startswith(
            state.name + ".trainguard-kept-")
        assert start["accelerate_step"] == 0, "accelerate restored the counter as saved"
        assert not [a for a in inc["actions"] if a["action"] == "repair"]
        assert {p.name: p.read_bytes() for p in resumed.iterdir()} == before
    finally:
        cleanup(run)
        proc.wait(10)


def test_numpy1_named_rng_file_is_rewritten_for_this_accelerate_then_used(
        tmp_path: Path) -> None:
    """Whole files, but an RNG pickle naming numpy.core: accelerate >= 1.1 under numpy >= 2.1
    refuses it and silently keeps step 0.  The remediator rewrites it for the resuming
    environment (backup kept) rather than falling back to an older checkpoint."""
    from helpers.checkpoints import rewrite_rng_numpy

    run = make_run(tmp_path, "np1", steps=30, extra=("--hang_at_step 25",))
    proc, _hung = start_hung(run)
    newest = run.output_dir / "np1-step00000020-state"
    rng = newest / "random_states_0.pkl"
    rewrite_rng_numpy(rng, "numpy.core")
    config = write_config(tmp_path, [run])
    try:
        with thread_server(config) as client:
            client.post_alert(payload(run.name))
            wait_for(lambda: resumed_starts(run), timeout=90, what="a resumed start")
            (inc,) = client.settled(run.name)
        (start,) = resumed_starts(run)
        assert start["resume"] == str(newest)
        assert start["accelerate_step"] == 20, "accelerate restored the step from the RNG file"
        assert [a["outcome"] for a in inc["actions"] if a["action"] == "repair"] == ["ok"]
        backups = list(newest.glob("random_states_0.pkl.trainguard-bak-*"))
        assert len(backups) == 1 and b"numpy.core.multiarray" in backups[0].read_bytes()
    finally:
        cleanup(run)
        proc.wait(10)


def test_two_jobs_at_once_each_handled_once_neither_touches_the_other(tmp_path: Path) -> None:
    a = make_run(tmp_path, "lora", steps=30, extra=("--hang_at_step 15",))
    b = make_run(tmp_path, "lora2", steps=30, extra=("--hang_at_step 15",))  # prefix-sharing
    pa, a_pids = start_hung(a)
    pb, b_pids = start_hung(b)
    config = write_config(tmp_path, [a, b])
    try:
        with thread_server(config) as client:
            both = payload(a.name)
            both["alerts"] += payload(b.name)["alerts"]
            r = client.post_alert(both)
            assert [x["decision"] for x in r.json()["alerts"]] == ["queued", "queued"]
            wait_for(lambda: a.events("finish") and b.events("finish"), timeout=150,
                     what="both resumed runs to finish")
            (ia,) = client.settled(a.name)
            (ib,) = client.settled(b.name)
        for run, inc, own, other in ((a, ia, a_pids, b_pids), (b, ib, b_pids, a_pids)):
            assert inc["outcome"] == "resumed"
            (start,) = resumed_starts(run)
            assert start["resume"] == str(run.output_dir / f"{run.name}-step00000010-state")
            killed = {p["pid"] for p in inc["evidence"]["processes"]}
            assert killed == own and not killed & other
        # handled at the same time, not one after the other
        kill_a = next(x["ts"] for x in ia["actions"] if x["action"] == "kill")
        kill_b = next(x["ts"] for x in ib["actions"] if x["action"] == "kill")
        verify_a = next(x["ts"] for x in ia["actions"] if x["action"] == "verify")
        assert kill_b < verify_a or kill_a < next(
            x["ts"] for x in ib["actions"] if x["action"] == "verify")
    finally:
        cleanup(a, b)
        pa.wait(10)
        pb.wait(10)


def test_completed_run_alert_only_records_why(tmp_path: Path) -> None:
    run = make_run(tmp_path, "done", steps=12, save_every=5)
    proc = run.start()
    proc.wait(90)
    assert run.events("finish")
    config = write_config(tmp_path, [run])
    with thread_server(config) as client:
        client.post_alert(payload(run.name, alertname="TrainingProcessDown"))
        (inc,) = client.settled(run.name)
    assert inc["state"] == "skipped" and "completed" in inc["reason"]
    assert len(run.events("start")) == 1
    assert not resumed_copy_path(run.script).exists()


def test_dry_run_decides_and_touches_nothing(tmp_path: Path) -> None:
    run = make_run(tmp_path, "dry", steps=30, extra=("--hang_at_step 15",))
    proc, hung_pids = start_hung(run)
    config = write_config(tmp_path, [run], dry_run=True)
    try:
        with thread_server(config) as client:
            client.post_alert(payload(run.name))
            (inc,) = client.settled(run.name)
        assert inc["outcome"] == "dry_run"
        outcomes = {a["action"]: a["outcome"] for a in inc["actions"]}
        assert outcomes["kill"] == "dry_run" and outcomes["resume"] == "dry_run"
        assert "dry-step00000010-state" in next(
            a["detail"] for a in inc["actions"] if a["action"] == "decide")
        assert alive_pids(hung_pids) == hung_pids
        assert not resumed_copy_path(run.script).exists()
        assert len(run.events("start")) == 1
    finally:
        cleanup(run)
        proc.wait(10)


def test_crash_after_every_resume_spends_the_budget_and_says_so(tmp_path: Path) -> None:
    run = make_run(tmp_path, "crashy", steps=30, extra=("--crash_at_step 12",), once=False)
    config = write_config(tmp_path, [run], restart_budget={
        "max_restarts": 2, "window_seconds": 3600, "backoff_seconds": 0.5})
    proc = run.start()
    proc.wait(90)
    assert run.events("crash")
    try:
        with thread_server(config) as client:
            for n in range(1, 4):
                wait_for(lambda n=n: len(run.events("crash")) >= n, timeout=90,
                         what=f"crash {n}")
                time.sleep(0.2)
                client.post_alert(payload(run.name, alertname="TrainingProcessDown"))
                client.settled(run.name, n=n, timeout=90)
            incidents = client.incidents(run.name)
            gave = client.metrics()
            assert metric_value(gave, "trainguard_remediator_gave_up",
                                training_job=run.name) == 1
            newest = incidents[0]
            assert newest["state"] == "gave_up" and "budget" in newest["reason"]
            assert len(resumed_starts(run)) == 2
            res = subprocess.run([TRAINGUARD, "remediator", "reset", run.name, "--config",
                                  str(config)], capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            assert metric_value(client.metrics(), "trainguard_remediator_gave_up",
                                training_job=run.name) == 0
            assert "had given up" in res.stdout
    finally:
        cleanup(run)


def test_no_checkpoint_restarts_from_scratch_with_the_users_script(tmp_path: Path) -> None:
    run = make_run(tmp_path, "early", steps=20, extra=("--hang_at_step 3",))
    proc, hung_pids = start_hung(run)
    config = write_config(tmp_path, [run])
    try:
        with thread_server(config) as client:
            client.post_alert(payload(run.name))
            wait_for(lambda: run.events("finish"), timeout=120, what="the restarted run")
            (inc,) = client.settled(run.name)
        assert inc["outcome"] == "restarted"
        assert alive_pids(hung_pids) == set()
        starts = run.events("start")
        assert len(starts) == 2 and starts[1]["resume"] is None and starts[1]["step"] == 0
        assert not resumed_copy_path(run.script).exists()
        restart = next(a for a in inc["actions"] if a["action"] == "restart")
        assert str(run.script) in restart["detail"]
    finally:
        cleanup(run)
        proc.wait(10)


def test_resolved_alert_cancels_an_incident_still_waiting(tmp_path: Path) -> None:
    # A save that never finishes looks "writing" (fresh, no RNG file): the incident waits.
    run = make_run(tmp_path, "saving", steps=30, extra=("--die_during_save_at_step 10",))
    proc, hung_pids = start_hung(run)
    config = write_config(tmp_path, [run], saving_wait_seconds=60)
    try:
        with thread_server(config) as client:
            firing = payload(run.name)
            client.post_alert(firing)
            wait_for(lambda: client.incidents(run.name)[0]["state"] == "waiting", timeout=20,
                     what="the incident to wait for the save")
            resolved = payload(run.name, status="resolved")
            resolved["alerts"][0]["startsAt"] = firing["alerts"][0]["startsAt"]
            r = client.post_alert(resolved)
            assert r.json()["alerts"][0]["decision"] == "cancelled"
            (inc,) = client.settled(run.name, timeout=10)
            time.sleep(1.0)  # the worker notices within its poll interval
            inc = client.incidents(run.name)[0]
        assert inc["state"] == "cancelled"
        assert not [a for a in inc["actions"] if a["action"] in ("kill", "resume", "restart")]
        assert alive_pids(hung_pids) == hung_pids
    finally:
        cleanup(run)
        proc.wait(10)


def test_hung_hf_trainer_command_job_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    # Not FluxGym: a Hugging Face Trainer run configured as a command, resumed with the
    # Trainer's own --resume_from_checkpoint flag from a checkpoint the doctor judged.
    out = tmp_path / "hf-out"
    log = tmp_path / "hf.log"
    command = [sys.executable, str(REPO / "tests" / "fixtures" / "hf_trainer.py"), str(out),
               "--max_steps", "20", "--hang_at", "13"]
    config = write_config(tmp_path, [], jobs=({
        "name": "hf-run", "output_dir": str(out), "log_file": str(log),
        "launch": {"command": command, "workdir": str(tmp_path),
                   "resume_flag": "--resume_from_checkpoint"}},))
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    with open(log, "ab") as f:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    hung_pids = {proc.pid}
    try:
        wait_for(lambda: "hanging at 13" in log.read_text(), timeout=120, what="trainer hang")
        with thread_server(config) as client:
            assert client.post_alert(payload("hf-run")).status_code == 202
            [inc] = client.settled("hf-run", timeout=90)
        assert inc["outcome"] == "resumed", inc
        assert proc.wait(10) is not None  # the hung run was stopped
        wait_for(lambda: "first step 10" in log.read_text().split("hanging at 13")[-1],
                 timeout=120, what="resumed trainer to start from step 10")
        wait_for(lambda: (out / "checkpoint-20" / "trainer_state.json").exists(),
                 timeout=120, what="resumed trainer to finish")
        state = json.loads((out / "checkpoint-20" / "trainer_state.json").read_text())
        assert state["global_step"] == 20
        launched = [a for a in inc["actions"] if a["action"] == "resume"]
        assert launched and str(out / "checkpoint-10") in launched[-1]["detail"]
    finally:
        kill_tree(alive_pids(hung_pids))

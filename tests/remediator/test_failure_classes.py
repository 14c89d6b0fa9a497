"""How a run died decides what the remediator does: real runs, real deaths, real HTTP.

Each run is the tiny accelerate trainer started as FluxGym does (bash train.sh ->
accelerate launch -> python); its death is real: Python's own ModuleNotFoundError, a
SIGKILL from outside (what the kernel's OOM killer does), torch.OutOfMemoryError raised
with the caching allocator's text (the only thing built here: there is no GPU).  Then
TrainingProcessDown is delivered, as Alertmanager would, and the remediator decides.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import requests
from helpers.common import wait_for
from helpers.remediator import (
    TOKEN,
    Run,
    job_tree_pids,
    kill_tree,
    make_run,
    metric_value,
    payload,
    thread_server,
    write_config,
)

pytestmark = pytest.mark.slow


def down_alert(run: Run) -> dict[str, object]:
    """TrainingProcessDown for a run that is gone, starting now (after any launch)."""
    return payload(run.name, alertname="TrainingProcessDown", starts=time.time())


def down_alert_at(run: Run, starts_at: str) -> dict[str, object]:
    """The same TrainingProcessDown delivered again (Alertmanager repeats it)."""
    body = payload(run.name, alertname="TrainingProcessDown")
    for alert in body["alerts"]:  # type: ignore[union-attr]
        alert["startsAt"] = starts_at
    return body


def wait_dead(run: Run, timeout: float = 90) -> None:
    wait_for(lambda: not job_tree_pids(run), timeout=timeout, what=f"{run.name} to be gone")


def actions(inc: dict[str, object], name: str) -> list[dict[str, object]]:
    return [a for a in inc["actions"] if a["action"] == name]  # type: ignore[index,union-attr]


def test_a_run_that_dies_at_start_with_a_missing_module_is_not_relaunched(
        tmp_path: Path) -> None:
    run = make_run(tmp_path, "nomod", extra=("--require_module library.train_util",),
                   once=False)
    proc = run.start()
    proc.wait(120)
    wait_dead(run)
    assert "ModuleNotFoundError: No module named 'library'" in run.log_file.read_text()
    config = write_config(tmp_path, [run])
    try:
        with thread_server(config) as client:
            assert client.post_alert(down_alert(run)).status_code == 202
            (inc,) = client.settled(run.name)
            # Delivered again (Alertmanager repeats a firing alert): still nothing.
            r = client.post_alert(down_alert_at(run, inc["starts_at"]))
            assert r.json()["alerts"][0]["decision"] == "duplicate"
            time.sleep(1.5)
            text = client.metrics()
            incidents = client.incidents(run.name)
        assert inc["state"] == "failed_permanently" and inc["outcome"] == "failed_permanently"
        assert "ModuleNotFoundError: No module named 'library'" in inc["reason"]
        assert "install" in inc["reason"]
        assert inc["failure"] == {"class": "configuration", "cause": "module-not-found",
                                  "line": "ModuleNotFoundError: No module named 'library'"}
        assert not actions(inc, "resume") and not actions(inc, "restart")
        assert [a["outcome"] for a in actions(inc, "classify")] == ["configuration"]
        # Nothing was started again: no process, no trainer start in the record.
        assert not job_tree_pids(run) and not run.events("start")
        assert all(not actions(i, "resume") and not actions(i, "restart") for i in incidents)
        assert metric_value(text, "trainguard_remediator_failed_permanently",
                            training_job=run.name, **{"class": "configuration"},
                            cause="module-not-found") == 1

        # The person installs the module and re-arms the job: the alert's next delivery
        # starts the run again (from scratch: it never saved), and it trains.
        lib = run.root / "sd-scripts" / "library"
        lib.mkdir()
        (lib / "__init__.py").write_text("")
        (lib / "train_util.py").write_text("")
        with thread_server(config) as client:
            r = requests.post(f"{client.url}/api/jobs/{run.name}/reset", timeout=10,
                              headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200
            client.post_alert(down_alert_at(run, inc["starts_at"]))
            wait_for(lambda: run.events("finish"), timeout=120, what="the fixed run to end")
            (inc,) = client.settled(run.name)
        assert inc["state"] == "done" and inc["outcome"] == "restarted", inc
    finally:
        kill_tree(job_tree_pids(run))


def test_a_run_killed_by_a_signal_is_resumed(tmp_path: Path) -> None:
    run = make_run(tmp_path, "sigkill", steps=30, extra=("--hang_at_step 15",))
    proc = run.start()
    try:
        wait_for(lambda: run.events("hang"), timeout=90, what="the run to reach step 15")
        trainer = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "flux_train_network.py" in " ".join(p.cmdline())
                   and "accelerate" not in " ".join(p.cmdline()[:2])]
        assert len(trainer) == 1
        os.kill(trainer[0].pid, signal.SIGKILL)   # as the kernel's OOM killer does
        proc.wait(60)
        wait_dead(run)
        assert "died with <Signals.SIGKILL: 9>" in run.log_file.read_text()
        config = write_config(tmp_path, [run])
        with thread_server(config) as client:
            client.post_alert(down_alert(run))
            wait_for(lambda: run.events("finish"), timeout=120, what="the resumed run to end")
            (inc,) = client.settled(run.name)
        assert inc["failure"]["class"] == "transient"
        assert inc["failure"]["cause"] == "killed-by-signal"
        assert inc["outcome"] == "resumed"
        starts = [e for e in run.events("start") if e.get("resume")]
        assert len(starts) == 1 and starts[0]["step"] == 10
    finally:
        kill_tree(job_tree_pids(run))


def test_cuda_out_of_memory_gets_one_retry_then_a_stop(tmp_path: Path) -> None:
    """Every run of this job runs out of GPU memory at step 15 (no once-marker)."""
    run = make_run(tmp_path, "oom", steps=30, extra=("--oom_at_step 15",), once=False)
    proc = run.start()
    try:
        proc.wait(120)
        wait_dead(run)
        assert len(run.events("oom")) == 1
        config = write_config(tmp_path, [run])
        with thread_server(config) as client:
            client.post_alert(down_alert(run))
            (first,) = client.settled(run.name)
            assert first["failure"]["cause"] == "cuda-out-of-memory"
            assert first["outcome"] == "resumed", first
            # The retry runs out of memory again, at the same step.
            wait_for(lambda: len(run.events("oom")) == 2, timeout=120, what="the second OOM")
            wait_dead(run)
            client.post_alert(down_alert(run))
            second = client.settled(run.name, n=2)[0]
            text = client.metrics()
        assert second["state"] == "failed_permanently", second
        assert "CUDA out of memory. Tried to allocate 2.00 GiB" in second["reason"]
        assert "came back" in second["reason"] and "less GPU memory" in second["reason"]
        assert len([e for e in run.events("start") if e.get("resume")]) == 1
        assert not job_tree_pids(run)
        assert metric_value(text, "trainguard_remediator_failed_permanently",
                            training_job=run.name, cause="cuda-out-of-memory") == 1
    finally:
        kill_tree(job_tree_pids(run))

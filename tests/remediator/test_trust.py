"""Act only when sure (issue 10), against real hung runs, real bystanders, real venvs.

* A remediation stops exactly the hung run's tree: the user's rsync, cp, less, vi, tail,
  tensorboard, watch, http.server and an exporter whose config sits in the folder, and a
  second job writing to a subfolder, all live on; the exporter reports the job down once
  the trainer dies although the bystanders live, and the job's output_dir written through
  a symlink is still the job.
* A run whose resume cannot be prepared (a script whose training command hides behind a
  variable, a workdir that is gone) is not signalled at all; the refusal is in the log,
  the metric, the status page and the API.
* The resume runs in the run's own venv, not the remediator's; a remediator without
  torch never restarts from scratch over checkpoints that need a repair.
* A paused job is left alone until it is unpaused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers.bystanders import start_bystanders
from helpers.common import free_port, wait_for
from helpers.remediator import (
    TOKEN,
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
from helpers.venvs import broken_accelerate_bin, training_venv, venv_without_torch

from remediator.actions.script import resumed_copy_path

pytestmark = pytest.mark.slow
TRAINGUARD = str(Path(VENV_BIN) / "trainguard")


def hang(run: Run, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], set[int]]:
    proc = run.start(env)
    wait_for(lambda: run.events("hang"), timeout=120, what=f"{run.name} to hang")
    return proc, pids_of(proc)


def resumed(run: Run) -> list[dict[str, Any]]:
    return [e for e in run.events("start") if e.get("resume")]


def scrape(url: str) -> str:
    r = requests.get(url + "/metrics", timeout=10)
    r.raise_for_status()
    return r.text


def up(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).ok
    except requests.ConnectionError:
        return False


def test_bystanders_and_a_nested_job_live_on_while_only_the_run_is_resumed(
        tmp_path: Path) -> None:
    run = make_run(tmp_path, "a", steps=30, extra=("--hang_at_step 12",))
    sub = make_run(tmp_path, "sub", folder="a/sub", steps=100000, step_seconds=0.5)
    link = tmp_path / "runs-link"
    link.symlink_to(run.output_dir, target_is_directory=True)
    job_a = {**run.job_config(), "output_dir": str(link)}  # through a symlink
    cfg = write_config(tmp_path, [], jobs=(job_a, sub.job_config()))
    sub_proc = sub.start()
    wait_for(lambda: sub.events("first_step"), timeout=120, what="the nested job to train")
    bystanders = start_bystanders("outputs/a", run.root)
    proc, hung_pids = hang(run)
    sub_pids = job_tree_pids(sub)
    port = free_port()
    exporter = subprocess.Popen([TRAINGUARD, "exporter", "--config", str(cfg), "--listen",
                                 f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up(url), timeout=30, what="the exporter")
        wait_for(lambda: metric_value(scrape(url), "trainguard_job_process_up",
                                      training_job="a") == 1, timeout=30, what="job a up")
        assert metric_value(scrape(url), "trainguard_job_processes", training_job="a") == \
            len(hung_pids)
        with thread_server(cfg) as client:
            client.post_alert(payload("a"))
            wait_for(lambda: resumed(run), timeout=120, what="the resumed run")
            (inc,) = client.settled("a")
            assert inc["outcome"] == "resumed", inc
            assert resumed(run)[0]["step"] == 10
            assert not alive_pids(hung_pids), "the hung run's tree is gone"
            # Every bystander and the nested job lived through it.
            assert all(b.poll() is None for b in bystanders.values()), {
                n: b.poll() for n, b in bystanders.items()}
            assert alive_pids(sub_pids) == sub_pids
            killed = {p for a in inc["actions"] if a["action"] == "kill" for p in hung_pids
                      if str(p) in a["detail"]}
            assert killed == hung_pids

            # The resumed run crashes hard: the exporter says down although bystanders
            # (and the nested job) live, and ProcessDown resumes it once more.
            new_pids = wait_for(lambda: job_tree_pids(run), what="the resumed tree")
            kill_tree(new_pids)
            wait_for(lambda: metric_value(scrape(url), "trainguard_job_process_up",
                                          training_job="a") == 0,
                     timeout=30, what="the exporter to report job a down")
            assert metric_value(scrape(url), "trainguard_job_process_up",
                                training_job="sub") == 1
            client.post_alert(payload("a", alertname="TrainingProcessDown"))
            wait_for(lambda: len(resumed(run)) == 2, timeout=120, what="the second resume")
            wait_for(lambda: run.events("finish"), timeout=120, what="the run to finish")
            incs = client.settled("a", n=2)
        assert [i["outcome"] for i in incs] == ["resumed", "resumed"]
        assert all(b.poll() is None for b in bystanders.values())
        assert alive_pids(sub_pids) == sub_pids
    finally:
        exporter.terminate()
        exporter.wait(10)
        for b in bystanders.values():
            b.kill()
            b.wait()
        kill_tree(job_tree_pids(run) | hung_pids | job_tree_pids(sub))
        proc.wait(10)
        sub_proc.wait(10)


def test_a_script_trainguard_cannot_resume_is_refused_and_never_signalled(
        tmp_path: Path) -> None:
    run = make_run(tmp_path, "var", steps=30, extra=("--hang_at_step 15",))
    text = run.script.read_text().replace("  sd-scripts/flux_train_network.py", '  "$T"')
    run.script.write_text("T=sd-scripts/flux_train_network.py\n" + text)
    proc, hung_pids = hang(run)
    cfg = write_config(tmp_path, [run], refused_recheck_seconds=0)
    log = tmp_path / "remediator.log"
    try:
        with process_server(cfg, log) as client:
            client.post_alert(payload(run.name))
            (inc,) = client.settled(run.name)
            assert inc["state"] == "refused" and inc["outcome"] == "refused"
            assert "no training command found" in inc["reason"]
            assert metric_value(client.metrics(), "trainguard_remediator_refused",
                                training_job="var") == 1
            page = requests.get(client.url + "/", timeout=10).text
            assert "no training command found" in page
            assert alive_pids(hung_pids) == hung_pids
            assert not [a for a in inc["actions"] if a["action"] == "kill"]
            # The person fixes the script; the alert's next delivery is looked at again.
            run.script.write_text(text.replace('  "$T"', "  sd-scripts/flux_train_network.py"))
            client.post_alert(payload(run.name, starts=inc_start(inc)))
            wait_for(lambda: resumed(run), timeout=120, what="the resume after the fix")
            (inc,) = client.settled(run.name)
            assert inc["outcome"] == "resumed"
        lines = [line for line in log.read_text().splitlines() if "refuse refused" in line]
        assert len(lines) == 1 and "nothing was signalled" in lines[0], lines
    finally:
        kill_tree(job_tree_pids(run) | hung_pids)
        proc.wait(10)


def inc_start(inc: dict[str, Any]) -> float:
    from remediator.pipeline import parse_time

    return parse_time(inc["starts_at"])


def test_a_workdir_that_is_gone_is_refused_and_never_signalled(tmp_path: Path) -> None:
    run = make_run(tmp_path, "wd", steps=30, extra=("--hang_at_step 15",))
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / "sd-scripts").symlink_to(run.root / "sd-scripts")
    job = {**run.job_config(), "launch": {**run.job_config()["launch"], "workdir": str(workdir)}}
    cfg = write_config(tmp_path, [], jobs=(job,))
    proc, hung_pids = hang(run)
    try:
        with thread_server(cfg) as client:
            shutil.rmtree(workdir)
            client.post_alert(payload(run.name))
            (inc,) = client.settled(run.name)
            assert inc["state"] == "refused" and str(workdir) in inc["reason"]
            assert alive_pids(hung_pids) == hung_pids
            assert len(run.events("start")) == 1
    finally:
        kill_tree(job_tree_pids(run) | hung_pids)
        proc.wait(10)


def test_a_run_is_resumed_in_its_own_venv_not_the_remediators(tmp_path: Path) -> None:
    """trainguard's PATH has an `accelerate` that cannot import accelerate (its venv);
    the runs' venv has the real one.  A hung run and one that crashed before the alert
    are both resumed in their own environment and finish."""
    run_bin = training_venv(tmp_path / "fluxgym-venv")
    shadow = broken_accelerate_bin(tmp_path / "trainguard-venv-bin")
    run_env = {"PATH": f"{run_bin}:/usr/bin:/bin", "VIRTUAL_ENV": str(run_bin.parent),
               "HOME": str(tmp_path)}
    hung = make_run(tmp_path, "hung", steps=30, extra=("--hang_at_step 12",))
    crash = make_run(tmp_path, "crash", steps=30, step_seconds=1.0,
                     extra=("--crash_at_step 20",))
    jobs = []
    for r in (hung, crash):
        job = r.job_config()
        del job["launch"]["env"]  # nothing configured: the run's own environment must win
        jobs.append(job)
    cfg = write_config(tmp_path, [], jobs=tuple(jobs))
    remediator_env = dict(os.environ, PATH=f"{shadow}:{VENV_BIN}:/usr/bin:/bin")
    crash_proc = crash.start(run_env)
    wait_for(lambda: crash.events("first_step"), timeout=120, what="the crash run to train")
    proc: subprocess.Popen[bytes] | None = None
    hung_pids: set[int] = set()
    try:
        with process_server(cfg, tmp_path / "remediator.log", env=remediator_env) as client:
            proc, hung_pids = hang(hung, run_env)
            # The crashing run dies while the remediator watches; its environment is known.
            wait_for(lambda: crash.events("crash"), timeout=120, what="the crash")
            assert crash_proc.wait(30) != 0
            client.post_alert(payload("hung"))
            client.post_alert(payload("crash", alertname="TrainingProcessDown"))
            for r in (hung, crash):
                wait_for(lambda r=r: r.events("finish"), timeout=180,  # type: ignore[misc]
                         what=f"{r.name} to finish in its own venv")
            incidents = {r.name: client.settled(r.name)[0] for r in (hung, crash)}
        for name, inc in incidents.items():
            assert inc["outcome"] == "resumed", inc
            plan = inc["evidence"]["plan"]
            assert plan["env"]["VIRTUAL_ENV"] == str(run_bin.parent), name
            assert plan["env"]["PATH"].startswith(str(run_bin)), name
        assert "running job's pid" in incidents["hung"]["evidence"]["plan"]["env_source"]
        assert "running job's pid" in incidents["crash"]["evidence"]["plan"]["env_source"]
        assert "ModuleNotFoundError" not in hung.log_file.read_text()
    finally:
        kill_tree(job_tree_pids(hung) | hung_pids | job_tree_pids(crash))
        if proc is not None:
            proc.wait(10)


def test_without_torch_checkpoints_that_need_a_repair_are_never_replaced_by_a_fresh_start(
        tmp_path: Path) -> None:
    from helpers.checkpoints import rewrite_rng_numpy

    trainguard = venv_without_torch(tmp_path / "trainguard-venv")
    run = make_run(tmp_path, "np1", steps=30, extra=("--hang_at_step 25",))
    proc, hung_pids = hang(run)
    for state in run.output_dir.glob("np1-step*-state"):
        rewrite_rng_numpy(state / "random_states_0.pkl", "numpy.core")  # numpy 1.x writer
    cfg = write_config(tmp_path, [run])
    log = tmp_path / "remediator.log"
    try:
        with process_server(cfg, log, trainguard=str(trainguard)) as client:
            client.post_alert(payload(run.name))
            (inc,) = client.settled(run.name)
        assert inc["state"] == "refused", inc
        assert "cannot repair" in inc["reason"] and "trainguard[torch]" in inc["reason"]
        assert alive_pids(hung_pids) == hung_pids
        assert len(run.events("start")) == 1, "nothing was restarted"
        assert not resumed_copy_path(run.script).exists()
        assert "torch is not installed here" in log.read_text()
    finally:
        kill_tree(job_tree_pids(run) | hung_pids)
        proc.wait(10)


def test_a_paused_job_stays_as_it_is_until_unpaused(tmp_path: Path) -> None:
    run = make_run(tmp_path, "p", steps=30, extra=("--hang_at_step 12",))
    proc, hung_pids = hang(run)
    cfg = write_config(tmp_path, [run])
    try:
        with thread_server(cfg) as client:
            res = subprocess.run([TRAINGUARD, "pause", "p", "--config", str(cfg), "--reason",
                                  "changing the dataset"], capture_output=True, text=True,
                                 timeout=60)
            assert res.returncode == 0, res.stderr
            assert metric_value(client.metrics(), "trainguard_job_paused",
                                training_job="p") == 1
            client.post_alert(payload("p", starts=time.time() - 60))
            (inc,) = client.settled("p")
            assert inc["state"] == "skipped" and "changing the dataset" in inc["reason"]
            assert alive_pids(hung_pids) == hung_pids
            r = requests.post(client.url + "/api/jobs/p/unpause", timeout=10,
                              headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.json() == {"training_job": "p", "paused": False}
            assert requests.post(client.url + "/api/jobs/p/pause", timeout=10).status_code \
                == 401
            client.post_alert(payload("p", starts=time.time()))
            wait_for(lambda: resumed(run), timeout=120, what="the resume after unpausing")
            incs = client.settled("p", n=2)
        assert incs[0]["outcome"] == "resumed" and incs[1]["state"] == "skipped"
    finally:
        kill_tree(job_tree_pids(run) | hung_pids)
        proc.wait(10)


def test_pause_of_an_unknown_job_is_a_clear_usage_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a")
    cfg = write_config(tmp_path, [run])
    res = subprocess.run([TRAINGUARD, "pause", "nope", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "'nope'" in res.stderr and "Traceback" not in res.stderr


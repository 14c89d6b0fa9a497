"""A run Slurm owns, rescued through Slurm: a real single-node cluster on loopback
(tests/helpers/slurm.py), a real batch job running the tiny accelerate trainer, a real
remediator over real HTTP.

The batch script and the trainguard config are deploy/slurm/train.sbatch and
deploy/slurm/trainguard.yaml, the files deploy/README.md shows, with only these changes:
``/shared`` is this test's folder, no ``--gres=gpu:1`` (no GPU here), one CPU (CI has
two), the trainer's test
flags (steps, hang, record) in place of ``--save_every_n_steps 100``, the token and
state paths, ``host: localhost`` (the cluster's NodeName) and short remediator timeouts.
``train.py`` is tests/fixtures/tiny_train.py.

What must hold: the hung run is requeued (Slurm's restart count 1) and resumes from the
newest checkpoint to completion; every training process ever seen sat under
``slurmstepd`` (nothing was started outside Slurm); the user's batch script is untouched.
When the job cannot be requeued (``--no-requeue``), it is cancelled and the resumed copy
of its batch script submitted, and the incident says so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from helpers.common import REPO, TINY_TRAIN, wait_for
from helpers.remediator import VENV_BIN, Client, payload, process_server
from helpers.slurm import SlurmCluster, slurm_cluster

from remediator.slurm import RECORD_NAME

pytestmark = pytest.mark.slow

EXAMPLES = REPO / "deploy" / "slurm"
JOB = "my-lora"
STATE = "last-step00000020-state"   # tiny_train's default --output_name is "last"


@dataclass
class Layout:
    root: Path
    script: Path
    config: Path
    output_dir: Path
    record: Path
    env: dict[str, str]

    def events(self, kind: str) -> list[dict[str, Any]]:
        import json

        if not self.record.exists():
            return []
        return [e for e in (json.loads(x) for x in self.record.read_text().splitlines() if x)
                if e["event"] == kind]


def layout(cluster: SlurmCluster, root: Path, failure: str = "--hang_at_step 25") -> Layout:
    """deploy/slurm's example files under ``root`` (see the module doc for the changes)."""
    out = root / "outputs" / JOB
    out.mkdir(parents=True)
    (root / "train").mkdir()
    shutil.copy(TINY_TRAIN, root / "train" / "train.py")
    (root / "jobs").mkdir()
    record = out / "record.jsonl"
    text = (EXAMPLES / "train.sbatch").read_text()
    for old, new in (("#SBATCH --gres=gpu:1\n", ""),
                     ("--cpus-per-task=4", "--cpus-per-task=1"),
                     ("--num_cpu_threads_per_process 4", "--num_cpu_threads_per_process 1"),
                     ("--save_every_n_steps 100",
                      f"--save_every_n_steps 10 --max_train_steps 60 --step_seconds 0.2 "
                      f"{failure} --once_marker {out}/once.marker --record {record}"),
                     ("/shared", str(root))):
        assert old in text, old
        text = text.replace(old, new)
    script = root / "jobs" / f"{JOB}.sbatch"
    script.write_text(text)
    token = root / "secrets" / "webhook-token"
    token.parent.mkdir()
    token.write_text("slurm-test-token-0123456789\n")
    token.chmod(0o600)
    conf = (EXAMPLES / "trainguard.yaml").read_text()
    for old, new in (("/etc/trainguard/webhook-token", str(token)),
                     ("/var/lib/trainguard/state.sqlite3", str(root / "state.sqlite3")),
                     ("/shared", str(root))):
        assert old in conf, old
        conf = conf.replace(old, new)
    data = yaml.safe_load(conf)
    data["host"] = "localhost"
    data["remediator"].update(kill_grace_seconds=15, gpu_release_timeout_seconds=2,
                              restart_budget={"max_restarts": 3, "window_seconds": 3600,
                                              "backoff_seconds": 0})
    data["jobs"][0]["launch"]["slurm"]["start_timeout_seconds"] = 120
    config = root / "trainguard.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = dict(cluster.env, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return Layout(root, script, config, out, record, env)


@dataclass
class Watch:
    """Every training process of the job seen while it runs, and what it sat under."""

    output_dir: str
    seen: dict[int, list[str]] = field(default_factory=dict)   # pid -> parents' names
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = p.info["cmdline"] or []
                if p.info["pid"] in self.seen or self.output_dir not in cmd or \
                        not any(w.endswith("train.py") for w in cmd):
                    continue
                try:
                    self.seen[p.info["pid"]] = [q.name() for q in p.parents()]
                except psutil.Error:
                    continue

    def outside_slurm(self) -> dict[int, list[str]]:
        return {pid: names for pid, names in self.seen.items() if "slurmstepd" not in names}


@pytest.fixture
def cluster() -> Iterator[SlurmCluster]:
    with slurm_cluster() as c:
        print(f"\nSlurm up in {c.startup_seconds['total']:.2f}s "
              f"({', '.join(f'{k} {v:.2f}s' for k, v in c.startup_seconds.items())})")
        yield c


@pytest.fixture
def shared() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tg-shared-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def rescue(cluster: SlurmCluster, lay: Layout, *sbatch_options: str, event: str = "hang",
           alertname: str = "TrainingStalled") -> tuple[str, list[dict[str, Any]], Watch]:
    """Submit, wait for the failure, alert the remediator, wait for the run to finish."""
    watch = Watch(str(lay.output_dir))
    watcher = threading.Thread(target=watch.run, daemon=True)
    watcher.start()
    try:
        job_id = cluster.sbatch(lay.script, *sbatch_options, cwd=lay.root / "train",
                                env=lay.env)
        wait_for(lambda: lay.events(event), timeout=180, interval=0.5,
                 what=f"Slurm job {job_id}'s {event} (log {lay.output_dir / 'train.log'})")
        if event == "crash":
            wait_for(lambda: cluster.show(job_id)["JobState"] == "FAILED", timeout=30,
                     what=f"Slurm job {job_id} to fail")
        with process_server(lay.config, lay.root / "remediator.log", env=lay.env) as client:
            client = Client(client.url, token="slurm-test-token-0123456789")
            body = payload(JOB, starts=time.time(), alertname=alertname)
            body["alerts"][0]["labels"]["host"] = "localhost"
            r = client.post_alert(body)
            assert r.status_code == 202 and r.json()["alerts"][0]["decision"] == "queued"
            incidents = client.settled(JOB, timeout=240)
        wait_for(lambda: lay.events("finish"), timeout=240, interval=0.5,
                 what=f"the resumed run to finish (log {lay.output_dir / 'train.log'}; "
                      f"remediator log {lay.root / 'remediator.log'})")
    finally:
        time.sleep(0.5)
        watch.stop.set()
        watcher.join(5)
    return job_id, incidents, watch


def actions(incident: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [a for a in incident["actions"] if a["action"] == name]


def test_a_hung_slurm_job_is_requeued_and_resumes_from_its_newest_checkpoint(
        cluster: SlurmCluster, shared: Path) -> None:
    lay = layout(cluster, shared)
    script_hash = hashlib.sha256(lay.script.read_bytes()).hexdigest()
    t0 = time.monotonic()
    job_id, [incident], watch = rescue(cluster, lay)
    took = time.monotonic() - t0

    assert incident["outcome"] == "resumed", incident
    [kill] = actions(incident, "kill")
    assert f"requeued Slurm job {job_id} held (restart count 0 -> 1)" in kill["detail"]
    [started] = actions(incident, "resume")
    assert started["detail"].startswith(f"scontrol release {job_id}: resume from "
                                        f"{lay.output_dir / STATE}")
    [verify] = actions(incident, "verify")
    assert verify["outcome"] == "ok" and "restart count 1" in verify["detail"], verify
    assert incident["evidence"]["launched"]["pid"] == 0  # nothing was started here

    wait_for(lambda: cluster.show(job_id)["JobState"] == "COMPLETED", timeout=60,
             what=f"Slurm job {job_id} to complete")
    show = cluster.show(job_id)
    assert (show["Restarts"], show["ExitCode"]) == ("1", "0:0"), show
    starts = lay.events("start")
    assert [s["resume"] for s in starts] == [None, str(lay.output_dir / STATE)]
    assert starts[1]["step"] == 20 and lay.events("finish")[0]["step"] == 60
    # The restarted run read the remediator's choice, for its restart.
    log = (lay.output_dir / "train.log").read_text()
    assert f"restart 1 of Slurm job {job_id}: --resume {lay.output_dir / STATE}" in log
    record = yaml.safe_load((lay.output_dir / RECORD_NAME).read_text())
    assert (record["slurm_job_id"], record["restart_count"]) == (job_id, 1)
    # Nothing started outside Slurm; the user's batch script untouched, no copy needed.
    runs = {s["pid"] for s in starts}
    assert runs <= set(watch.seen) or len(watch.seen) >= 2, watch.seen
    assert watch.seen and watch.outside_slurm() == {}, watch.seen
    assert hashlib.sha256(lay.script.read_bytes()).hexdigest() == script_hash
    assert not lay.script.with_name(f"{JOB}.trainguard-resume.sbatch").exists()
    print(f"\nSlurm rescue: submit to finish {took:.1f}s; restart count "
          f"{show['Restarts']}; {len(watch.seen)} training processes, all under slurmstepd")


def test_a_job_that_cannot_be_requeued_is_cancelled_and_its_resumed_copy_submitted(
        cluster: SlurmCluster, shared: Path) -> None:
    lay = layout(cluster, shared)
    job_id, [incident], watch = rescue(cluster, lay, "--no-requeue")

    assert incident["outcome"] == "resumed", incident
    [decided] = actions(incident, "decide")
    assert "cannot be requeued (Requeue=0)" in decided["detail"]
    [kill] = actions(incident, "kill")
    assert f"cancelled Slurm job {job_id}" in kill["detail"]
    copy = lay.script.with_name(f"{JOB}.trainguard-resume.sbatch")
    [started] = actions(incident, "resume")
    assert started["detail"].startswith(f"sbatch --parsable {copy}: "), started
    [verify] = actions(incident, "verify")
    assert verify["outcome"] == "ok", verify
    new_id = verify["detail"].split()[2]
    assert new_id != job_id
    assert cluster.show(job_id)["JobState"] == "CANCELLED"
    wait_for(lambda: cluster.show(new_id)["JobState"] == "COMPLETED", timeout=60,
             what=f"Slurm job {new_id} to complete")
    assert f"--resume {lay.output_dir / STATE}" in copy.read_text()
    starts = lay.events("start")
    assert [s["resume"] for s in starts] == [None, str(lay.output_dir / STATE)]
    assert watch.seen and watch.outside_slurm() == {}, watch.seen


def test_a_failed_slurm_job_is_found_by_name_and_requeued(cluster: SlurmCluster,
                                                         shared: Path) -> None:
    """The run crashed, so no process names the job: the remediator finds it by its
    job name among this user's jobs, and requeues the FAILED job (nothing to hold)."""
    lay = layout(cluster, shared, failure="--crash_at_step 25")
    job_id, [incident], watch = rescue(cluster, lay, event="crash",
                                       alertname="TrainingProcessDown")
    assert incident["outcome"] == "resumed", incident
    [decided] = actions(incident, "decide")
    assert f"requeueing Slurm job {job_id} (restart count 0 -> 1, found by squeue " \
        f"--name={JOB})" in decided["detail"]
    [kill] = actions(incident, "kill")
    assert kill["outcome"] == "skipped"      # nothing of it lived
    [started] = actions(incident, "resume")
    assert started["detail"].startswith(f"scontrol requeue {job_id}: "), started
    wait_for(lambda: cluster.show(job_id)["JobState"] == "COMPLETED", timeout=60,
             what=f"Slurm job {job_id} to complete")
    assert cluster.show(job_id)["Restarts"] == "1"
    starts = lay.events("start")
    assert [s["resume"] for s in starts] == [None, str(lay.output_dir / STATE)]
    assert watch.seen and watch.outside_slurm() == {}, watch.seen

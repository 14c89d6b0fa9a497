"""Builders for remediator tests: a FluxGym-shaped run folder, a config, a live server.

The run folder mirrors FluxGym's layout: a root (the workdir) holding
``sd-scripts/flux_train_network.py`` (here: a copy of the tiny trainer) and
``outputs/<name>/train.sh`` in the generator's shape (`accelerate launch` continued with
` \\`), whose paths to the trainer are relative to the root, so a resume started from
the wrong folder fails for real.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

from helpers.common import REPO, TINY_TRAIN, free_port, wait_for

VENV_BIN = str(Path(sys.executable).parent)
TOKEN = "test-token-0123456789abcdef"


@dataclass
class Run:
    """One FluxGym-shaped training job on disk."""

    name: str
    root: Path        # FluxGym root: the workdir
    output_dir: Path
    script: Path
    log_file: Path
    record: Path
    marker: Path

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["event"] == kind]

    def script_hash(self) -> str:
        return hashlib.sha256(self.script.read_bytes()).hexdigest()

    def job_config(self) -> dict[str, Any]:
        return {"name": self.name, "output_dir": str(self.output_dir),
                "log_file": str(self.log_file), "startup_grace_seconds": 1,
                "launch": {"script": str(self.script), "workdir": str(self.root),
                           "resume_flag": "--resume",
                           "env": {"PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}}}

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start the run as FluxGym does: ``bash outputs/<name>/train.sh`` from the root
        (``env``: the whole environment; default ours with the test venv first on PATH)."""
        if env is None:
            env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
        with open(self.log_file, "ab") as out:
            return subprocess.Popen(["bash", str(self.script.relative_to(self.root))],
                                    cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def make_run(base: Path, name: str, *, steps: int = 30, save_every: int = 10,
             step_seconds: float = 0.05, extra: tuple[str, ...] = (), once: bool = True,
             folder: str | None = None) -> Run:
    """Lay out a FluxGym root under ``base`` with one run; ``extra`` are trainer flags.

    With ``once`` (the default) a failure flag fires only in the first run, so the resumed
    run goes on; without it every run fails the same way.  ``folder``: the run's folder
    under ``outputs/`` when not its name (``a/sub`` nests one run in another's folder).
    """
    root = base / "fluxgym"
    (root / "sd-scripts").mkdir(parents=True, exist_ok=True)
    trainer = root / "sd-scripts" / "flux_train_network.py"
    if not trainer.exists():
        shutil.copy(TINY_TRAIN, trainer)
    out = root / "outputs" / (folder or name)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "record.jsonl"
    marker = out / "once.marker"
    lines = [
        "accelerate launch",
        "  --mixed_precision no",
        "  --num_cpu_threads_per_process 1",
        "  sd-scripts/flux_train_network.py",
        f'  --output_dir "{out}"',
        f"  --output_name {name}",
        f"  --max_train_steps {steps} --save_every_n_steps {save_every}",
        f"  --step_seconds {step_seconds}",
        f'  --record "{record}"' + (f' --once_marker "{marker}"' if once else ""),
        *(f"  {flag}" for flag in extra),
        "  --loss_type l2",
        "  --save_state",
    ]
    script = out / "train.sh"
    script.write_text(" \\\n".join(lines) + "\n")
    return Run(name, root, out, script, out / "train.log", record, marker)


def write_config(base: Path, runs: list[Run], *, jobs: tuple[dict[str, Any], ...] = (),
                 **remediator: Any) -> Path:
    """A config file with short timeouts; ``jobs`` are more job entries beside the runs'
    (non-FluxGym jobs), keyword arguments override remediator keys."""
    token_file = base / "secrets" / "webhook-token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    rem: dict[str, Any] = {
        "token_file": str(token_file), "state_path": str(base / "state.sqlite3"),
        "kill_grace_seconds": 3, "gpu_release_timeout_seconds": 2,
        "verify_alive_seconds": 1.5, "saving_wait_seconds": 5,
        "restart_budget": {"max_restarts": 3, "window_seconds": 3600, "backoff_seconds": 0},
    }
    rem.update(remediator)
    path = base / "trainguard.yaml"
    path.write_text(yaml.safe_dump({"jobs": [r.job_config() for r in runs] + list(jobs),
                                    "remediator": rem}))
    return path


def rfc3339(ts: float) -> str:
    """Alertmanager's time format (nanoseconds, Z)."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}123Z"


def payload(job: str, *, alertname: str = "TrainingStalled", starts: float | None = None,
            status: str = "firing") -> dict[str, Any]:
    """An Alertmanager v4 webhook body with one alert."""
    labels = {"alertname": alertname, "training_job": job, "remediate": "true",
              "severity": "critical"}
    alert = {"status": status, "labels": labels,
             "annotations": {"summary": f"{job} is stuck"},
             "startsAt": rfc3339(starts if starts is not None else time.time()),
             "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "http://prometheus:9090/graph", "fingerprint": "0123456789abcdef"}
    return {"version": "4", "groupKey": '{}:{alertname="' + alertname + '"}',
            "truncatedAlerts": 0, "status": status, "receiver": "trainguard",
            "groupLabels": {"alertname": alertname}, "commonLabels": labels,
            "commonAnnotations": alert["annotations"], "externalURL": "http://am:9093",
            "alerts": [alert]}


class Client:
    """Talks to a running remediator over real HTTP."""

    def __init__(self, url: str, token: str = TOKEN) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.http = requests.Session()

    def post_alert(self, body: Any, token: str | None = None,
                   headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        headers = {**(headers or {}),
                   "Authorization": f"Bearer {token if token is not None else self.token}"}
        if not isinstance(body, dict | list):
            return self.http.post(self.url + "/alerts", data=body, headers=headers,
                                  timeout=10, **kw)
        return self.http.post(self.url + "/alerts", json=body, headers=headers, timeout=10, **kw)

    def incidents(self, job: str | None = None) -> list[dict[str, Any]]:
        params = {"job": job} if job else {}
        r = self.http.get(self.url + "/api/incidents", params=params, timeout=10,
                          headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()["incidents"]
        return items

    def metrics(self) -> str:
        r = self.http.get(self.url + "/metrics", timeout=10)
        r.raise_for_status()
        return r.text

    def settled(self, job: str, n: int = 1, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until ``job`` has at least ``n`` incidents and none is still open."""
        def check() -> list[dict[str, Any]] | None:
            items = self.incidents(job)
            if len(items) >= n and all(i["state"] not in ("queued", "waiting", "acting")
                                       for i in items):
                return items
            return None
        return wait_for(check, timeout=timeout, interval=0.25, what=f"{job} incidents settled")


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@contextmanager
def thread_server(config_path: Path) -> Iterator[Client]:
    """The real app under waitress in this process (fast; no restart needed)."""
    import waitress

    from remediator.app import create_app, remediator_of
    from trainguard.config import load_config

    app = create_app(load_config(config_path))
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    port = server.socket.getsockname()[1]  # type: ignore[union-attr]

    def serve() -> None:
        # closed under select() raises: that is how waitress ends when closed from outside
        with contextlib.suppress(OSError, ValueError):
            server.run()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield Client(f"http://127.0.0.1:{port}")
    finally:
        server.close()
        t.join(5)
        remediator_of(app).stop()
        remediator_of(app).store.close()


@contextmanager
def process_server(config_path: Path, log: Path, *, env: dict[str, str] | None = None,
                   trainguard: str | None = None) -> Iterator[Client]:
    """``trainguard remediator --config FILE --listen ...`` as a real subprocess
    (``trainguard``: another installation's console script; ``env``: its environment)."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [trainguard or str(Path(VENV_BIN) / "trainguard"), "remediator", "--config",
             str(config_path), "--listen", f"127.0.0.1:{port}"], stdout=out,
            stderr=subprocess.STDOUT, cwd=REPO, env=env)
    client = Client(f"http://127.0.0.1:{port}")

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"remediator exited {proc.returncode}: {log.read_text()}")
        try:
            return requests.get(client.url + "/healthz", timeout=1).ok
        except requests.ConnectionError:
            return False
    wait_for(up, timeout=30, what="remediator /healthz")
    try:
        yield client
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pids_of(proc: subprocess.Popen[bytes]) -> set[int]:
    """The process and its descendants now."""
    try:
        p = psutil.Process(proc.pid)
        return {proc.pid} | {c.pid for c in p.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def alive_pids(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def kill_tree(pids: set[int]) -> None:
    """Test cleanup: SIGKILL what is left of the given pids."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def job_tree_pids(run: Run) -> set[int]:
    """Every live process of the run, by the same rule trainguard uses."""
    from trainguard.config import JobConfig, LaunchConfig
    from trainguard.process import alive, job_processes

    job = JobConfig(name=run.name, output_dir=run.output_dir,
                    launch=LaunchConfig(workdir=run.root, script=run.script),
                    log_file=run.log_file)
    return {p.pid for p in alive(job_processes(job))}

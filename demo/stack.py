"""Start the whole trainguard stack as real processes on loopback: the demo and e2e use it.

Exporter, Prometheus (the project's own rule files from deploy/prometheus, with
tunables shortened through the documented override: a different ``tunables.yml``),
Alertmanager (deploy/alertmanager/alertmanager.yml with the webhook pointed at this
stack's remediator and its bearer-token file) and the remediator.  Every process logs to
``<workdir>/logs/<name>.log`` and is stopped, with its whole process group, by
:meth:`Stack.stop`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
ALERTMANAGER_YML = DEPLOY / "alertmanager" / "alertmanager.yml"

# Fast tunables for a demo or test: detection in seconds instead of minutes.  These are
# the same record names as deploy/prometheus/rules/tunables.yml; only values differ.
FAST_TUNABLES: dict[str, float] = {
    "startup_grace_seconds": 8,
    "gpu_idle_utilization_ratio": 0.20,
    "gpu_idle_seconds": 8,
    "stall_seconds": 10,
    "gpu_busy_utilization_ratio": 0.90,
    "gpu_spin_power_ratio": 0.30,
    "gpu_spin_seconds": 8,
    "process_down_seconds": 5,
    "checkpoint_stale_seconds": 3600,
}


GROUP_WAIT_SECONDS = 1.0  # Alertmanager's group_wait in this stack (see _write_alertmanager_config)


def rule_debounce_seconds() -> float:
    """The ``for:`` of deploy's remediating alerts (one value for all of them)."""
    rules = yaml.safe_load((RULES_DIR / "trainguard.rules.yml").read_text())
    fors = {str(r["for"]) for g in rules["groups"] for r in g["rules"]
            if r.get("labels", {}).get("remediate") == "true"}
    if len(fors) != 1:
        raise ValueError(f"expected one for: among the remediating alerts, got {fors}")
    text = fors.pop()
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


def detection_seconds(tunable_seconds: float) -> float:
    """How long the configuration alone makes a failure wait before the remediator hears:
    the tunable's duration, the rules' debounce, Alertmanager's group_wait."""
    return tunable_seconds + rule_debounce_seconds() + GROUP_WAIT_SECONDS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(*names: str) -> str:
    """The first of ``names`` found on PATH (Debian calls Alertmanager prometheus-alertmanager)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(f"none of {', '.join(names)} is installed (run scripts/bootstrap.sh)")


def prometheus_ui_prefix(prometheus: str | None = None) -> str:
    """Where Prometheus serves its alert and target pages: Debian's 2.x package serves only
    the classic UI (``/classic/alerts``; ``/alerts`` is 404), 3.x only the new one."""
    try:
        out = subprocess.run([prometheus or binary("prometheus"), "--version"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "/classic"
    return "/classic" if "version 2." in (out.stdout + out.stderr) else ""


def tunables_yaml(values: Mapping[str, float]) -> str:
    """A tunables override file: deploy's record names, these values."""
    default = yaml.safe_load((RULES_DIR / "tunables.yml").read_text())
    rules = default["groups"][0]["rules"]
    names = {r["record"].rsplit(":", 1)[-1] for r in rules}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"not a tunable in {RULES_DIR / 'tunables.yml'}: {sorted(unknown)}")
    for rule in rules:
        key = rule["record"].rsplit(":", 1)[-1]
        if key in values:
            rule["expr"] = f"vector({values[key]:g})"
    return str(yaml.safe_dump(default, sort_keys=False))


@dataclass
class Stack:
    """The running stack; create with :meth:`start`, stop with :meth:`stop`."""

    workdir: Path
    config_path: Path
    ports: dict[str, int]
    token: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # ------------------------------------------------------------------ set-up
    @classmethod
    def prepare(cls, workdir: Path, jobs: list[dict[str, Any]], *,
                remediator: Mapping[str, Any] | None = None,
                exporter: Mapping[str, Any] | None = None) -> Stack:
        """Write the trainguard config (jobs as given) and pick free ports; start nothing."""
        workdir = workdir.resolve()
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        ports = {k: free_port() for k in ("exporter", "remediator", "prometheus", "alertmanager")}
        token = secrets.token_urlsafe(24)
        token_file = workdir / "webhook-token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        config = {
            "jobs": jobs,
            "exporter": {"listen": f"127.0.0.1:{ports['exporter']}",
                         "checkpoint_rescan_seconds": 1, **(exporter or {})},
            "remediator": {"listen": f"127.0.0.1:{ports['remediator']}",
                           "token_file": str(token_file),
                           "state_path": str(workdir / "remediator.sqlite3"),
                           **(remediator or {})},
        }
        config_path = workdir / "trainguard.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return cls(workdir=workdir, config_path=config_path, ports=ports, token=token)

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - child owns it
        try:
            self.procs[name] = subprocess.Popen(
                argv, cwd=self.workdir, env=dict(env or os.environ), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def start(self, *, env: Mapping[str, str] | None = None,
              tunables: Mapping[str, float] | None = FAST_TUNABLES,
              interval_s: float = 1.0, fast_alertmanager: bool = True) -> None:
        """Start all four processes and wait until each answers.

        ``tunables=None`` runs deploy's own tunables.yml; with ``interval_s=15`` and
        ``fast_alertmanager=False`` the stack times everything as shipped.
        """
        trainguard = shutil.which("trainguard", path=os.environ.get("PATH")) or "trainguard"
        self._spawn("exporter", [trainguard, "exporter", "--config", str(self.config_path)], env)
        self._spawn("remediator", [trainguard, "remediator", "--config", str(self.config_path)],
                    env)
        self._write_alertmanager_config(fast_alertmanager)
        self._spawn("alertmanager", [
            binary("prometheus-alertmanager", "alertmanager"),
            f"--config.file={self.workdir / 'alertmanager.yml'}",
            f"--storage.path={self.workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{self.ports['alertmanager']}",
            "--cluster.listen-address=",  # no gossip port: a single local instance
        ])
        self._write_prometheus_config(tunables, interval_s)
        self._spawn("prometheus", [
            binary("prometheus"),
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}",
        ])
        for name, path in (("exporter", "/healthz"), ("remediator", "/healthz"),
                           ("alertmanager", "/-/ready"), ("prometheus", "/-/ready")):
            self.wait_http(name, path)

    def _write_prometheus_config(self, tunables: Mapping[str, float] | None,
                                 interval_s: float) -> None:
        override = self.workdir / "tunables.yml"
        if tunables is None:
            override.write_text((RULES_DIR / "tunables.yml").read_text())
        else:
            override.write_text(tunables_yaml(tunables))
        rule_files = sorted(str(p) for p in RULES_DIR.glob("*.yml") if p.name != "tunables.yml")
        interval = f"{interval_s:g}s"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [*rule_files, str(override)],
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [f"127.0.0.1:{self.ports['alertmanager']}"]}]}]},
            "scrape_configs": [
                {"job_name": "trainguard-exporter",
                 "static_configs": [{"targets": [f"127.0.0.1:{self.ports['exporter']}"]}]},
                {"job_name": "trainguard-remediator",
                 "static_configs": [{"targets": [f"127.0.0.1:{self.ports['remediator']}"]}]},
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _write_alertmanager_config(self, fast: bool = True) -> None:
        """deploy's alertmanager.yml, pointed at this stack's remediator and token file
        (with ``fast``, grouping timers in seconds instead of deploy's)."""
        config = yaml.safe_load(ALERTMANAGER_YML.read_text())
        url = f"http://127.0.0.1:{self.ports['remediator']}/alerts"
        found = False
        for receiver in config.get("receivers", []):
            for hook in receiver.get("webhook_configs", []) or []:
                if str(hook.get("url", "")).endswith("/alerts"):
                    hook["url"] = url
                    auth = hook.setdefault("http_config", {}).setdefault("authorization", {})
                    auth["credentials_file"] = str(self.workdir / "webhook-token")
                    found = True
        if not found:
            raise ValueError(f"{ALERTMANAGER_YML}: no webhook receiver ending in /alerts")
        route = config["route"]
        for r in [route, *(route.get("routes", []) or [])] if fast else []:
            r["group_wait"] = f"{GROUP_WAIT_SECONDS:g}s"
            r["group_interval"] = "2s"
        (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    # ------------------------------------------------------------------ talking to it
    def url(self, name: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def where_to_look(self) -> list[tuple[str, str]]:
        """(what, URL) of the pages a person can open while this stack runs.  Debian's
        Alertmanager has no web UI (its / says so), so its alerts are the JSON API."""
        ui = prometheus_ui_prefix()
        return [("remediator status page", self.url("remediator", "/")),
                ("Prometheus alerts", self.url("prometheus", f"{ui}/alerts")),
                ("Prometheus targets", self.url("prometheus", f"{ui}/targets")),
                ("Alertmanager alerts (JSON)", self.url("alertmanager", "/api/v2/alerts")),
                ("exporter metrics", self.url("exporter", "/metrics"))]

    def get(self, name: str, path: str, *, token: bool = False, timeout: float = 5.0) -> bytes:
        request = urllib.request.Request(self.url(name, path))  # noqa: S310 - http only
        if token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body: bytes = response.read()
            return body

    def get_json(self, name: str, path: str, *, token: bool = False) -> Any:
        return json.loads(self.get(name, path, token=token))

    def wait_http(self, name: str, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see "
                                   f"{self.workdir / 'logs' / (name + '.log')}:\n"
                                   + self.log_tail(name))
            with contextlib.suppress(OSError, urllib.error.URLError):
                self.get(name, path, timeout=1.0)
                return
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not answer {path} within {timeout:.0f}s:\n"
                           + self.log_tail(name))

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def firing_alerts(self) -> list[dict[str, Any]]:
        """Prometheus' active alerts (pending and firing)."""
        alerts: list[dict[str, Any]] = self.get_json(
            "prometheus", "/api/v1/alerts")["data"]["alerts"]
        return alerts

    # ------------------------------------------------------------------ tear-down
    def stop(self) -> None:
        """Stop every process of the stack (TERM, then KILL), newest first."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

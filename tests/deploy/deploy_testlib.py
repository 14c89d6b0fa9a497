"""Helpers for the monitoring-stack tests: real tools as subprocesses, real daemons on
127.0.0.1, and small HTTP clients (conftest.py puts this folder on sys.path).

Every tool runs as a subprocess and a failure carries the tool's own output, so a broken
rule or config reads the same in pytest as on the command line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from helpers.common import REPO, free_port, wait_for

DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTMANAGER_DIR = DEPLOY / "alertmanager"
GRAFANA_DIR = DEPLOY / "grafana"
RULES = PROMETHEUS_DIR / "rules" / "trainguard.rules.yml"
TUNABLES = PROMETHEUS_DIR / "rules" / "tunables.yml"
FAST_TUNABLES = PROMETHEUS_DIR / "examples" / "tunables-fast.yml"
TRAINGUARD = str(Path(sys.executable).with_name("trainguard"))


def tool(name: str) -> str:
    """Absolute path of a required binary; a missing one is a failure, never a skip."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed (scripts/bootstrap.sh installs it)")
    return path


def run_tool(args: Sequence[str], cwd: Path | None = None, timeout: float = 60.0,
             expect_rc: int = 0) -> str:
    """Run a tool; fail with its stdout and stderr unless it exits ``expect_rc``."""
    proc = subprocess.run([tool(args[0]), *args[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != expect_rc:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode} "
                             f"(expected {expect_rc}):\n{out}")
    return out


def http_json(url: str, data: Any = None, headers: Mapping[str, str] | None = None,
              timeout: float = 5.0) -> tuple[int, Any]:
    """(status, decoded JSON or text) of a GET, or a POST of ``data`` as JSON."""
    body = None if data is None else json.dumps(data).encode()
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=body, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def reachable(url: str) -> bool:
    try:
        return http_json(url, timeout=1.0)[0] == 200
    except OSError:
        return False


class Daemon:
    """A real server started as a child process, its output kept in a log file."""

    def __init__(self, name: str, args: Sequence[str], log: Path, ready_url: str,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        self.ready_url = ready_url
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(list(args), stdout=self._out, stderr=subprocess.STDOUT,
                                     env=None if env is None else dict(env), cwd=cwd)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n"
                                 f"{self.log.read_text(errors='replace')[-4000:]}")
        return reachable(self.ready_url)

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(self.ready, timeout=timeout, what=f"{self.name} at {self.ready_url}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def start_prometheus(workdir: Path, config: Mapping[str, Any]) -> tuple[Daemon, str]:
    """A real Prometheus on a free loopback port with ``config``; (daemon, base URL)."""
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    run_tool(["promtool", "check", "config", str(cfg)])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = Daemon("prometheus", [
        tool("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ], workdir / "prometheus.log", url + "/-/ready")
    return daemon, url


def start_alertmanager(workdir: Path, config_text: str,
                       files: Mapping[str, str]) -> tuple[Daemon, str]:
    """A real Alertmanager with ``config_text`` as alertmanager.yml and ``files`` (relative
    path -> content, e.g. the webhook token) beside it; (daemon, base URL)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "alertmanager.yml"
    cfg.write_text(config_text)
    for rel, content in files.items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o600)
    run_tool(["amtool", "check-config", str(cfg)])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = Daemon("alertmanager", [
        tool("prometheus-alertmanager"), f"--config.file={cfg}",
        f"--storage.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=", "--log.level=warn",
    ], workdir / "alertmanager.log", url + "/-/ready")
    return daemon, url


def prom_query(base: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """Instant query; fails on a parse or evaluation error with Prometheus's message."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    status, body = http_json(f"{base}/api/v1/query?{urllib.parse.urlencode(params)}")
    if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
        raise AssertionError(f"query failed ({status}): {expr}\n{body}")
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    result: list[dict[str, Any]] = data["result"]
    return result


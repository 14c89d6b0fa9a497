"""A fleet: the fleet file's strict loader, the generated Alertmanager routes under
amtool, and two real Alertmanagers peered on loopback delivering each host's alert once,
to that host's remediator, with that host's token.

Every test starts from deploy/alertmanager/fleet.example.yml, the file deploy/README.md
shows, copied beside token files made here (tokens are never in git).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_testlib import (
    ALERTMANAGER_DIR,
    TRAINGUARD,
    Daemon,
    http_json,
    run_tool,
    tool,
)
from helpers.common import free_port, wait_for

from trainguard.config import ConfigError
from trainguard.fleet import alertmanager_config, load_fleet, receiver_name

EXAMPLE = ALERTMANAGER_DIR / "fleet.example.yml"
SHIPPED = ALERTMANAGER_DIR / "alertmanager.yml"
HOSTS = ("gpu-a", "gpu-b")


def fleet_dir(tmp_path: Path, text: str | None = None) -> Path:
    """The example fleet file in ``tmp_path`` with a 0600 token file per host."""
    (tmp_path / "secrets").mkdir(exist_ok=True)
    for host in HOSTS:
        token = tmp_path / "secrets" / f"{host}-webhook-token"
        token.write_text(f"token-of-{host}-0123456789\n")
        token.chmod(0o600)
    path = tmp_path / "fleet.yml"
    path.write_text(EXAMPLE.read_text() if text is None else text)
    return path


def generate(fleet: Path, out: Path) -> Path:
    """The README's command, as a user runs it."""
    proc = subprocess.run([TRAINGUARD, "fleet-routes", "--fleet", str(fleet), "--output",
                           str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_example_fleet_is_two_hosts_with_their_tokens(tmp_path: Path) -> None:
    fleet = load_fleet(fleet_dir(tmp_path))
    assert [h.name for h in fleet.hosts] == list(HOSTS)
    assert [h.token_file for h in fleet.hosts] == [
        (tmp_path / "secrets" / f"{h}-webhook-token").resolve() for h in HOSTS]


def test_generated_routes_pass_amtool_check_config(tmp_path: Path) -> None:
    out = generate(fleet_dir(tmp_path), tmp_path / "alertmanager.yml")
    assert "SUCCESS" in run_tool(["amtool", "check-config", str(out)])


@pytest.mark.parametrize(("labels", "receivers"), [
    ({"host": "gpu-a", "remediate": "true"}, f"{receiver_name('gpu-a')},notify"),
    ({"host": "gpu-b", "remediate": "true"}, f"{receiver_name('gpu-b')},notify"),
    # notify-only alerts never reach a remediator, whatever the host
    ({"host": "gpu-a", "remediate": "false"}, "notify"),
    # no host label: nobody can tell which machine it is about
    ({"remediate": "true"}, "notify"),
    # a host that is not in the fleet
    ({"host": "gpu-z", "remediate": "true"}, "notify"),
    # a label value that only looks like a host (matchers are exact)
    ({"host": "gpu-a.lab", "remediate": "true"}, "notify"),
])
def test_amtool_routes_each_hosts_alerts_to_its_own_remediator(
        tmp_path: Path, labels: dict[str, str], receivers: str) -> None:
    out = generate(fleet_dir(tmp_path), tmp_path / "alertmanager.yml")
    words = [f"{k}={v}" for k, v in {"alertname": "TrainingStalled",
                                      "training_job": "my-lora", **labels}.items()]
    run_tool(["amtool", "config", "routes", "test", f"--config.file={out}",
              f"--verify.receivers={receivers}", *words])


def test_generated_timings_and_grouping_are_the_shipped_files(tmp_path: Path) -> None:
    """One spelling of the routing policy: the fleet's file differs from the shipped one
    only by its per-host routes and by grouping on host too."""
    shipped = yaml.safe_load(SHIPPED.read_text())
    made = alertmanager_config(load_fleet(fleet_dir(tmp_path)))
    timing = ("group_wait", "group_interval", "repeat_interval")
    assert {k: made["route"][k] for k in timing} == {k: shipped["route"][k] for k in timing}
    # (the shipped file may group by host too: a single host's alerts have none)
    assert made["route"]["group_by"] == \
        ["host", *(g for g in shipped["route"]["group_by"] if g != "host")]
    ship_rem = shipped["route"]["routes"][0]
    for route in made["route"]["routes"][:-1]:
        assert {k: route[k] for k in (*timing, "continue")} == \
            {k: ship_rem[k] for k in (*timing, "continue")}
    ship_hook = shipped["receivers"][0]["webhook_configs"][0]
    for receiver in made["receivers"][:-1]:
        hook = receiver["webhook_configs"][0]
        assert hook["send_resolved"] == ship_hook["send_resolved"]
        assert hook["http_config"]["follow_redirects"] is False
        assert hook["http_config"]["authorization"]["type"] == "Bearer"


BAD = [
    ("hosts: []\n", "hosts", "non-empty list"),
    ("hosts: [{name: gpu-a, remediator_url: 'http://h:1/alerts', token_file: "
     "secrets/gpu-a-webhook-token, tokenfile: x}]\n", "hosts[0].tokenfile", "unknown key"),
    ("hosts: [{name: 'gpu a', remediator_url: 'http://h:1/alerts', token_file: "
     "secrets/gpu-a-webhook-token}]\n", "hosts[0].name", "host name"),
    ("hosts: [{name: gpu-a, remediator_url: 'ftp://h/alerts', token_file: "
     "secrets/gpu-a-webhook-token}]\n", "hosts[0].remediator_url", "http://"),
    ("hosts: [{name: gpu-a, remediator_url: 'http://u:p@h:1/alerts', token_file: "
     "secrets/gpu-a-webhook-token}]\n", "hosts[0].remediator_url", "credentials"),
    ("hosts: [{name: gpu-a, remediator_url: 'http://h:99999/alerts', token_file: "
     "secrets/gpu-a-webhook-token}]\n", "hosts[0].remediator_url", "out of range"),
    ("hosts: [{name: gpu-a, remediator_url: 'http://h:1/alerts'}]\n",
     "hosts[0].token_file", "required"),
    ("hosts: [{name: gpu-a, remediator_url: 'http://h:1/alerts', token_file: "
     "secrets/nope}]\n", "hosts[0].token_file", "no such file"),
    ("hosts: [{name: gpu-a, remediator_url: 'http://h:1/alerts', token_file: "
     "secrets/gpu-a-webhook-token}, {name: gpu-a, remediator_url: 'http://h:2/alerts', "
     "token_file: secrets/gpu-b-webhook-token}]\n", "hosts[1].name", "duplicate host"),
    ("hosts: [{name: gpu-a, remediator_url: 'http://h:1/alerts', token_file: "
     "secrets/gpu-a-webhook-token}, {name: gpu-b, remediator_url: 'http://h:1/alerts', "
     "token_file: secrets/gpu-b-webhook-token}]\n", "hosts[1].remediator_url", "one host"),
]


@pytest.mark.parametrize(("text", "keypath", "says"), BAD)
def test_fleet_file_errors_name_the_file_and_key(tmp_path: Path, text: str, keypath: str,
                                                  says: str) -> None:
    path = fleet_dir(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_fleet(path)
    assert info.value.keypath == keypath and says in info.value.message, info.value
    assert info.value.file == str(path.resolve())


def test_a_token_everyone_can_read_or_too_short_is_refused(tmp_path: Path) -> None:
    path = fleet_dir(tmp_path)
    token = tmp_path / "secrets" / "gpu-b-webhook-token"
    token.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_fleet(path)
    assert info.value.keypath == "hosts[1].token_file" and "chmod o-rwx" in str(info.value)
    token.chmod(0o640)  # group-readable is how Debian's Alertmanager user reads it
    load_fleet(path)
    token.write_text("short\n")
    with pytest.raises(ConfigError) as info:
        load_fleet(path)
    assert "at least 16" in str(info.value)


def test_the_command_fails_with_one_line_and_exit_2(tmp_path: Path) -> None:
    path = fleet_dir(tmp_path, "hosts: [{name: gpu-a}]\n")
    proc = subprocess.run([TRAINGUARD, "fleet-routes", "--fleet", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "hosts[0].remediator_url" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- HA pair

Delivery = tuple[str, str | None, dict[str, Any]]


@pytest.fixture
def sinks() -> Iterator[dict[str, tuple[str, list[Delivery]]]]:
    """One local HTTP sink per host, standing in for that host's remediator."""
    out: dict[str, tuple[str, list[Delivery]]] = {}
    servers = []
    for host in HOSTS:
        received: list[Delivery] = []

        class Sink(BaseHTTPRequestHandler):
            got = received

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.got.append((self.path, self.headers.get("Authorization"),
                                 json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        out[host] = (f"http://127.0.0.1:{server.server_address[1]}/alerts", received)
    try:
        yield out
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def start_peer(workdir: Path, config: Path, cluster_port: int, peer_port: int
               ) -> tuple[Daemon, str]:
    """A real Alertmanager on loopback, peered with the one at ``peer_port``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = Daemon("alertmanager", [
        tool("prometheus-alertmanager"), f"--config.file={config}",
        f"--storage.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        f"--cluster.listen-address=127.0.0.1:{cluster_port}",
        f"--cluster.advertise-address=127.0.0.1:{cluster_port}",
        f"--cluster.peer=127.0.0.1:{peer_port}", "--log.level=warn",
    ], workdir / "alertmanager.log", url + "/-/ready")
    return daemon, url


@pytest.mark.slow
def test_two_peered_alertmanagers_deliver_each_hosts_alert_once_to_its_remediator(
        tmp_path: Path, sinks: dict[str, tuple[str, list[Delivery]]]) -> None:
    fleet = fleet_dir(tmp_path)
    # The example's addresses, pointed at this test's sinks: nothing else changes.
    text = fleet.read_text()
    for host, ip in (("gpu-a", "10.0.0.11"), ("gpu-b", "10.0.0.12")):
        assert text.count(f"http://{ip}:9843/alerts") == 1
        text = text.replace(f"http://{ip}:9843/alerts", sinks[host][0])
    fleet.write_text(text)
    config = generate(fleet, tmp_path / "alertmanager.yml")
    p1, p2 = free_port(), free_port()
    t0 = time.monotonic()
    one, url1 = start_peer(tmp_path / "am1", config, p1, p2)
    two, url2 = start_peer(tmp_path / "am2", config, p2, p1)
    try:
        one.wait_ready(60)
        two.wait_ready(60)

        def peered() -> bool:
            for url in (url1, url2):
                status, body = http_json(f"{url}/api/v2/status")
                cluster = body.get("cluster", {}) if isinstance(body, dict) else {}
                if status != 200 or cluster.get("status") != "ready" or \
                        len(cluster.get("peers") or []) != 2:
                    return False
            return True

        wait_for(peered, timeout=90, interval=0.5, what="the two Alertmanagers to peer")
        settled = time.monotonic() - t0
        now = datetime.now(timezone.utc).isoformat()
        alerts = [{"labels": {"alertname": "TrainingStalled", "training_job": "my-lora",
                              "host": host, "remediate": "true", "severity": "critical"},
                   "annotations": {"summary": "stalled"}, "startsAt": now}
                  for host in HOSTS]
        # Prometheus sends every alert to every Alertmanager of the pair.
        for url in (url1, url2):
            status, body = http_json(f"{url}/api/v2/alerts", alerts)
            assert status == 200, body
        posted = time.monotonic()
        for host in HOSTS:
            wait_for(lambda h=host: sinks[h][1], timeout=60,  # type: ignore[misc]
                     what=f"{host}'s delivery (group_wait 10s)")
        first = time.monotonic() - posted
        # The second peer waits --cluster.peer-timeout (15 s) for the first one's log
        # entry before it would send: wait that out, and more.
        time.sleep(15 + 10)
        for host in HOSTS:
            received = sinks[host][1]
            assert len(received) == 1, (host, received)
            _path, auth, payload = received[0]
            assert auth == f"Bearer token-of-{host}-0123456789"
            assert [a["labels"]["host"] for a in payload["alerts"]] == [host]
        print(f"\nHA pair: peered and ready {settled:.1f}s after start; first delivery "
              f"{first:.1f}s after the post (group_wait 10s); one delivery per host")
    finally:
        one.stop()
        two.stop()


@pytest.mark.parametrize("example", [
    "alertmanager/fleet.example.yml", "prometheus/examples/fleet/targets/exporters.yml",
    "slurm/trainguard.yaml", "slurm/train.sbatch"])
def test_the_readme_shows_the_tested_example_files_verbatim(example: str) -> None:
    """deploy/README.md's fleet and Slurm examples are these files, which the tests use."""
    readme = (ALERTMANAGER_DIR.parent / "README.md").read_text()
    text = (ALERTMANAGER_DIR.parent / example).read_text()
    assert f"\n{text}```\n" in readme, f"deploy/README.md does not show {example} verbatim"

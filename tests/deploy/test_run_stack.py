"""deploy/run-stack.sh, driven as a person at a terminal would: its refusals (exit 2, one
line per problem, nothing started), its pre-flight port check, other ports, the URLs it
prints, Ctrl-C (exit 0, every part stopped) and a part that dies (the rest stopped)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_testlib import TUNABLES, http_json
from helpers.common import REPO, free_port, wait_for
from helpers.runstack import SCRIPT, RunStack, pid_alive, run_script, write_config


def test_syntax() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_refuses_without_config_or_with_unknown_arguments(tmp_path: Path) -> None:
    for args, message in (((), "--config FILE is required"),
                          (("--config", str(tmp_path / "nope.yaml")), "no such config"),
                          (("--bogus",), "unknown argument"),
                          (("--config", "x", "--prometheus-port", "http"), "port number")):
        proc = run_script(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())


def test_refuses_a_config_without_a_token_for_the_remediator(tmp_path: Path) -> None:
    cfg = tmp_path / "tg.yaml"
    cfg.write_text(f"jobs:\n  - name: a\n    output_dir: {tmp_path}\n")
    proc = run_script("--config", str(cfg), "--state", str(tmp_path / "state"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "token_file" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_config_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("output_dir:", "output_dirr:"))
    proc = run_script("--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("run-stack.sh: config error: ")
    assert str(cfg) in lines[0] and "output_dirr" in lines[0]
    assert not (tmp_path / ".trainguard-stack" / "logs").exists()  # nothing started


def _hold(port: int) -> socket.socket:
    """Something else listening on ``port`` (as a second stack would)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.mark.parametrize("busy", ["Prometheus", "Alertmanager", "exporter", "remediator"])
def test_a_busy_port_is_named_before_anything_starts(tmp_path: Path, busy: str) -> None:
    ports = {name: free_port() for name in ("Prometheus", "Alertmanager", "exporter",
                                            "remediator")}
    cfg = write_config(tmp_path, exporter_port=ports["exporter"],
                       remediator_port=ports["remediator"])
    with _hold(ports[busy]):
        proc = run_script("--config", str(cfg), "--prometheus-port", str(ports["Prometheus"]),
                          "--alertmanager-port", str(ports["Alertmanager"]), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"port {ports[busy]} on 127.0.0.1 for " in line and busy in line, line
    assert "is in use" in line
    how = {"Prometheus": "--prometheus-port N", "Alertmanager": "--alertmanager-port N",
           "exporter": "exporter.listen", "remediator": "remediator.listen"}[busy]
    assert how in line, line
    assert "started" not in proc.stderr
    assert not (tmp_path / ".trainguard-stack" / "logs").exists()


def test_two_parts_on_one_port_are_refused(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, exporter_port=port)
    proc = run_script("--config", str(cfg), "--prometheus-port", str(port),
                      "--alertmanager-port", str(free_port()), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"port {port} is set for both Prometheus and the exporter" in proc.stderr


def test_check_starts_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    proc = run_script("--config", str(cfg), "--check", "--tunables", str(TUNABLES),
                      "--prometheus-port", str(free_port()),
                      "--alertmanager-port", str(free_port()), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nothing started" in proc.stderr and "started (pid" not in proc.stderr


def test_a_misspelled_tunable_is_refused(tmp_path: Path) -> None:
    """A misspelled record passes promtool, and the alert that reads the real name would
    silently never fire: the pre-flight names both ends."""
    cfg = write_config(tmp_path)
    mine = tmp_path / "my-tunables.yml"
    mine.write_text(TUNABLES.read_text().replace("trainguard:tunable:gpu_idle_seconds",
                                                 "trainguard:tunable:gpu_idle_second"))
    proc = run_script("--config", str(cfg), "--tunables", str(mine), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert f"run-stack.sh: {mine}: record trainguard:tunable:gpu_idle_second is read by no " \
           "rule; did you mean trainguard:tunable:gpu_idle_seconds?" in lines
    missing = [line for line in lines if "no record trainguard:tunable:gpu_idle_seconds" in line]
    assert len(missing) == 1 and "TrainingGPUIdle" in missing[0], lines
    assert "Traceback" not in proc.stderr and "started" not in proc.stderr


def test_state_folder_is_beside_the_config_and_ignored_by_git(tmp_path: Path) -> None:
    """Never `.trainguard-stack/` in whatever folder the script was started from; and if
    a config sits in this checkout, its state folder is ignored by git."""
    proc = subprocess.run(["git", "check-ignore", "-q", "--no-index",
                           ".trainguard-stack/prometheus/data/wal"], cwd=REPO, check=False)
    assert proc.returncode == 0, ".trainguard-stack/ is not in .gitignore"
    cfg = write_config(tmp_path / "fluxgym")
    started_in = tmp_path / "elsewhere"
    started_in.mkdir()
    assert run_script("--config", str(cfg), "--prometheus-port", str(free_port()),
                      "--alertmanager-port", str(free_port()), "--check",
                      cwd=started_in).returncode == 0
    assert (tmp_path / "fluxgym" / ".trainguard-stack").is_dir()
    assert not list(started_in.iterdir())


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[RunStack, dict[str, int], Path]]:
    ports = {"prometheus": free_port(), "alertmanager": free_port(),
             "exporter": free_port(), "remediator": free_port()}
    cfg = write_config(tmp_path / "fluxgym", exporter_port=ports["exporter"],
                       remediator_port=ports["remediator"])
    rs = RunStack(["--config", str(cfg), "--prometheus-port", str(ports["prometheus"]),
                   "--alertmanager-port", str(ports["alertmanager"])],
                  cwd=tmp_path, log=tmp_path / "run-stack.out")
    try:
        yield rs, ports, cfg
    finally:
        rs.kill()


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status)


@pytest.mark.slow
def test_other_ports_every_printed_page_answers_and_ctrl_c_exits_0(
        stack: tuple[RunStack, dict[str, int], Path]) -> None:
    rs, ports, cfg = stack
    text = rs.wait_up()
    pids = rs.component_pids()
    assert set(pids) == {"prometheus", "alertmanager", "exporter", "remediator"}
    assert f"remediator status page  http://127.0.0.1:{ports['remediator']}/" in text
    urls = rs.urls()
    assert {u.split("/")[2].split(":")[1] for u in urls} == {str(p) for p in ports.values()}
    for url in urls:  # no link that goes nowhere (Debian's Prometheus: classic pages only)
        assert _get(url) == 200, url
    assert (cfg.parent / ".trainguard-stack" / "logs" / "prometheus.log").is_file()
    # Prometheus scrapes this stack's exporter and remediator, and alerts to its Alertmanager.
    prom = f"http://127.0.0.1:{ports['prometheus']}"
    targets = wait_for(lambda: http_json(f"{prom}/api/v1/targets")[1]["data"]["activeTargets"],
                       timeout=30, what="Prometheus' scrape targets")
    scraped = {t["labels"]["job"]: t["scrapeUrl"] for t in targets}
    assert scraped == {
        "trainguard-exporter": f"http://127.0.0.1:{ports['exporter']}/metrics",
        "trainguard-remediator": f"http://127.0.0.1:{ports['remediator']}/metrics"}
    wait_for(lambda: http_json(f"{prom}/api/v1/alertmanagers")[1]["data"]["activeAlertmanagers"],
             timeout=30, what="Prometheus to find its Alertmanager")
    _, ams = http_json(f"{prom}/api/v1/alertmanagers")
    assert [a["url"] for a in ams["data"]["activeAlertmanagers"]] == [
        f"http://127.0.0.1:{ports['alertmanager']}/api/v2/alerts"]

    # Each part runs in its own session: the terminal's Ctrl-C reaches the script only,
    # which stops the parts itself (TERM, newest first), and a closed terminal's SIGHUP
    # (a reload to Prometheus) never reaches them.
    assert all(os.getsid(pid) == pid != rs.proc.pid for pid in pids.values())
    rs.ctrl_c()
    assert rs.wait(timeout=60) == 0, rs.text()
    out = rs.text()
    assert "run-stack.sh: stopping (SIGINT)" in out and out.rstrip().endswith("stopped")
    assert "exited" not in out, out
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    logs = cfg.parent / ".trainguard-stack" / "logs"
    for name in ("prometheus", "alertmanager"):
        assert "exiting gracefully" in (logs / f"{name}.log").read_text(), name
    assert "trainguard exporter stopped" in (logs / "exporter.log").read_text()
    for port in ports.values():  # every part let go of its port
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_a_part_that_dies_takes_the_stack_down_and_is_named(
        stack: tuple[RunStack, dict[str, int], Path]) -> None:
    rs, _, _ = stack
    rs.wait_up()
    pids = rs.component_pids()
    time.sleep(0.5)
    os.kill(pids["exporter"], signal.SIGKILL)
    assert rs.wait(timeout=60) == 1
    out = rs.text()
    assert "run-stack.sh: exporter exited (status 137)" in out, out
    assert not [name for name, pid in pids.items() if pid_alive(pid)]


def test_no_remediator_needs_no_token(tmp_path: Path) -> None:
    cfg = tmp_path / "tg.yaml"
    (tmp_path / "out").mkdir()
    cfg.write_text(f"jobs:\n  - name: a\n    output_dir: out\nexporter:\n"
                   f"  listen: 127.0.0.1:{free_port()}\n")
    proc = run_script("--config", str(cfg), "--no-remediator", "--check",
                      "--prometheus-port", str(free_port()),
                      "--alertmanager-port", str(free_port()), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

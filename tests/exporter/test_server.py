"""``trainguard exporter`` as a real process: HTTP endpoints, promtool, CLI errors, signals."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from exporter_testlib import TRAINGUARD, ExporterProcess, http_get, value, write_config
from helpers.common import free_port, wait_for
from helpers.fakenvml import FakeGPUs, env_for


@pytest.fixture
def setup(tmp_path: Path, fake_nvml_lib: Path) -> tuple[Path, FakeGPUs]:
    gpus = FakeGPUs(tmp_path / "gpus")
    gpus.add(2, utilization=50)
    (tmp_path / "out").mkdir()
    cfg = write_config(tmp_path / "trainguard.yaml", [
        {"name": "my-lora", "output_dir": "out", "log_file": "out/train.log"},
        {"name": "other.run", "output_dir": "out2"}])
    return cfg, gpus


@pytest.fixture
def exporter(setup: tuple[Path, FakeGPUs], tmp_path: Path) -> Iterator[ExporterProcess]:
    cfg, gpus = setup
    proc = ExporterProcess(cfg, free_port(), env_for(gpus.root), tmp_path / "exporter.log")
    wait_for(proc.ready, timeout=20, what="exporter /healthz")
    yield proc
    proc.stop()


def test_endpoints(exporter: ExporterProcess) -> None:
    status, ctype, body = http_get(exporter.url + "/healthz")
    assert (status, body) == (200, "ok\n")
    assert http_get(exporter.url + "/")[0] == 404
    assert http_get(exporter.url + "/metricsx")[0] == 404
    status, ctype, body = http_get(exporter.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert 'trainguard_gpu_utilization_ratio{gpu="1"' in body
    assert 'trainguard_job_process_up{training_job="other.run"} 0.0' in body
    status, ctype, body = http_get(exporter.url + "/metrics",
                                   {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert ctype.startswith("application/openmetrics-text") and body.endswith("# EOF\n")


def test_every_collector_succeeds_and_reports_its_duration(exporter: ExporterProcess) -> None:
    m = exporter.scrape()
    for name in ("gpu", "process", "progress", "checkpoint"):
        assert value(m, "trainguard_collector_success", collector=name) == 1, name
        duration = value(m, "trainguard_collector_duration_seconds", collector=name)
        assert duration is not None and 0 <= duration < 5
    for status in ("valid", "repairable", "invalid", "writing"):
        assert value(m, "trainguard_checkpoints", training_job="my-lora", status=status) == 0
    assert value(m, "trainguard_exporter_build_info", version=_version()) == 1


def test_build_info_is_one_labelled_sample(exporter: ExporterProcess) -> None:
    body = http_get(exporter.url + "/metrics")[2]
    lines = [line for line in body.splitlines() if line.startswith("trainguard_exporter_build")]
    assert lines == [f'trainguard_exporter_build_info{{version="{_version()}"}} 1.0'], lines


def _version() -> str:
    from trainguard import __version__

    return __version__


def test_promtool_check_metrics_is_clean(exporter: ExporterProcess) -> None:
    body = http_get(exporter.url + "/metrics")[2]
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_sigterm_exits_cleanly_after_a_useful_start_line(exporter: ExporterProcess) -> None:
    rc = exporter.stop(signal.SIGTERM)
    assert rc == 0
    log = exporter.log.read_text()
    start = [line for line in log.splitlines() if "serving" in line]
    assert len(start) == 1
    assert exporter.url + "/metrics" in start[0] and "my-lora, other.run" in start[0]
    assert "Traceback" not in log


def test_sigint_exits_cleanly(exporter: ExporterProcess) -> None:
    assert exporter.stop(signal.SIGINT) == 0


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAINGUARD, "exporter", *args], capture_output=True, text=True,
                          timeout=30, env=env, check=False)


@pytest.mark.parametrize("listen", ["nohost", "127.0.0.1:99999", "127.0.0.1:x", ":9842"])
def test_bad_listen_is_a_usage_error(setup: tuple[Path, FakeGPUs], listen: str) -> None:
    r = _run("--config", str(setup[0]), "--listen", listen)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--listen" in r.stderr
    assert "Traceback" not in r.stderr


def test_config_errors_exit_2(tmp_path: Path) -> None:
    r = _run("--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  - name: a\n    output_dir: x\nexporter:\n  lisen: 1\n")
    r = _run("--config", str(bad))
    assert r.returncode == 2 and "exporter.lisen" in r.stderr


def test_port_in_use_is_one_clear_line(setup: tuple[Path, FakeGPUs]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _run("--config", str(setup[0]), "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 2
    assert f"127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_listen_address_from_config(tmp_path: Path, setup: tuple[Path, FakeGPUs]) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "c2.yaml", [{"name": "j", "output_dir": "out"}],
                       {"listen": f"127.0.0.1:{port}"})
    proc = subprocess.Popen([TRAINGUARD, "exporter", "--config", str(cfg)],
                            env=env_for(setup[1].root), stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}/healthz"), timeout=20,
                 what="exporter on the config's address")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def _up(url: str) -> bool:
    try:
        return http_get(url, timeout=1)[0] == 200
    except OSError:
        return False

"""Hardening found in issue 10's review, each point against the real server or files.

Each test fails on the code before the fix: deep JSON and lone surrogates answered 500;
half-open connections held the webhook for waitress' default 120 s; a world-readable
token was accepted; the incident database was created with the umask's 0644; the status
page re-inspected every checkpoint on every request; temp files of a killed repair
stayed forever; a resumed run inherited the remediator's systemd sandbox.
"""

from __future__ import annotations

import configparser
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests
from helpers.checkpoints import make_accelerate_checkpoint
from helpers.common import wait_for
from helpers.remediator import (
    TOKEN,
    VENV_BIN,
    make_run,
    payload,
    process_server,
    thread_server,
    write_config,
)

from remediator.actions.launch import systemd_run_argv, write_env_file

pytestmark = pytest.mark.slow
TRAINGUARD = str(Path(VENV_BIN) / "trainguard")
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def test_deep_json_and_lone_surrogates_are_400_not_500(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, [make_run(tmp_path, "a")])
    with thread_server(cfg) as client:
        deep = "[" * 5000 + "]" * 5000
        r = requests.post(client.url + "/alerts", data=deep, headers=AUTH, timeout=10)
        assert r.status_code == 400 and "nested" in r.json()["error"]
        for label in ('"training_job": "\\ud800a"', '"alertname": "\\udfff"',
                      '"\\ud800": "x"'):
            body = ('{"version": "4", "alerts": [{"status": "firing", "labels": {' + label +
                    '}, "startsAt": "2026-01-01T00:00:00Z"}]}')
            r = requests.post(client.url + "/alerts", data=body, headers=AUTH, timeout=10)
            assert r.status_code == 400, (label, r.status_code, r.text)
            assert "Unicode" in r.json()["error"]
        assert client.incidents() == []


def test_half_open_connections_cannot_hold_the_webhook_for_long(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, [make_run(tmp_path, "a")])
    with process_server(cfg, tmp_path / "remediator.log") as client:
        host, port = client.url.split("//")[1].split(":")
        stalled = []
        for _ in range(120):  # more than waitress' connection limit
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Len")  # and nothing more
            stalled.append(s)
        t0 = time.monotonic()
        r = requests.post(client.url + "/alerts", json=payload("a", alertname="Probe"),
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=40)
        elapsed = time.monotonic() - t0
        for s in stalled:
            s.close()
        assert r.status_code == 202
        # channel_timeout 10 s + cleanup_interval 2 s, with room for a loaded CI box.
        assert elapsed < 25, f"answered after {elapsed:.1f}s"
        print(f"\nwebhook answered {elapsed:.1f}s after 120 half-open connections")


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, [make_run(tmp_path, "a")])
    token = tmp_path / "secrets" / "webhook-token"
    token.chmod(0o644)
    res = subprocess.run([TRAINGUARD, "remediator", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert "readable by other users" in res.stderr and f"chmod 600 {token}" in res.stderr
    assert "Traceback" not in res.stderr


def test_the_incident_database_is_private(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, [make_run(tmp_path, "a")])
    db = tmp_path / "state.sqlite3"
    db.touch(mode=0o644)
    db.chmod(0o644)  # an older file made under the umask is tightened too
    with thread_server(cfg) as client:
        client.post_alert(payload("nope"))
        wait_for(lambda: client.incidents(), what="the incident")
        for f in (db, db.with_name(db.name + "-wal")):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_the_status_page_does_not_reinspect_checkpoints_per_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainguard.checkpoint.scanner as scanner

    run = make_run(tmp_path, "a")
    for step in (10, 20, 30):
        make_accelerate_checkpoint(run.output_dir / f"a-step{step:08d}-state", step,
                                   mtime=time.time() - 3600)
    calls: list[Path] = []
    real = scanner.inspect_checkpoint

    def counting(path: Path, **kw: object) -> object:
        calls.append(path)
        return real(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scanner, "inspect_checkpoint", counting)
    cfg = write_config(tmp_path, [run])
    with thread_server(cfg) as client:
        first = requests.get(client.url + "/", timeout=10)
        assert first.status_code == 200 and "a-step00000030-state" in first.text
        n = len(calls)
        for _ in range(20):
            assert requests.get(client.url + "/", timeout=10).status_code == 200
        assert len(calls) == n, f"{len(calls) - n} inspections for 20 page views"


def test_leftovers_of_a_killed_repair_or_copy_are_removed_at_start(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a")
    ckpt = make_accelerate_checkpoint(run.output_dir / "a-step00000010-state", 10,
                                      mtime=time.time() - 3600)
    ours = [ckpt / ".random_states_0.pkl.trainguard-tmp-4242-123456789",
            run.script.parent / ".train.trainguard-resume.sh.tmp-4242"]
    users = [ckpt / ".hidden-user-file", run.script.parent / ".train.sh.swp"]
    for f in ours + users:
        f.write_bytes(b"x")
    cfg = write_config(tmp_path, [run])
    with thread_server(cfg):
        wait_for(lambda: not any(f.exists() for f in ours), what="leftovers removed")
    assert all(f.exists() for f in users)


def test_systemd_run_launch_path_keeps_the_run_out_of_the_remediators_sandbox(
        tmp_path: Path) -> None:
    """No systemd manager runs here, so the launch path is checked: the command that
    systemd-run gets, the 0600 environment file, and the unit that selects it."""
    env_file = tmp_path / ".trainguard-env-a"
    write_env_file(env_file, {"PATH": "/venv/bin:/usr/bin", "HF_TOKEN": 'se"cr\\et'})
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text() == 'HF_TOKEN="se\\"cr\\\\et"\nPATH="/venv/bin:/usr/bin"\n'
    argv = systemd_run_argv("trainguard-a-1", ["bash", "/r/train.trainguard-resume.sh"],
                            Path("/r"), Path("/r/train.log"), env_file)
    assert argv[:3] == ["systemd-run", "--user", "--collect"]
    assert f"--property=EnvironmentFile={env_file}" in argv
    assert "--working-directory=/r" in argv
    assert argv[-3:] == ["--", "bash", "/r/train.trainguard-resume.sh"]
    assert not any("HF_TOKEN" in a or "cr" in a for a in argv), "no secret on a command line"
    unit = Path(__file__).resolve().parents[2] / "deploy/systemd/trainguard-remediator.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(unit)
    assert "--launch-via systemd-run" in parser["Service"]["ExecStart"]
    assert "XDG_RUNTIME_DIR=" in parser["Service"]["Environment"]

"""The webhook's front door over real HTTP, with a real hung run that must stay untouched.

Every refused request is followed by the same check: the hung run's process tree is the
very same set of live pids, the trainer recorded no second start, and the store holds no
incident that could act.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from helpers.common import wait_for
from helpers.remediator import (
    TOKEN,
    Client,
    Run,
    alive_pids,
    job_tree_pids,
    kill_tree,
    make_run,
    metric_value,
    payload,
    pids_of,
    thread_server,
    write_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hung(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, set[int], Path]]:
    base = tmp_path_factory.mktemp("receiver")
    run = make_run(base, "hung-lora", extra=("--hang_at_step 3",))
    proc = run.start()
    wait_for(lambda: run.events("hang"), timeout=60, what="the run to hang")
    pids = pids_of(proc)
    config = write_config(base, [run], max_body_bytes=4096)
    yield run, pids, config
    kill_tree(pids_of(proc) | pids)
    proc.wait(10)


@pytest.fixture(scope="module")
def client(hung: tuple[Run, set[int], Path]) -> Iterator[Client]:
    with thread_server(hung[2]) as c:
        yield c


def untouched(hung: tuple[Run, set[int], Path], client: Client) -> None:
    run, pids, _ = hung
    time.sleep(0.3)  # a wrongly queued incident would have started acting by now
    assert alive_pids(pids) == pids
    assert job_tree_pids(run) == pids
    assert len(run.events("start")) == 1
    actionable = [i for i in client.incidents() if i["state"] != "ignored"]
    assert actionable == []


def test_no_token_is_401_and_nothing_happens(hung: tuple[Run, set[int], Path],
                                             client: Client) -> None:
    body = payload(hung[0].name)
    r = requests.post(client.url + "/alerts", json=body, timeout=10)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in r.text
    for wrong in ("nope", TOKEN[:-1], TOKEN + "x", ""):
        assert client.post_alert(body, token=wrong).status_code == 401
    r = requests.post(client.url + "/alerts", json=body, timeout=10,
                      headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401
    untouched(hung, client)


def test_incidents_api_needs_the_token(client: Client) -> None:
    assert requests.get(client.url + "/api/incidents", timeout=10).status_code == 401
    assert requests.post(client.url + "/api/jobs/hung-lora/reset", timeout=10).status_code == 401


@pytest.mark.parametrize("body, status, words", [
    (b"not json at all", 400, "JSON"),
    (b"[1, 2]", 400, "body: expected a JSON object"),
    (json.dumps({"version": "4"}).encode(), 400, "alerts: expected a list"),
    (json.dumps({"alerts": [{"status": "firing", "labels": {"training_job": "hung-lora"}}]})
     .encode(), 400, "alerts[0].startsAt"),
    (json.dumps({"alerts": [{"status": "burning", "labels": {}, "startsAt": "x"}]}).encode(),
     400, "alerts[0].status"),
    (json.dumps({"alerts": [{"status": "firing", "labels": {"training_job": 5},
                             "startsAt": "2026-01-01T00:00:00Z"}]}).encode(),
     400, "alerts[0].labels.training_job"),
    (json.dumps({"alerts": [{"status": "firing", "labels": {"training_job": "hung-lora"},
                             "startsAt": "yesterday"}]}).encode(), 400, "RFC 3339"),
    (b"{" + b" " * 5000 + b"}", 413, "max_body_bytes"),
])
def test_bad_bodies_are_4xx_naming_the_problem(hung: tuple[Run, set[int], Path], client: Client,
                                               body: bytes, status: int, words: str) -> None:
    r = client.post_alert(body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert "Traceback" not in r.text
    untouched(hung, client)


def test_oversized_chunked_body_is_413(hung: tuple[Run, set[int], Path], client: Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1000
    r = client.post_alert(chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    untouched(hung, client)


def test_unknown_job_is_recorded_and_ignored(hung: tuple[Run, set[int], Path],
                                             client: Client) -> None:
    body = payload("someone-elses-lora")
    body["alerts"][0]["labels"]["output_dir"] = "/etc"  # nothing but the job name is read
    r = client.post_alert(body)
    assert r.status_code == 202
    assert r.json()["alerts"][0]["decision"] == "ignored"
    ignored = [i for i in client.incidents() if i["job"] == "someone-elses-lora"]
    assert [i["state"] for i in ignored] == ["ignored"]
    no_label = payload("x")
    del no_label["alerts"][0]["labels"]["training_job"]
    assert client.post_alert(no_label).json()["alerts"][0]["decision"] == "ignored"
    untouched(hung, client)
    text = client.metrics()
    assert "someone-elses-lora" not in text
    assert metric_value(text, "trainguard_remediator_gave_up", training_job="hung-lora") == 0


def test_unknown_fields_are_ignored_and_resolved_alone_does_nothing(
        hung: tuple[Run, set[int], Path], client: Client) -> None:
    body = payload(hung[0].name, status="resolved")
    body["somethingNew"] = {"x": 1}
    body["alerts"][0]["alsoNew"] = [1, 2]
    r = client.post_alert(body)
    assert r.status_code == 202, r.text
    assert r.json()["alerts"][0]["decision"] == "resolved"
    untouched(hung, client)


def test_status_page_escapes_and_healthz(hung: tuple[Run, set[int], Path],
                                         client: Client) -> None:
    evil = "<script>alert(1)</script>"
    client.post_alert(payload(evil))
    page = requests.get(client.url + "/", timeout=10)
    assert page.status_code == 200
    assert "hung-lora" in page.text
    assert evil not in page.text and "&lt;script&gt;" in page.text
    assert requests.get(client.url + "/healthz", timeout=10).text == "ok\n"


def test_reset_unknown_job_404(client: Client) -> None:
    r = requests.post(client.url + "/api/jobs/nope/reset", timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404
    assert "nope" in r.json()["error"]


def test_refuses_to_start_without_a_token_file(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a")
    cfg = write_config(tmp_path, [run])
    data = yaml.safe_load(cfg.read_text())
    data["remediator"]["token_file"] = str(tmp_path / "missing-token")
    cfg.write_text(yaml.safe_dump(data))
    res = subprocess.run(["trainguard", "remediator", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": str(Path(__import__("sys").executable).parent)})
    assert res.returncode == 2
    assert "missing-token" in res.stderr and "Traceback" not in res.stderr
    del data["remediator"]["token_file"]
    cfg.write_text(yaml.safe_dump(data))
    res = subprocess.run(["trainguard", "remediator", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": str(Path(__import__("sys").executable).parent)})
    assert res.returncode == 2
    assert "token_file" in res.stderr


def test_reset_cli_unknown_job_is_exit_2(tmp_path: Path) -> None:
    import sys

    run = make_run(tmp_path, "a")
    cfg = write_config(tmp_path, [run])
    res = subprocess.run([str(Path(sys.executable).parent / "trainguard"), "remediator",
                          "reset", "nope", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "'nope'" in res.stderr and "configured: a" in res.stderr
    assert "Traceback" not in res.stderr

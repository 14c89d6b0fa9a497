"""Alertmanager: amtool check-config, routing of every alert, and a real Alertmanager
delivering a remediating alert to a webhook with the bearer token (and nothing else)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from deploy_testlib import ALERTMANAGER_DIR, http_json, run_tool, start_alertmanager
from helpers.common import wait_for
from test_prometheus_rules import NOTIFY_ONLY, REMEDIATING

CONFIG = ALERTMANAGER_DIR / "alertmanager.yml"
WEBHOOK_URL = "http://127.0.0.1:9843/alerts"


def test_amtool_check_config() -> None:
    out = run_tool(["amtool", "check-config", str(CONFIG)])
    assert "SUCCESS" in out, out


@pytest.mark.parametrize("alertname", sorted(REMEDIATING | NOTIFY_ONLY))
def test_route_of_every_alert(alertname: str) -> None:
    """Remediating alerts reach the remediator AND people; the others people only."""
    remediate = "true" if alertname in REMEDIATING else "false"
    want = "trainguard-remediator,notify" if remediate == "true" else "notify"
    run_tool(["amtool", "config", "routes", "test", f"--config.file={CONFIG}",
              f"--verify.receivers={want}", f"alertname={alertname}",
              f"remediate={remediate}", "training_job=my-lora", "severity=critical"])


def test_route_without_remediate_label_never_reaches_the_remediator() -> None:
    run_tool(["amtool", "config", "routes", "test", f"--config.file={CONFIG}",
              "--verify.receivers=notify", "alertname=SomethingElse", "training_job=x"])


Delivery = tuple[str, str | None, dict[str, Any]]  # (path, Authorization header, JSON body)


class _Capture(BaseHTTPRequestHandler):
    """Records what Alertmanager POSTs; a subclass per test gets its own list."""

    received: ClassVar[list[Delivery]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[Delivery]]]:
    received: list[Delivery] = []
    handler = type("Capture", (_Capture,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_real_alertmanager_sends_remediating_alerts_with_the_bearer_token(
        tmp_path: Path,
        webhook: tuple[str, list[Delivery]]) -> None:
    url, received = webhook
    text = CONFIG.read_text()
    assert text.count(WEBHOOK_URL) == 1
    token = "s3cret-token-for-this-test"
    # The shipped file, only the webhook's port changed; the token beside it, as documented.
    daemon, base = start_alertmanager(tmp_path, text.replace(WEBHOOK_URL, url),
                                      {"secrets/webhook-token": token + "\n"})
    try:
        daemon.wait_ready()
        now = datetime.now(timezone.utc).isoformat()
        alerts = [
            {"labels": {"alertname": "TrainingStalled", "training_job": "my-lora",
                        "remediate": "true", "severity": "critical", "reason": "no_progress"},
             "annotations": {"summary": "stalled"}, "startsAt": now},
            {"labels": {"alertname": "TrainingCheckpointStale", "training_job": "my-lora",
                        "remediate": "false", "severity": "warning"},
             "annotations": {"summary": "stale"}, "startsAt": now},
        ]
        status, body = http_json(f"{base}/api/v2/alerts", alerts)
        assert status == 200, body
        wait_for(lambda: received, timeout=30, what="the webhook delivery (group_wait 10s)")
        path, auth, payload = received[0]
        assert path == "/alerts"
        # Alertmanager strips the trailing newline of credentials files.
        assert auth == f"Bearer {token}"
        assert payload["version"] == "4"
        assert payload["groupLabels"] == {"alertname": "TrainingStalled",
                                          "training_job": "my-lora"}
        assert [a["labels"]["alertname"] for a in payload["alerts"]] == ["TrainingStalled"]
        assert all(p["alerts"][0]["labels"]["remediate"] == "true" for _, _, p in received)
    finally:
        daemon.stop()


def _seconds(text: str) -> float:
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


@pytest.mark.slow
def test_after_a_restart_the_next_incident_waits_one_group_interval_at_most(
        tmp_path: Path, webhook: tuple[str, list[Delivery]]) -> None:
    """Issue 16: a stack stopped right after a rescue never sent "resolved", so the
    restarted Alertmanager's notification log still holds that alert as firing; the next
    hang's alert has the same labels.  It must reach the remediator within one group
    interval, not after the route's repeat_interval.  Real Alertmanager, the shipped
    file's real timings, the notification log kept across the restart (as compose and
    systemd keep it; run-stack.sh drops it, tested end to end in tests/e2e)."""
    url, received = webhook
    text = CONFIG.read_text().replace(WEBHOOK_URL, url)
    (route,) = [r for r in yaml.safe_load(text)["route"]["routes"]
                if r["receiver"] == "trainguard-remediator"]
    group_wait, group_interval = _seconds(route["group_wait"]), _seconds(route["group_interval"])
    files = {"secrets/webhook-token": "s3cret-token-for-this-test\n"}
    labels = {"alertname": "TrainingGPUIdle", "training_job": "my-lora", "remediate": "true",
              "severity": "critical"}

    def fire(base: str) -> str:
        starts = datetime.now(timezone.utc).isoformat()
        status, body = http_json(f"{base}/api/v2/alerts", [
            {"labels": labels, "annotations": {"summary": "idle"}, "startsAt": starts}])
        assert status == 200, body
        return starts

    def delivered(starts: str) -> bool:
        return any(a["startsAt"][:19] == starts[:19] and a["status"] == "firing"
                   for _, _, p in list(received) for a in p["alerts"])

    daemon, base = start_alertmanager(tmp_path, text, files)
    try:
        daemon.wait_ready()
        first = fire(base)
        wait_for(lambda: delivered(first), timeout=group_wait + 20, what="the first incident")
        # Alertmanager logs a notification once the webhook has answered, after our sink
        # saw it: give it that moment (a loaded CI box needs it), still far inside the
        # group interval, so "resolved" is never sent.
        time.sleep(2.0)
    finally:
        daemon.stop()  # right after the rescue: "resolved" was never sent
    assert (tmp_path / "data" / "nflog").stat().st_size > 0, "no notification log kept"

    daemon, base = start_alertmanager(tmp_path, text, files)  # same storage path
    try:
        daemon.wait_ready()
        time.sleep(1.0)  # a later startsAt than the first incident's, to the second
        t0 = time.monotonic()
        second = fire(base)
        bound = group_wait + group_interval
        wait_for(lambda: delivered(second), timeout=bound + 15,
                 what=f"the next incident's delivery (group_wait {group_wait:g}s + "
                      f"group_interval {group_interval:g}s; repeat_interval "
                      f"{route['repeat_interval']})")
        elapsed = time.monotonic() - t0
        print(f"\nnext incident after a restart reached the webhook in {elapsed:.1f}s "
              f"(group_wait + group_interval = {bound:g}s)")
        assert elapsed <= bound + 5
    finally:
        daemon.stop()

"""A real Alertmanager, started on `trainguard alertmanager-config` output, delivers to
local sinks in the shape Discord, Slack, Telegram and a generic webhook expect, with each
secret read from its file; and a real remediator's report of a real failed run reaches a
person with the error line and what to do."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_testlib import TRAINGUARD, http_json, start_alertmanager
from helpers.common import wait_for
from helpers.remediator import (
    job_tree_pids,
    kill_tree,
    make_run,
    payload,
    thread_server,
    write_config,
)
from helpers.sink import Post, Sink, sink

from remediator.report import build
from remediator.store import Incident
from trainguard.config import load_config

pytestmark = pytest.mark.slow

DISCORD = "/api/webhooks/111/discord-secret-xyz"
SLACK = "/services/T000/B000/slack-secret"
HOOK = "/hook/webhook-secret"
TG_TOKEN = "123456:telegram-secret"


def secret(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def receivers(tmp: Path, s: Sink) -> list[dict[str, Any]]:
    return [
        {"kind": "discord", "secret_file": str(secret(tmp / "secrets/discord", s.url + DISCORD))},
        {"kind": "slack", "secret_file": str(secret(tmp / "secrets/slack", s.url + SLACK)),
         "channel": "#training"},
        {"kind": "webhook", "secret_file": str(secret(tmp / "secrets/hook", s.url + HOOK))},
        {"kind": "telegram", "secret_file": str(secret(tmp / "secrets/tg", TG_TOKEN)),
         "chat_id": -100123, "api_url": s.url},
    ]


def generate(config: Path, out: Path) -> str:
    proc = subprocess.run([TRAINGUARD, "alertmanager-config", "--config", str(config),
                           "--out", str(out)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    return out.read_text()


def report_of_a_missing_module(config_file: Path) -> dict[str, Any]:
    """The remediator's own report of a failed-for-good incident (remediator.report)."""
    config = load_config(config_file)
    inc = Incident(
        id=7, job="lora", alertname="TrainingProcessDown", starts_at="x", starts_ts=0.0,
        fingerprint=None, state="failed_permanently", outcome="failed_permanently",
        reason="not relaunched: the run's its log says \"ModuleNotFoundError: No module named "
               "'library'\" ...", created=0.0, updated=0.0, deliveries=1, evidence=None,
        failure_class="configuration", failure_cause="module-not-found",
        failure_line="ModuleNotFoundError: No module named 'library'")
    alert = build(config, config.jobs[0], inc)
    assert alert is not None
    return alert


def rule_alert(name: str, job: str, summary: str, **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, "training_job": job, "remediate": "false",
                       "severity": "critical", **labels},
            "annotations": {"summary": summary, "description": f"{summary}. More words."},
            "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def texts(posts: list[Post]) -> list[str]:
    return [p.raw.decode() for p in posts]


def test_every_kind_gets_its_shape_with_the_secret_from_its_file(tmp_path: Path) -> None:
    with sink() as s:
        config = tmp_path / "trainguard.yaml"
        token = secret(tmp_path / "secrets/webhook-token", "tok-0123456789abcdef")
        config.write_text(yaml.safe_dump({
            "jobs": [{"name": "lora", "output_dir": str(tmp_path / "out")},
                     {"name": "other", "output_dir": str(tmp_path / "out2")}],
            "remediator": {"token_file": str(token)},
            "notify": {"receivers": receivers(tmp_path, s)}}))
        text = generate(config, tmp_path / "state" / "alertmanager.yml")
        for needle in ("discord-secret-xyz", "webhook-secret", TG_TOKEN):
            assert needle in text         # Alertmanager 0.25 has no file variant for these
        assert "slack-secret" not in text  # ... but reads Slack's URL from its file
        daemon, base = start_alertmanager(tmp_path / "am", text, {})
        try:
            daemon.wait_ready()
            report = report_of_a_missing_module(config)
            alerts = [report,
                      rule_alert("TrainingFailedPermanently", "lora",
                                 "lora: the run failed (configuration: module-not-found)",
                                 **{"class": "configuration", "cause": "module-not-found"}),
                      rule_alert("TrainingDiskLow", "other",
                                 "other: 300MiB free where it saves")]
            status, body = http_json(f"{base}/api/v2/alerts", alerts)
            assert status == 200, body
            wait_for(lambda: all(len(s.to(p)) >= 2 for p in (DISCORD, SLACK, HOOK, "/bot")),
                     timeout=40, what="two messages for each kind")
            time.sleep(2)  # the muted rule alert's group flushed with DiskLow's
            _, status_doc = http_json(f"{base}/api/v2/status")
        finally:
            daemon.stop()

    # One message per decision and one for the disk; the rule alert saying the same as
    # the report was muted (inhibit_rules), for every kind.
    for prefix in (DISCORD, SLACK, HOOK, "/bot"):
        assert len(s.to(prefix)) == 2, prefix
        assert not any("(configuration: module-not-found)" in t for t in texts(s.to(prefix)))

    def one(prefix: str, needle: str) -> Any:
        (post,) = [p for p in s.to(prefix) if needle in p.raw.decode()]
        return post.json()

    # Discord: an embed with a title and the description (discord/discord.go in 0.25).
    d = one(DISCORD, "library")
    (embed,) = d["embeds"]
    assert embed["title"] == ("trainguard: lora: not relaunched: ModuleNotFoundError: No "
                              "module named 'library'")
    desc = embed["description"]
    assert "What was seen: the training process was gone" in desc
    assert "the end of its log says: ModuleNotFoundError: No module named 'library'" in desc
    assert "What to do: install it into the Python the run uses" in desc
    assert "trainguard remediator reset lora" in desc
    assert "Status page: http://127.0.0.1:9843/" in desc
    assert embed["color"] == 0x992D22  # Alertmanager's firing red
    disk = one(DISCORD, "300MiB")["embeds"][0]
    assert disk["title"] == "trainguard: other: 300MiB free where it saves"
    assert "other: 300MiB free where it saves. More words." in disk["description"]
    # Slack: attachments with title and text, the configured channel.
    sl = one(SLACK, "library")
    assert sl["channel"] == "#training"
    (att,) = sl["attachments"]
    assert att["title"].startswith("trainguard: lora: not relaunched")
    assert "What to do: install" in att["text"]
    # Generic webhook: Alertmanager's JSON (version 4) with every annotation.
    hook = one(HOOK, "library")
    assert hook["version"] == "4" and hook["receiver"] == "notify-reports"
    (a,) = hook["alerts"]
    assert a["labels"]["outcome"] == "failed_permanently" and a["labels"]["incident"] == "7"
    assert a["annotations"]["next"].startswith("install it into the Python")
    # Telegram: sendMessage to the bot token's URL, HTML with the text escaped.
    tg_posts = s.to(f"/bot{TG_TOKEN}/sendMessage")
    assert len(tg_posts) == 2
    tg = one(f"/bot{TG_TOKEN}/sendMessage", "library")
    assert str(tg["chat_id"]) == "-100123" and tg["parse_mode"] == "HTML"
    assert tg["text"].startswith("<b>trainguard: lora: not relaunched: ModuleNotFoundError")
    assert "No module named &#39;library&#39;" in tg["text"]
    # What Alertmanager shows of its config hides the secrets it knows as secrets.
    shown = yaml.safe_dump(status_doc)
    assert "discord-secret-xyz" not in shown and "telegram-secret" not in shown


def test_a_real_failed_run_is_reported_with_its_error_and_what_to_do(tmp_path: Path) -> None:
    """Issue 13: a run dies with ModuleNotFoundError at start; the remediator does not
    relaunch it and its report, through a real Alertmanager, names the error."""
    run = make_run(tmp_path, "nomod", extra=("--require_module library.train_util",),
                   once=False)
    run.start().wait(120)
    with sink() as s:
        config = write_config(tmp_path, [run])
        doc = yaml.safe_load(config.read_text())
        doc["notify"] = {"receivers": receivers(tmp_path, s)[:1],
                         "status_url": "http://pod-7.example:9843/"}
        config.write_text(yaml.safe_dump(doc))
        text = generate(config, tmp_path / "state" / "alertmanager.yml")
        daemon, base = start_alertmanager(tmp_path / "am", text, {})
        try:
            daemon.wait_ready()
            doc["notify"]["alertmanager_url"] = base
            config.write_text(yaml.safe_dump(doc))
            with thread_server(config) as client:
                client.post_alert(payload(run.name, alertname="TrainingProcessDown",
                                          starts=time.time()))
                (inc,) = client.settled(run.name)
                assert inc["state"] == "failed_permanently"
                wait_for(lambda: s.to(DISCORD), timeout=40, what="the report in Discord")
                client.post_alert(payload(run.name, alertname="TrainingProcessDown",
                                          starts=time.time() + 1))   # another incident...
                client.settled(run.name, n=2)
                time.sleep(7)
        finally:
            daemon.stop()
            kill_tree(job_tree_pids(run))
    posts = s.to(DISCORD)
    embed = posts[0].json()["embeds"][0]
    assert embed["title"] == ("trainguard: nomod: not relaunched: ModuleNotFoundError: No "
                              "module named 'library'")
    assert "What trainguard did: did not start it again: a restart would fail the same way" \
        in embed["description"]
    assert "What to do: install it into the Python the run uses" in embed["description"]
    assert "Status page: http://pod-7.example:9843/" in embed["description"]
    # ... is its own report (each decision is one message).
    assert len(posts) == 2 and posts[1].json()["embeds"][0]["title"] == embed["title"]

"""The `notify:` section and `trainguard alertmanager-config`: strict config, secrets only
in 0600 files, amtool accepting every kind, the routes, and the shipped
deploy/alertmanager/alertmanager.yml equal to the generated file for a config without
`notify:` (so the route lives in one place)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_testlib import ALERTMANAGER_DIR, TRAINGUARD, run_tool

from trainguard.alertmanager import document
from trainguard.config import ConfigError, load_config

SHIPPED = ALERTMANAGER_DIR / "alertmanager.yml"


def secret(path: Path, text: str, mode: int = 0o600) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


def all_kinds(tmp: Path) -> list[dict[str, Any]]:
    return [
        {"kind": "discord", "secret_file": secret(tmp / "s/d", "https://discord.com/api/"
                                                              "webhooks/1/abc")},
        {"kind": "slack", "secret_file": secret(tmp / "s/s", "https://hooks.slack.com/"
                                                             "services/T/B/x"),
         "channel": "#training"},
        {"kind": "webhook", "secret_file": secret(tmp / "s/w", "https://example.org/h?k=1"),
         "send_resolved": False},
        {"kind": "telegram", "secret_file": secret(tmp / "s/t", "123456:ABC-def_1"),
         "chat_id": -1001234567890},
        {"kind": "email", "secret_file": secret(tmp / "s/e", "smtp password"),
         "to": "me@example.org", "from": "trainguard@example.org",
         "smarthost": "smtp.example.org:587"},
    ]


def write(tmp: Path, notify: Any = None, **remediator: Any) -> Path:
    token = secret(tmp / "s/token", "tok-0123456789abcdef")
    doc: dict[str, Any] = {"jobs": [{"name": "lora", "output_dir": str(tmp / "out")}],
                           "remediator": {"token_file": token, **remediator}}
    if notify is not None:
        doc["notify"] = notify
    path = tmp / "trainguard.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAINGUARD, "alertmanager-config", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_shipped_file_is_the_generated_one_without_receivers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path))
    want = document(config, url="http://127.0.0.1:9843/alerts",
                    token_file="secrets/webhook-token")
    assert yaml.safe_load(SHIPPED.read_text()) == want


def test_every_kind_passes_amtool_in_both_secret_modes(tmp_path: Path) -> None:
    config = write(tmp_path, {"receivers": all_kinds(tmp_path)})
    for extra in ((), ("--inline-secrets",)):
        out = tmp_path / f"am{len(extra)}.yml"
        proc = cli("--config", str(config), "--out", str(out), *extra)
        assert proc.returncode == 0, proc.stderr
        assert out.stat().st_mode & 0o777 == 0o600
        assert "receivers: discord, slack, webhook, telegram, email" in proc.stderr
        check = run_tool(["amtool", "check-config", str(out)])
        assert "SUCCESS" in check and "3 receivers" in check and "3 inhibit rules" in check
        doc = yaml.safe_load(out.read_text())
        notify, reports = doc["receivers"][1], doc["receivers"][2]
        assert notify["name"] == "notify" and reports["name"] == "notify-reports"
        assert set(notify) == {"name", "discord_configs", "slack_configs", "webhook_configs",
                               "telegram_configs", "email_configs"}
        # Reports are events: never "resolved"; the rest as configured.
        assert all(c["send_resolved"] is False for k, v in reports.items() if k != "name"
                   for c in v)
        assert notify["webhook_configs"][0]["send_resolved"] is False
        assert notify["discord_configs"][0]["send_resolved"] is True
        slack = notify["slack_configs"][0]
        email = notify["email_configs"][0]
        hook = doc["receivers"][0]["webhook_configs"][0]["http_config"]["authorization"]
        if extra:   # one self-contained file
            assert slack["api_url"].startswith("https://hooks.slack.com/")
            assert email["auth_password"] == "smtp password"
            assert hook["credentials"] == "tok-0123456789abcdef"
        else:       # files wherever Alertmanager 0.25 reads them
            assert slack["api_url_file"] == str(tmp_path / "s/s")
            assert email["auth_password_file"] == str(tmp_path / "s/e")
            assert hook["credentials_file"] == str(tmp_path / "s/token")
            assert "smtp password" not in out.read_text()


def test_stdout_and_an_existing_output_replaced_private(tmp_path: Path) -> None:
    config = write(tmp_path, {"receivers": all_kinds(tmp_path)[:1]})
    proc = cli("--config", str(config))
    assert proc.returncode == 0 and "discord_configs" in proc.stdout
    out = tmp_path / "am.yml"
    out.write_text("old")
    out.chmod(0o644)
    assert cli("--config", str(config), "--out", str(out)).returncode == 0
    assert out.stat().st_mode & 0o777 == 0o600 and "discord_configs" in out.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".am.yml")] == []


@pytest.mark.parametrize("alert, receivers", [
    (["alertname=TrainingStalled", "remediate=true"], "trainguard-remediator,notify"),
    (["alertname=TrainguardReport", "remediate=false", "incident=3"], "notify-reports"),
    (["alertname=TrainingFailedPermanently", "remediate=false"], "notify"),
    (["alertname=TrainingDiskLow", "remediate=false"], "notify"),
])
def test_routes_of_the_generated_and_the_shipped_file(tmp_path: Path, alert: list[str],
                                                      receivers: str) -> None:
    config = write(tmp_path, {"receivers": all_kinds(tmp_path)[:2]})
    out = tmp_path / "am.yml"
    assert cli("--config", str(config), "--out", str(out)).returncode == 0
    for path in (out, SHIPPED):
        run_tool(["amtool", "config", "routes", "test", f"--config.file={path}",
                  f"--verify.receivers={receivers}", "training_job=lora", *alert])


def test_without_a_remediator(tmp_path: Path) -> None:
    path = tmp_path / "trainguard.yaml"
    path.write_text(yaml.safe_dump({"jobs": [{"name": "a", "output_dir": str(tmp_path)}]}))
    proc = cli("--config", str(path))
    assert proc.returncode == 2 and "remediator.token_file is not set" in proc.stderr
    proc = cli("--config", str(path), "--no-remediator")
    assert proc.returncode == 0
    doc = yaml.safe_load(proc.stdout)
    assert [r["name"] for r in doc["receivers"]] == ["notify", "notify-reports"]
    assert all(r["receiver"] != "trainguard-remediator" for r in doc["route"]["routes"])


def test_remediator_url_from_the_config_or_the_flag(tmp_path: Path) -> None:
    config = write(tmp_path, listen="0.0.0.0:9900")
    doc = yaml.safe_load(cli("--config", str(config)).stdout)
    assert doc["receivers"][0]["webhook_configs"][0]["url"] == "http://127.0.0.1:9900/alerts"
    doc = yaml.safe_load(cli("--config", str(config), "--remediator-url",
                             "http://10.0.0.2:9843/alerts").stdout)
    assert doc["receivers"][0]["webhook_configs"][0]["url"] == "http://10.0.0.2:9843/alerts"
    proc = cli("--config", str(config), "--remediator-url", "file:///etc/passwd")
    assert proc.returncode == 2 and "--remediator-url" in proc.stderr


@pytest.mark.parametrize("index, content, mode, message", [
    (0, "https://discord.com/api/webhooks/1/abc", 0o644, "readable by other users"),
    (0, "not a url", 0o600, "must be an http(s):// URL"),
    (3, "no-token-shape", 0o600, "must look like 123456:ABC-def"),
    (4, "", 0o600, "exactly one non-empty line"),
])
def test_bad_secret_files_are_refused_with_the_fix(tmp_path: Path, index: int, content: str,
                                                   mode: int, message: str) -> None:
    kinds = all_kinds(tmp_path)
    secret(Path(kinds[index]["secret_file"]), content, mode)
    proc = cli("--config", str(write(tmp_path, {"receivers": kinds})))
    assert proc.returncode == 2, proc.stderr
    assert kinds[index]["secret_file"] in proc.stderr and message in proc.stderr
    assert f"notify.receivers[{index}].secret_file" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    if mode == 0o644:
        assert f"chmod 600 {kinds[index]['secret_file']}" in proc.stderr
    Path(kinds[index]["secret_file"]).unlink()
    proc = cli("--config", str(write(tmp_path, {"receivers": kinds})))
    assert proc.returncode == 2 and "cannot read" in proc.stderr


@pytest.mark.parametrize("receiver, keypath, message", [
    ({"kind": "discord", "webhook_url": "https://x"}, "notify.receivers[0].webhook_url",
     "secrets never go in the config"),
    ({"kind": "telegram", "secret_file": "t", "token": "1:x", "chat_id": 1},
     "notify.receivers[0].token", "secrets never go in the config"),
    ({"kind": "pager", "secret_file": "x"}, "notify.receivers[0].kind",
     "expected one of discord, slack, telegram, email, webhook"),
    ({"kind": "discord"}, "notify.receivers[0].secret_file", "required key is missing"),
    ({"kind": "telegram", "secret_file": "t"}, "notify.receivers[0].chat_id",
     "required for kind telegram"),
    ({"kind": "email", "secret_file": "p", "to": "me", "from": "a@b.c",
      "smarthost": "h:25"}, "notify.receivers[0].to", "expected an e-mail address"),
    ({"kind": "email", "secret_file": "p", "to": "me@x.org", "from": "a@b.c",
      "smarthost": "smtp"}, "notify.receivers[0].smarthost", "expected HOST:PORT"),
    ({"kind": "discord", "secret_file": "d", "channel": "#x"},
     "notify.receivers[0].channel", "unknown key"),
])
def test_the_notify_section_is_strict(tmp_path: Path, receiver: dict[str, Any], keypath: str,
                                      message: str) -> None:
    path = write(tmp_path, {"receivers": [receiver]})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.keypath == keypath and message in exc.value.message
    proc = cli("--config", str(path))
    assert proc.returncode == 2 and keypath in proc.stderr


def test_notify_needs_receivers_and_http_urls(tmp_path: Path) -> None:
    for notify, keypath in (({"receivers": []}, "notify.receivers"),
                            ({"receivers": all_kinds(tmp_path)[:1],
                              "alertmanager_url": "127.0.0.1:9093"},
                             "notify.alertmanager_url"),
                            ({"receivers": all_kinds(tmp_path)[:1], "extra": 1},
                             "notify.extra")):
        with pytest.raises(ConfigError) as exc:
            load_config(write(tmp_path, notify))
        assert exc.value.keypath == keypath
    config = load_config(write(tmp_path, {"receivers": all_kinds(tmp_path)}))
    assert config.notify is not None
    assert config.notify.alertmanager_url == "http://127.0.0.1:9093"
    assert [r.kind for r in config.notify.receivers] == ["discord", "slack", "webhook",
                                                         "telegram", "email"]

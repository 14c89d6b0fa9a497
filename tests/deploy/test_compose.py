"""docker-compose.yml: accepted by the installed docker-compose (1.29), loopback-only, GPU
and host-pid where the exporter and remediator need them, and no silent defaults for the
paths and secrets a user must choose."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from deploy_testlib import run_tool
from helpers.common import REPO


def compose_env(tmp_path: Path) -> dict[str, str]:
    for name in ("outputs", "state"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "trainguard.yaml").write_text("jobs: []\n")
    (tmp_path / "webhook-token").write_text("t\n")
    (tmp_path / "state" / "alertmanager.yml").write_text("route: {receiver: notify}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINGUARD_", "GRAFANA_"))}
    env.update(TRAINGUARD_CONFIG=str(tmp_path / "trainguard.yaml"),
               TRAINGUARD_OUTPUTS=str(tmp_path / "outputs"),
               TRAINGUARD_TOKEN_FILE=str(tmp_path / "webhook-token"),
               TRAINGUARD_STATE_DIR=str(tmp_path / "state"),
               TRAINGUARD_USER="1000:1000", GRAFANA_ADMIN_PASSWORD="not-admin",
               TRAINGUARD_ALERTMANAGER_CONFIG=str(tmp_path / "state" / "alertmanager.yml"))
    return env


def compose(args: list[str], env: dict[str, str], expect_rc: int = 0) -> str:
    import subprocess

    proc = subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == expect_rc, (proc.returncode, proc.stdout + proc.stderr)
    return proc.stdout + proc.stderr


def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    run_tool(["docker-compose", "version"])
    compose(["config", "-q"], compose_env(tmp_path))


def test_missing_paths_and_password_are_errors_not_defaults(tmp_path: Path) -> None:
    for name in ("GRAFANA_ADMIN_PASSWORD", "TRAINGUARD_ALERTMANAGER_CONFIG"):
        env = compose_env(tmp_path / name)
        del env[name]
        out = compose(["config", "-q"], env, expect_rc=1)
        assert name in out


def test_alertmanager_runs_on_the_generated_config_only(tmp_path: Path) -> None:
    """Not the shipped file (placeholder receivers): what `trainguard alertmanager-config`
    made, mounted read-only, read by the user who owns it (0600)."""
    env = compose_env(tmp_path)
    am = yaml.safe_load(compose(["config"], env))["services"]["alertmanager"]
    assert f"{env['TRAINGUARD_ALERTMANAGER_CONFIG']}:/etc/alertmanager/alertmanager.yml:ro" \
        in [v if isinstance(v, str) else f"{v['source']}:{v['target']}:ro" for v in am["volumes"]]
    assert not any("deploy/alertmanager" in str(v) for v in am["volumes"])
    assert am["user"] == "1000:1000"
    assert f"--storage.path={env['TRAINGUARD_STATE_DIR']}/alertmanager" in am["command"]


def test_services_listen_on_loopback_and_see_the_host(tmp_path: Path) -> None:
    cfg: dict[str, Any] = yaml.safe_load(compose(["config"], compose_env(tmp_path)))
    services = cfg["services"]
    assert set(services) == {"prometheus", "alertmanager", "grafana", "exporter", "remediator"}
    for name, svc in services.items():
        assert svc["network_mode"] == "host", name
        assert "ports" not in svc, name
    assert "--web.listen-address=127.0.0.1:9090" in services["prometheus"]["command"]
    am = services["alertmanager"]["command"]
    assert "--web.listen-address=127.0.0.1:9093" in am and "--cluster.listen-address=" in am
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    for name, port in (("exporter", 9842), ("remediator", 9843)):
        svc = services[name]
        assert svc["pid"] == "host", name
        assert f"127.0.0.1:{port}" in svc["command"], name
        (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"], name
        # the outputs folder at the same path inside as outside
        assert any(v.split(":")[0] == v.split(":")[1] and v.split(":")[0].endswith("outputs")
                   for v in svc["volumes"]), svc["volumes"]

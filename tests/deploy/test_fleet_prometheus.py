"""The fleet's Prometheus files (deploy/prometheus/examples/fleet/): file_sd targets put
the `host` label on every series, so two hosts with a job of the same name are two
series sets, and a dead exporter is one host's `up == 0`.

A real Prometheus scrapes two real ``trainguard exporter`` processes, each configured
with a job named ``my-lora``, through the example's own scrape_configs and file_sd files
(only the addresses changed to this test's loopback ports).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploy_testlib import (
    PROMETHEUS_DIR,
    TRAINGUARD,
    Daemon,
    prom_query,
    run_tool,
    start_prometheus,
)
from helpers.common import free_port, wait_for

FLEET = PROMETHEUS_DIR / "examples" / "fleet"
ADDRESSES = {"gpu-a": "10.0.0.11", "gpu-b": "10.0.0.12"}


def test_the_fleet_example_passes_promtool() -> None:
    out = run_tool(["promtool", "check", "config", str(FLEET / "prometheus.yml")])
    assert "SUCCESS: 2 rule files found" in out, out


def test_every_target_in_the_example_has_a_host_label() -> None:
    for name in ("exporters.yml", "remediators.yml"):
        groups = yaml.safe_load((FLEET / "targets" / name).read_text())
        hosts = [g["labels"]["host"] for g in groups]
        assert hosts == list(ADDRESSES), name


@pytest.mark.slow
def test_two_hosts_with_a_job_of_the_same_name_are_two_series_sets(tmp_path: Path) -> None:
    daemons: list[Daemon] = []
    ports = {host: free_port() for host in ADDRESSES}
    exporters: dict[str, Daemon] = {}
    try:
        for host, port in ports.items():
            base = tmp_path / host
            (base / "out").mkdir(parents=True)
            config = base / "trainguard.yaml"
            config.write_text(yaml.safe_dump({
                "host": host, "jobs": [{"name": "my-lora", "output_dir": "out"}],
                "exporter": {"listen": f"127.0.0.1:{port}"}}))
            exporters[host] = Daemon(f"exporter {host}", [TRAINGUARD, "exporter", "--config",
                                                          str(config)],
                                     base / "exporter.log", f"http://127.0.0.1:{port}/healthz")
            daemons.append(exporters[host])
        targets = (FLEET / "targets" / "exporters.yml").read_text()
        for host, ip in ADDRESSES.items():
            assert targets.count(f"{ip}:9842") == 1
            targets = targets.replace(f"{ip}:9842", f"127.0.0.1:{ports[host]}")
        (tmp_path / "exporters.yml").write_text(targets)
        example = yaml.safe_load((FLEET / "prometheus.yml").read_text())
        [exporter_job] = [j for j in example["scrape_configs"]
                          if j["job_name"] == "trainguard-exporter"]
        exporter_job["file_sd_configs"][0]["files"] = [str(tmp_path / "exporters.yml")]
        prometheus, prom = start_prometheus(tmp_path / "prometheus", {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [exporter_job]})
        daemons.append(prometheus)
        for d in daemons:
            d.wait_ready()

        def hosts_of(expr: str) -> list[str]:
            return sorted(r["metric"].get("host", "") for r in prom_query(prom, expr))

        wait_for(lambda: hosts_of('trainguard_job_process_up{training_job="my-lora"}')
                 == ["gpu-a", "gpu-b"], timeout=30, interval=0.5,
                 what="my-lora's series from both hosts")
        # What a rule aggregating `by (host, training_job)` sees: two jobs, not one.
        assert len(prom_query(prom, 'sum by (host, training_job) '
                                    '(trainguard_job_process_up{training_job="my-lora"})')) == 2
        exporters["gpu-b"].stop()
        wait_for(lambda: hosts_of('up{job="trainguard-exporter"} == 0') == ["gpu-b"],
                 timeout=30, interval=0.5, what="gpu-b's exporter to be down, and only it")
        assert hosts_of('up{job="trainguard-exporter"} == 1') == ["gpu-a"]
    finally:
        for d in daemons:
            d.stop()

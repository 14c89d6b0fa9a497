"""Grafana files: provisioning YAML, and dashboards that are valid JSON with fixed uids,
unique panel ids, and every query bound to the provisioned datasource by uid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from deploy_testlib import GRAFANA_DIR

DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))


def datasource_uid() -> str:
    doc = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
                         .read_text())
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus" and ds["url"].startswith("http://127.0.0.1:")
    uid: str = ds["uid"]
    return uid


def test_provider_loads_the_dashboards_folder() -> None:
    doc = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "provider.yml")
                         .read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_dashboards_have_fixed_uids_and_unique_panel_ids() -> None:
    assert {p.name for p in DASHBOARDS} == {"trainguard-fleet.json", "trainguard-run.json"}
    uids = set()
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert dash["uid"] == path.stem, path
        uids.add(dash["uid"])
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids {ids}"
        for p in dash["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, f"{path.name}: {p['title']} is wider than the grid"
    assert len(uids) == len(DASHBOARDS)


def test_every_query_uses_the_provisioned_datasource_uid() -> None:
    uid = datasource_uid()

    def refs(node: Any) -> list[dict[str, Any]]:
        found = []
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("type") == "prometheus":
                found.append(ds)
            elif ds is not None and not (isinstance(ds, dict) and ds.get("type") == "grafana"):
                raise AssertionError(f"datasource not referenced by uid: {ds!r}")
            for v in node.values():
                found += refs(v)
        elif isinstance(node, list):
            for v in node:
                found += refs(v)
        return found

    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        found = refs(dash)
        assert found and all(r["uid"] == uid for r in found), path.name
        targets = [t for p in dash["panels"] for t in p.get("targets", [])]
        assert all(isinstance(t["datasource"], dict) for t in targets), path.name


def test_run_page_is_templated_on_host_and_training_job() -> None:
    """A job is (host, training_job): the run page picks a host (All on a single host,
    whose series have no host label), then one of its jobs."""
    dash = json.loads(Path(GRAFANA_DIR / "dashboards" / "trainguard-run.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert list(variables) == ["host", "training_job"]
    assert variables["host"]["includeAll"] and variables["host"]["allValue"] == ".*"
    assert '{host=~"$host"}' in variables["training_job"]["query"]["query"]
    per_job = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])
               if "trainguard_job" in t["expr"] or "trainguard_checkpoint" in t["expr"]]
    assert per_job and all('host=~"$host", training_job="$training_job"' in e
                           for e in per_job)

"""THE dashboard query test: every query of every panel, template variable and annotation
of deploy/grafana/dashboards/*.json runs against a real Prometheus that scraped a real
exporter (and a real remediator), and must parse and return data.

The scene: the tiny sd-scripts-shaped trainer runs on a fake-NVML GPU, saves real
accelerate states, then hangs idle.  Prometheus (1 s scrapes and evaluations) loads the
project's rules with the documented fast-tunables override, so TrainingGPUIdle fires
within a minute and ALERTS has data.  A dry-run remediator receives one alert, so its
remediation counters exist without touching the run.

Grafana's own variables are replaced the way Grafana would for a 1 s scrape interval;
any `$` left after that fails the test, so a new variable cannot slip through unchecked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_testlib import (
    FAST_TUNABLES,
    GRAFANA_DIR,
    RULES,
    TRAINGUARD,
    Daemon,
    http_json,
    prom_query,
    start_prometheus,
)
from helpers.common import TINY_TRAIN, free_port, wait_for
from helpers.fakenvml import FakeGPUs, env_for

JOB = "live"
TOKEN = "dashboard-test-token"
# What Grafana substitutes with the datasource's timeInterval at 1 s: $__interval is at
# least 1 s (2 s keeps two samples in a changes() window), $__rate_interval is 4 scrapes.
# `host` is the Prometheus target label of a fleet (deploy/prometheus/prometheus.yml): this
# test's targets carry one, and the run dashboard filters on it.
HOST = "testhost"
GRAFANA_VARS = {"training_job": JOB, "host": HOST, "__interval": "2s", "__rate_interval": "4s",
                "__range": "5m", "__range_s": "300"}
VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES_RE = re.compile(r"^label_values\((.+),\s*(\w+)\)$")


@dataclass(frozen=True)
class Query:
    where: str   # dashboard / panel title / refId, for the failure report
    expr: str


def dashboard_queries() -> list[Query]:
    """Every PromQL string in the dashboards: panel targets, variables, annotations."""
    out: list[Query] = []
    files = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
    assert files, "no dashboards"
    for path in files:
        dash = json.loads(path.read_text())

        def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for p in items:
                yield p
                yield from panels(p.get("panels", []))

        for p in panels(dash["panels"]):
            for t in p.get("targets", []):
                out.append(Query(f"{path.name} / {p['title']} / {t['refId']}", t["expr"]))
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                out.append(Query(f"{path.name} / variable {v['name']}", q))
        for a in dash["annotations"]["list"]:
            if a.get("datasource", {}).get("type") == "prometheus":
                out.append(Query(f"{path.name} / annotation {a['name']}", a["expr"]))
    return out


def substitute(expr: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in GRAFANA_VARS:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr!r}")
        return GRAFANA_VARS[name]

    done = VAR_RE.sub(repl, expr)
    assert "$" not in done, done
    return done


def to_promql(expr: str) -> tuple[str, str | None]:
    """Grafana's label_values(Q, L) is not PromQL: run Q and require label L in the result."""
    m = LABEL_VALUES_RE.match(expr.strip())
    if m:
        return m.group(1), m.group(2)
    return expr, None


def test_queries_are_collected_from_every_part() -> None:
    where = " ".join(q.where for q in dashboard_queries())
    assert "variable training_job" in where and "annotation Remediations" in where
    assert len(dashboard_queries()) >= 30


@pytest.mark.slow
def test_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    out_dir = tmp_path / "outputs" / JOB
    out_dir.mkdir(parents=True)
    log = out_dir / "train.log"
    gpus = FakeGPUs(tmp_path / "gpus")
    gpus.add(2)  # the trainer takes gpu0; gpu1 belongs to nobody
    train_cmd = [sys.executable, str(TINY_TRAIN), "--output_dir", str(out_dir),
                 "--output_name", JOB, "--max_train_steps", "400", "--step_seconds", "0.05",
                 "--save_every_n_steps", "4", "--save_state", "--hang_at_step", "12",
                 "--hang_mode", "idle", "--fake_gpu", str(gpus.path(0))]
    token = tmp_path / "webhook-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    exporter_port, remediator_port = free_port(), free_port()
    config = tmp_path / "trainguard.yaml"
    config.write_text(yaml.safe_dump({
        "jobs": [{"name": JOB, "output_dir": str(out_dir), "log_file": str(log),
                  "startup_grace_seconds": 10,
                  "launch": {"command": train_cmd, "workdir": str(tmp_path)}}],
        "exporter": {"listen": f"127.0.0.1:{exporter_port}", "checkpoint_rescan_seconds": 0.5},
        "remediator": {"listen": f"127.0.0.1:{remediator_port}", "token_file": str(token),
                       "state_path": str(tmp_path / "remediator.sqlite3"), "dry_run": True,
                       "saving_wait_seconds": 1},
    }))

    train_env = {k: v for k, v in os.environ.items() if k != "FAKE_NVML_DIR"}
    train_env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    daemons: list[Daemon] = []
    train: subprocess.Popen[bytes] | None = None
    try:
        exporter = Daemon("exporter", [TRAINGUARD, "exporter", "--config", str(config)],
                          tmp_path / "exporter.log", f"http://127.0.0.1:{exporter_port}/healthz",
                          env=env_for(gpus.root))
        daemons.append(exporter)
        remediator = Daemon("remediator", [TRAINGUARD, "remediator", "--config", str(config)],
                            tmp_path / "remediator.log",
                            f"http://127.0.0.1:{remediator_port}/healthz")
        daemons.append(remediator)
        # The documented override: the fast tunables file in place of rules/tunables.yml.
        prometheus, prom = start_prometheus(tmp_path / "prometheus", {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(FAST_TUNABLES), str(RULES)],
            "scrape_configs": [
                {"job_name": "trainguard-exporter",
                 "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"],
                                     "labels": {"host": HOST}}]},
                {"job_name": "trainguard-remediator",
                 "static_configs": [{"targets": [f"127.0.0.1:{remediator_port}"],
                                     "labels": {"host": HOST}}]},
            ]})
        daemons.append(prometheus)
        for d in daemons:
            d.wait_ready()
        # The trainer starts once the exporter has been scraped, so its steps are followed
        # live and the rhythm series (seconds per step, longest gap) exist.
        wait_for(lambda: prom_query(prom, 'up{job="trainguard-exporter"} == 1'),
                 timeout=30, interval=0.2, what="a first scrape of the exporter")
        with open(log, "ab") as log_fh:
            train = subprocess.Popen(train_cmd, cwd=tmp_path, env=train_env, stdout=log_fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        # One alert to the dry-run remediator: it records decisions, touches nothing.
        status, body = http_json(
            f"http://127.0.0.1:{remediator_port}/alerts",
            {"version": "4", "status": "firing", "receiver": "trainguard-remediator",
             "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
             "externalURL": "http://127.0.0.1:9093", "groupKey": "test", "alerts": [{
                 "status": "firing", "labels": {"alertname": "TrainingStalled",
                                                "training_job": JOB, "remediate": "true"},
                 "annotations": {}, "startsAt": datetime.now(timezone.utc).isoformat(),
                 "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "0123456789abcdef"}]},
            headers={"Authorization": f"Bearer {TOKEN}"})
        assert 200 <= status < 300, body

        def has(expr: str) -> bool:
            return bool(prom_query(prom, expr))

        wait_for(lambda: has(f'trainguard_checkpoint_latest_step{{training_job="{JOB}"}} > 0'),
                 timeout=60, interval=0.5, what="a checkpoint of the trainer in Prometheus")
        wait_for(lambda: has(f'trainguard_remediations_total{{training_job="{JOB}"}}'),
                 timeout=20, interval=0.5, what="the remediator's counters in Prometheus")
        # The trainer hangs at step 12: idle for 10 s, then `for: 15s` -> firing.
        wait_for(lambda: has(f'ALERTS{{training_job="{JOB}", alertstate="firing"}}'),
                 timeout=75, interval=0.5,
                 what=f"a firing alert for {JOB} (exporter log: {exporter.log})")

        failures: list[str] = []
        report: list[str] = []
        for q in dashboard_queries():
            expr, label = to_promql(substitute(q.expr))
            try:
                result = prom_query(prom, expr)
            except AssertionError as exc:
                failures.append(f"{q.where}: {exc}")
                continue
            if not result:
                failures.append(f"{q.where}: no data for {expr}")
            elif label is not None and not any(label in r["metric"] for r in result):
                failures.append(f"{q.where}: no {label} label in {result}")
            report.append(f"{len(result):3d} series  {q.where}")
        print("\n".join(report))
        assert not failures, "\n".join(failures)
    finally:
        for d in reversed(daemons):
            d.stop()
        if train is not None:
            if train.poll() is None:
                os.killpg(train.pid, 9)
            train.wait()

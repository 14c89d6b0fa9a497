"""exporter.exposition writes exactly what client_python writes, for every Accept header a
Prometheus sends, and leaves the rest to client_python."""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from exporter.server import build_registry, make_app
from trainguard.config import parse_config

PROMETHEUS_2 = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMETHEUS_3 = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
                "application/openmetrics-text;version=0.0.1;q=0.4,"
                "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
                "text/plain;version=0.0.4;q=0.2,*/*;q=0.1")
ACCEPTS = [PROMETHEUS_2, PROMETHEUS_3, None, "", "*/*", "text/plain",
           "text/plain;version=0.0.4", "application/openmetrics-text",
           "application/openmetrics-text; version=1.0.0",
           "application/openmetrics-text; version=1.0.0; escaping=underscores",
           "application/openmetrics-text; version=1.0.0; escaping=dots",
           "application/openmetrics-text; version=2.0.0", "text/plain;version=1.0.0",
           "application/json"]


class Frozen:
    """One scrape's families, served again and again (values must not move between the
    two renderings compared)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def families(tmp_path: Path) -> list[Metric]:
    cfg = parse_config({"jobs": [
        {"name": "my-lora", "output_dir": "out", "log_file": "out/train.log"},
        {"name": "other.run", "output_dir": "out2"}]}, tmp_path / "trainguard.yaml")
    (tmp_path / "out").mkdir()
    _, collectors = build_registry(cfg)
    odd = GaugeMetricFamily("trainguard_gpu_info", 'A "quoted" doc\\ with\na newline.',
                            labels=["gpu", "uuid", "name"])
    odd.add_metric(["0", "GPU-1", 'NVIDIA "H100" \\ 80GB\nrev'], 1.0)
    odd.add_metric(["1", "GPU-2", "ünïcode"], float("nan"))
    return [*collectors.collect(), odd]


def get(app: Any, accept: str | None, query: str = "", encoding: str = "gzip"
        ) -> tuple[dict[str, str], bytes]:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": query,
           "HTTP_ACCEPT_ENCODING": encoding}
    if accept is not None:
        env["HTTP_ACCEPT"] = accept
    got: dict[str, str] = {}

    def start(status: str, headers: list[tuple[str, str]]) -> None:
        got.update(headers)
        got["status"] = status

    body = b"".join(app(env, start))
    if got.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return got, body


@pytest.mark.parametrize("accept", ACCEPTS)
def test_same_bytes_and_type_as_client_python(tmp_path: Path, accept: str | None) -> None:
    registry = CollectorRegistry(support_collectors_without_names=True)
    registry.register(Frozen(families(tmp_path)))  # type: ignore[arg-type]
    ours, theirs = make_app(registry), make_wsgi_app(registry)
    for encoding in ("gzip", ""):
        h1, b1 = get(ours, accept, encoding=encoding)
        h2, b2 = get(theirs, accept, encoding=encoding)
        assert (h1["status"], h1["Content-Type"], h1.get("Content-Encoding")) == \
            (h2["status"], h2["Content-Type"], h2.get("Content-Encoding"))
        assert b1 == b2


def test_what_it_does_not_write_is_left_to_client_python(tmp_path: Path) -> None:
    counter = CounterMetricFamily("trainguard_things", "Things.", labels=["training_job"])
    counter.add_metric(["a"], 3.0)
    registry = CollectorRegistry(support_collectors_without_names=True)
    registry.register(Frozen([*families(tmp_path), counter]))  # type: ignore[arg-type]
    ours, theirs = make_app(registry), make_wsgi_app(registry)
    for accept, query in ((PROMETHEUS_2, ""), ("text/plain", ""),
                          (None, "name[]=trainguard_things_total")):
        assert get(ours, accept, query) == get(theirs, accept, query)
    assert b"trainguard_things_total" in get(ours, None, "name[]=trainguard_things_total")[1]

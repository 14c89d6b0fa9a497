"""Plain helpers for the exporter's tests (conftest.py puts this folder on sys.path)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> Samples:
    """``{(sample name, labels): value}`` from Prometheus text, via client_python's parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metrics_of(collector: object) -> Samples:
    """Scrape one collector object the way the server does: registry -> text -> parse."""
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    return parse_exposition(generate_latest(registry).decode())


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The sample with exactly these labels, or None when absent."""
    return samples.get((metric, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {lbl: v for (n, lbl), v in samples.items() if n == name}

"""Plain helpers for the exporter's tests (conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

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


# ---------------------------------------------------------------- a real exporter process


TRAINGUARD = str(Path(sys.executable).with_name("trainguard"))


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content type, body) of a real HTTP GET; 4xx/5xx are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


class ExporterProcess:
    """``trainguard exporter`` as a real child process, stderr captured to a file."""

    def __init__(self, config: Path, port: int, env: dict[str, str], log: Path,
                 extra: tuple[str, ...] = ()) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._stderr = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [TRAINGUARD, "exporter", "--config", str(config),
             "--listen", f"127.0.0.1:{port}", *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exporter exited {self.proc.returncode}: "
                                 f"{self.log.read_text()}")
        try:
            return http_get(self.url + "/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def scrape(self) -> Samples:
        status, _, body = http_get(self.url + "/metrics")
        assert status == 200, body
        return parse_exposition(body)

    def stop(self, sig: int = 15, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._stderr.close()
        return rc


def write_config(path: Path, jobs: list[dict[str, object]],
                 exporter: dict[str, object] | None = None) -> Path:
    import yaml

    doc: dict[str, object] = {"jobs": jobs}
    if exporter:
        doc["exporter"] = exporter
    path.write_text(yaml.safe_dump(doc))
    return path


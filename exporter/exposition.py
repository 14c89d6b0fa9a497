"""``/metrics`` bodies for the exporter's own families, in a fraction of client_python's time.

Why not only ``prometheus_client.make_wsgi_app``: its renderers (0.26) spend ~15 µs per
sample on escaping and validation that names fixed at build time never need; with 10 jobs
the exporter serves ~300 samples, so rendering cost more than reading every checkpoint
folder's stat (bench/bench_peers.py measures the scrape).  This module renders exactly
what client_python renders for the families the collectors build (gauges, the build info,
names and label names in the classic character set, no timestamps or exemplars), in the
Prometheus text format 0.0.4 or OpenMetrics 1.0.0, chosen by the Accept header the way
``prometheus_client.exposition.choose_encoder`` chooses, gzip when accepted.  Anything
else (a family of another type, a ``name[]`` filter, an OpenMetrics version it does not
write) is left to client_python: :func:`render` returns None and the caller falls back.
tests/exporter/test_exposition.py checks the output against client_python's, parsed.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable

from prometheus_client.core import Metric
from prometheus_client.exposition import gzip_accepted
from prometheus_client.utils import floatToGoString, parse_version

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TYPES = {"gauge": "gauge", "info": "info", "unknown": "unknown"}
# Escapings that leave classic names as they are (client_python's "dots" and "values"
# rewrite underscores).
_SAME_NAMES = ("underscores", "allow-utf-8")


def choose(accept: str | None) -> tuple[bool, str] | None:
    """(OpenMetrics?, content type) for an Accept header, as client_python's
    ``choose_encoder`` decides; None when it would write something this module does not
    (another OpenMetrics version, a text version >= 1.0.0, an escaping that renames)."""
    for item in (accept or "").split(","):
        media, *toks = item.split(";")
        media = media.strip()
        if media not in ("application/openmetrics-text", "text/plain"):
            continue
        params = dict(t.strip().split("=", 1) for t in toks if "=" in t)
        escaping = params.get("escaping", "underscores")
        if escaping not in (*_SAME_NAMES, "dots", "values"):
            escaping = "underscores"  # client_python's default for what it does not know
        version = params.get("version", "")
        if media == "application/openmetrics-text":
            if not version:
                return True, OPENMETRICS
            if version == "1.0.0" and escaping in _SAME_NAMES:
                return True, f"{OPENMETRICS}; escaping={escaping}"
            if parse_version(version) >= (1, 0, 0):
                return None
        elif version and parse_version(version) >= (1, 0, 0):
            return None
    return False, TEXT


def _value(v: float) -> str:
    text: str = floatToGoString(v)  # type: ignore[no-untyped-call]
    return text


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class Renderer:
    """Renders families; remembers which names it has checked and the label strings it
    built (label sets repeat on every scrape)."""

    def __init__(self) -> None:
        self._valid: set[str] = set()
        self._labels: dict[tuple[tuple[str, str], ...], str] = {}

    def render(self, families: Iterable[Metric], openmetrics: bool) -> bytes | None:
        """The body, or None when a family is not one this renderer writes."""
        out: list[str] = []
        for fam in families:
            kind = _TYPES.get(fam.type)
            if kind is None or fam.unit or not self._ok(fam.name):
                return None
            name = fam.name
            if openmetrics:
                doc = _escape(fam.documentation)
                out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
            else:
                doc = fam.documentation.replace("\\", r"\\").replace("\n", r"\n")
                if kind == "info":
                    name, kind = name + "_info", "gauge"
                elif kind == "unknown":
                    kind = "untyped"
                out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
            for s in fam.samples:
                if s.timestamp is not None or s.exemplar is not None \
                        or s.native_histogram is not None or not self._ok(s.name):
                    return None
                labels = self._label_string(s.labels)
                if labels is None:
                    return None
                out.append(f"{s.name}{labels} {_value(s.value)}\n")
        if openmetrics:
            out.append("# EOF\n")
        return "".join(out).encode("utf-8")

    def _ok(self, name: str) -> bool:
        if name in self._valid:
            return True
        if _NAME.match(name) is None:
            return False
        self._valid.add(name)
        return True

    def _label_string(self, labels: dict[str, str]) -> str | None:
        if not labels:
            return ""
        items = tuple(sorted(labels.items()))
        text = self._labels.get(items)
        if text is None:
            if any(_LABEL.match(k) is None or k.startswith("__") for k, _ in items):
                return None
            text = "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"
            if len(self._labels) > 100_000:  # label values come from the config: bounded
                self._labels.clear()
            self._labels[items] = text
        return text


def encode(body: bytes, accept_encoding: str | None) -> tuple[bytes, list[tuple[str, str]]]:
    """gzip the body when the client accepts it, as client_python does."""
    if gzip_accepted(accept_encoding or ""):
        return gzip.compress(body), [("Content-Encoding", "gzip")]
    return body, []

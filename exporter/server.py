"""The exporter's HTTP side: ``/metrics`` (client_python's WSGI app), ``/healthz``, 404 else.

Why waitress and a tiny WSGI router rather than ``prometheus_client.start_http_server``:
the latter answers every path with metrics and cannot add ``/healthz``; waitress is
already a dependency (the remediator serves with it), is production-grade, and shuts
down cleanly when SIGTERM/SIGINT raise ``SystemExit`` in its loop.
``/metrics`` is rendered by :mod:`exporter.exposition` (client_python's renderer cost more
than the collecting), with client_python's content negotiation (OpenMetrics or text by the
Accept header, gzip); ``make_wsgi_app`` still answers what that module leaves to it
(``name[]`` filtering, other OpenMetrics versions, OPTIONS).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from prometheus_client import make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from exporter.collectors.base import CollectorSet
from exporter.collectors.checkpoint import CheckpointCollector
from exporter.collectors.disk import DiskCollector
from exporter.collectors.gpu import GpuCollector
from exporter.collectors.process import ProcessCollector
from exporter.collectors.progress import ProgressCollector
from exporter.exposition import Renderer, choose, encode
from exporter.nvml import NvmlSession
from trainguard.config import Config, Listen
from trainguard.process import ProcessMatcher

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def build_registry(config: Config, session: NvmlSession | None = None,
                   ) -> tuple[CollectorRegistry, CollectorSet]:
    """Our own registry (never the global one) holding every collector for ``config``.

    The process collector runs first: it pays for the one ``/proc`` pass the scrape
    shares, so its duration is the process matching's cost and the others' are theirs.
    """
    names = [j.name for j in config.jobs]
    matcher = ProcessMatcher(config.jobs)
    collectors = CollectorSet(
        [
            ProcessCollector(names, {j.name: j.startup_grace_seconds for j in config.jobs
                                     if j.startup_grace_seconds is not None}),
            GpuCollector(names, session,
                         {j.name: j.gpus for j in config.jobs if j.gpus}),
            ProgressCollector(config.jobs),
            CheckpointCollector(config.jobs,
                                rescan_seconds=config.exporter.checkpoint_rescan_seconds,
                                writing_fresh_seconds=config.exporter.writing_fresh_seconds),
            DiskCollector(config.jobs),
        ],
        processes=matcher.match,
    )
    registry = CollectorRegistry(support_collectors_without_names=True)
    registry.register(collectors)
    return registry, collectors


def make_app(registry: CollectorRegistry) -> WSGIApp:
    metrics = make_wsgi_app(registry)
    renderer = Renderer()

    def fast(environ: dict[str, Any], start_response: StartResponse) -> list[bytes] | None:
        """The body from exporter.exposition, or None to leave it to client_python."""
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("QUERY_STRING"):
            return None
        chosen = choose(environ.get("HTTP_ACCEPT"))
        if chosen is None:
            return None
        body = renderer.render(registry.collect(), openmetrics=chosen[0])
        if body is None:
            return None
        body, headers = encode(body, environ.get("HTTP_ACCEPT_ENCODING"))
        start_response("200 OK", [("Content-Type", chosen[1]),
                                  ("Content-Length", str(len(body))), *headers])
        return [body]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            answer = fast(environ, start_response)
            if answer is not None:
                return answer
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            body = b"ok\n"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: try /metrics or /healthz\n"]
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


def _addresses(server: Any) -> list[str]:
    pairs = getattr(server, "effective_listen", None)
    if pairs is None:
        pairs = [(server.effective_host, server.effective_port)]
    return [f"http://[{h}]:{p}" if ":" in str(h) else f"http://{h}:{p}" for h, p, *_ in pairs]


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # waitress's loop catches it and closes its sockets


def serve(config: Config, listen: Listen) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    from waitress import create_server

    session = NvmlSession()
    registry, _ = build_registry(config, session)
    try:
        server = create_server(make_app(registry), listen=str(listen), threads=2,
                               ident="trainguard-exporter", clear_untrusted_proxy_headers=True)
    except OSError as exc:
        from trainguard.cli import UsageError

        raise UsageError(f"exporter cannot listen on {listen}: {exc.strerror or exc}") from None
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("trainguard exporter (pid %d) serving %s/metrics for %d job(s): %s; config %s",
             os.getpid(), ", ".join(_addresses(server)), len(config.jobs),
             ", ".join(j.name for j in config.jobs), config.path)
    try:
        server.run()
    finally:
        session.close()
    log.info("trainguard exporter stopped")
    return 0

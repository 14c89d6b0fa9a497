"""A local HTTP sink standing in for Discord, Slack, Telegram and a generic webhook.

It records every POST (path, headers, decoded body) and answers as the real service
answers well enough for Alertmanager's notifier to count the message delivered: 204 for
Discord (as its webhook API does without ?wait=true), "ok" for Slack, Telegram's Bot API
envelope ``{"ok": true, "result": <Message>}`` (telebot, which Alertmanager 0.25 uses,
decodes it), 200 for the rest.  No service is mocked beyond its reply: the message sent is
exactly what Alertmanager would send to the real one.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        ctype = self.headers.get("Content-Type", "")
        if "application/x-www-form-urlencoded" in ctype:
            return {k: v[0] for k, v in urllib.parse.parse_qs(self.raw.decode()).items()}
        return json.loads(self.raw)


@dataclass
class Sink:
    url: str
    posts: list[Post] = field(default_factory=list)

    def to(self, prefix: str) -> list[Post]:
        return [p for p in self.posts if p.path.startswith(prefix)]


@contextmanager
def sink() -> Iterator[Sink]:
    posts: list[Post] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            posts.append(Post(self.path, dict(self.headers.items()), body))
            if self.path.startswith("/bot"):
                reply = json.dumps({"ok": True, "result": {
                    "message_id": len(posts), "date": 0,
                    "chat": {"id": -100123, "type": "group"}, "text": "ok"}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                return
            if self.path.startswith("/api/webhooks/"):
                self.send_response(204)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Sink(f"http://127.0.0.1:{server.server_address[1]}", posts)
    finally:
        server.shutdown()
        server.server_close()

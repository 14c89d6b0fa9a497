"""The floor for bench/bench_webhook.py: a bare Flask app under waitress that does only
what any webhook receiver must (the bearer token checked in constant time, the body parsed
and validated as an Alertmanager payload) and answers 202, with the remediator's own
waitress options.  No store, no queue, no worker: what trainguard's receiver costs beyond
this is its own.

    .venv/bin/python bench/bare_webhook.py --token-file FILE --port PORT
"""

from __future__ import annotations

import argparse
import hmac
import json
from pathlib import Path

import waitress
from flask import Flask, Response, jsonify, request

from remediator.app import PayloadError, parse_payload
from remediator.cli import SERVER_OPTIONS


def create(token: str) -> Flask:
    app = Flask("bare")
    expected = token.encode("utf-8")

    @app.post("/alerts")
    def alerts() -> Response:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode("utf-8"), expected):
            resp = jsonify(error="missing or wrong bearer token")
            resp.status_code = 401
            return resp
        try:
            parsed = parse_payload(json.loads(request.get_data(cache=False)))
        except (ValueError, PayloadError) as exc:
            resp = jsonify(error=str(exc))
            resp.status_code = 400
            return resp
        resp = jsonify(accepted=len(parsed), alerts=[
            {"training_job": a.job, "alertname": a.alertname, "status": a.status,
             "decision": "queued"} for a in parsed])
        resp.status_code = 202
        return resp

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--token-file", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    app = create(args.token_file.read_text(encoding="utf-8").strip())
    waitress.serve(app, host="127.0.0.1", port=args.port, **SERVER_OPTIONS)


if __name__ == "__main__":
    main()

"""A Flask app that reads its request body each way a view can, for the body-limit tests.

Served by werkzeug's server in a thread and by real gunicorn (sync and gthread
workers): ``gunicorn 'tests.support.body_limit_app:create_app()'``.  Each view answers
how many bytes of the payload it saw, so a body cut short cannot pass as whole.
"""

from __future__ import annotations

from typing import Final

from flask import Flask, request

from gennet_sync import Compression, setup_error_handlers

#: ``MAX_CONTENT_LENGTH`` of the app: small, so the tests send a few KiB.
LIMIT: Final = 4096

READERS: Final = ("data", "json", "form", "files", "stream")


def _payload_size(how: str) -> int:
    if how == "data":
        return len(request.get_data())
    if how == "json":
        body = request.get_json()
        return len(body["p"])
    if how == "form":
        return len(request.form["p"])
    if how == "files":
        return len(request.files["f"].read())
    total = 0
    while chunk := request.stream.read(1000):
        total += len(chunk)
    return total


def create_app(limit: int = LIMIT) -> Flask:
    """The app: ``POST /read/<how>`` for each of :data:`READERS`, and ``GET /health``."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = limit
    setup_error_handlers(app)
    Compression(app)

    @app.post("/read/<how>")
    def read(how: str) -> dict[str, int]:
        return {"size": _payload_size(how)}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app

"""The app the error handler tests share: one route per kind of error."""

from __future__ import annotations

from typing import Any

import marshmallow
from flask import Flask, abort, g, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import TooManyRequests, Unauthorized

from gennet_sync import (
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    current_request_id,
    setup_error_handlers,
)

__all__ = ["NetworkSchema", "make_app"]


class NetworkSchema(marshmallow.Schema):
    """A body with two required fields: what a 422 is about."""

    name = marshmallow.fields.String(required=True)
    nodes = marshmallow.fields.List(marshmallow.fields.String(), required=True)


def make_app(**config: Any) -> Flask:
    """An app with the error handlers (``config`` on top of a 1 KiB body limit) and one
    route per kind of error: ours, werkzeug's, marshmallow's and a crash."""
    app = Flask("under_test")
    app.config.update({"MAX_CONTENT_LENGTH": 1024, **config})
    setup_error_handlers(app)

    @app.get("/networks/<network_id>")
    def get_network(network_id: str) -> dict[str, str]:
        raise NotFoundError("Network", network_id)

    @app.post("/networks")
    def create_network() -> tuple[dict[str, Any], int]:
        return NetworkSchema().load(request.get_json()), 201

    @app.get("/validate-later")
    def validate_later() -> dict[str, Any]:
        # marshmallow raised outside request parsing: still a 422, not a 500.
        loaded: dict[str, Any] = NetworkSchema().load({"name": 5})
        return loaded

    @app.get("/crash")
    def crash() -> str:
        raise RuntimeError("password=hunter2 at /srv/app/secret.py")

    @app.get("/busy")
    def busy() -> str:
        raise ServiceUnavailableError("Model checker busy", service="qualitative", retry_after=7)

    @app.get("/limited")
    def limited() -> str:
        raise RateLimitError(retry_after=1.5)

    @app.get("/login")
    def login() -> str:
        raise Unauthorized(www_authenticate=WWWAuthenticate("bearer", {"realm": "grn"}))

    @app.get("/slow-down")
    def slow_down() -> str:
        raise TooManyRequests(retry_after=12)

    @app.get("/teapot")
    def teapot() -> str:
        abort(418)

    @app.get("/request-id")
    def request_id() -> dict[str, str | None]:
        return {"context": current_request_id(), "g": g.gennet_request_id}

    return app

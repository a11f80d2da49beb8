"""The versioned app with schemas, and the helper, that the OpenAPI tests share."""

from __future__ import annotations

from typing import Any

from flask import Flask
from marshmallow import Schema, fields
from werkzeug.test import TestResponse

from gennet_sync import OpenAPI, VersionedAPI, doc, setup_error_handlers

__all__ = ["NetworkSchema", "PageSchema", "json_of", "make_versioned_app"]


def json_of(response: TestResponse) -> dict[str, Any]:
    """The JSON object a test response carries (the document, an envelope, the catalogue)."""
    data = response.get_json()
    assert isinstance(data, dict), response.data
    return data


class NetworkSchema(Schema):
    """A network as the API documents it."""

    id = fields.String(dump_only=True)
    name = fields.String(required=True)
    description = fields.String(allow_none=True)


class PageSchema(Schema):
    """Paging query parameters."""

    page = fields.Integer(load_default=1)
    per_page = fields.Integer(load_default=20)


def make_versioned_app() -> Flask:
    """An app with two API versions documented by :class:`~gennet_sync.OpenAPI`."""
    app = Flask(__name__)
    setup_error_handlers(app)
    api = VersionedAPI(app)
    v1 = api.version("v1", deprecated="2025-01-01", sunset="2026-01-01")
    v2 = api.version("v2")

    @v1.get("/networks/<int:network_id>")
    @doc(response=NetworkSchema)
    def get_network_v1(network_id: int) -> dict[str, int]:
        """Fetch one network (v1)."""
        return {"id": network_id}

    @v2.get("/networks")
    @doc(response=NetworkSchema, many=True, query=PageSchema)
    def list_networks_v2() -> list[str]:
        """List networks, a page at a time."""
        return []

    @v2.post("/networks")
    @doc(body=NetworkSchema, response=NetworkSchema, status=201)
    def create_network_v2() -> tuple[dict[str, str], int]:
        """Create a network."""
        return {}, 201

    OpenAPI(app, title="GRN service", info={"description": "Gene regulatory networks"})
    return app

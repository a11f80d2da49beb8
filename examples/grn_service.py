"""The GRN service: gene regulatory networks stored in SQLite, behind a versioned API.

A network is a set of named genes (nodes) and signed regulations (edges: +1
activates, -1 represses)::

    POST /api/v2/networks
    {"name": "toggle", "nodes": ["x", "y"],
     "edges": [{"source": "x", "target": "y", "sign": -1},
               {"source": "y", "target": "x", "sign": -1}]}

    201 {"id": "3f0c...", "name": "toggle", "nodes": [...], "edges": [...],
         "created_at": "2026-01-01T00:00:00+00:00"}

Routes, under ``/api/v1`` (deprecated: ``Deprecation``, ``Sunset`` and ``Link``
headers) and ``/api/v2``:

- ``POST /networks``: store one; 201 with its ``id``.  More than 10,000 nodes
  (or 100,000 edges), duplicate nodes or edges naming unknown nodes: 422.
  A name already taken: 409.  Names (of networks and nodes) are compared as
  users see them: stored in Unicode NFC without surrounding whitespace, so a
  composed and a decomposed ``café`` are the same name; case is significant
  (gene symbols differ by case); control characters are refused (422).
- ``GET /networks``: v1 answers a plain list of summaries; v2 a page,
  ``{"items": [...], "next": "<cursor>" | null}``, with ``?limit=`` (1-100,
  default 20) and ``?cursor=`` (the previous page's ``next``).
- ``GET /networks/<id>``: one network; an unknown id is the 404 envelope
  ``NotFoundError("Network", id)``.
- ``DELETE /networks/<id>``: 204, or the same 404.

Responses are compressed when the client accepts it, request bodies may be
sent compressed, and ``/openapi.json`` and ``/docs`` describe the API.

Storage: one SQLite file shared by every gunicorn worker of a deployment (config
``DATABASE``, else the ``GRN_DATABASE`` environment variable, else
``gennet_grn.sqlite3`` in the system temp directory), in WAL mode with a busy
timeout, one connection per request.  A write that waits for other workers'
writes longer than the busy timeout is a 503 with ``Retry-After``.

Run it with ``gunicorn 'examples.grn_service:create_app()'``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
import tempfile
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from marshmallow import RAISE, Schema, fields, validate, validates_schema
from marshmallow import ValidationError as SchemaError

from gennet_sync import (
    Compression,
    ConflictError,
    NotFoundError,
    OpenAPI,
    ServiceUnavailableError,
    ValidationError,
    VersionedAPI,
    doc,
    setup_error_handlers,
)
from gennet_sync.console import BreakerConsole
from gennet_sync.health import Health
from gennet_sync.metrics import Metrics

__all__ = [
    "MAX_EDGES",
    "MAX_NODES",
    "EdgeSchema",
    "NetworkCreateSchema",
    "NetworkPageSchema",
    "NetworkSchema",
    "NetworkStore",
    "NetworkSummarySchema",
    "create_app",
    "default_database_path",
    "normalise_name",
]

#: Largest network the service stores.
MAX_NODES: Final = 10_000
#: Most edges a stored network may have.
MAX_EDGES: Final = 100_000
#: Largest page ``GET /api/v2/networks`` returns.
MAX_PAGE_SIZE: Final = 100
DEFAULT_PAGE_SIZE: Final = 20
#: How long a request waits for another worker's write lock before failing.
DEFAULT_BUSY_TIMEOUT: Final = 5.0

V1_DEPRECATED: Final = "2026-06-01"
V1_SUNSET: Final = "2027-06-01"

_SCHEMA_SQL: Final = """
CREATE TABLE IF NOT EXISTS networks (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    node_count INTEGER NOT NULL,
    edge_count INTEGER NOT NULL,
    nodes      TEXT NOT NULL,
    edges      TEXT NOT NULL
)
"""


#: Largest ``seq`` a cursor may name: SQLite's integers are 64-bit.
_MAX_SEQ: Final = 2**63 - 1

# -------------------------------------------------------------------- schemas


def _valid_unicode(text: str) -> None:
    """Refuse a lone surrogate: JSON can escape one, but no UTF-8 text can hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise SchemaError(
            f"Not valid Unicode: a lone surrogate at position {error.start}"
        ) from None


def normalise_name(name: str) -> str:
    """A name as users see it: Unicode NFC, without surrounding whitespace.

    ``"café"`` typed with a composed ``é`` (U+00E9) and pasted with a decomposed
    one (``e`` + U+0301) are one name, as are ``"toggle"`` and ``"toggle "``.  Case
    is kept and significant: gene symbols differ by case across species (human
    ``TP53``, mouse ``Trp53``), and ``"Toggle"`` does not look like ``"toggle"``.
    """
    name = name.strip()
    return name if unicodedata.is_normalized("NFC", name) else unicodedata.normalize("NFC", name)


def _no_control_characters(text: str) -> None:
    """Refuse characters nobody sees (a NUL, a newline): two names would look alike."""
    for position, character in enumerate(text):
        if unicodedata.category(character) == "Cc":
            raise SchemaError(f"Control character {character!r} at position {position}")


class _Name(fields.String):
    """A string field whose value is :func:`normalise_name`-d before it is validated."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return normalise_name(super()._deserialize(value, attr, data, **kwargs))


def _name_field(**options: Any) -> fields.String:
    """A name (of a network or a node): 1 to 200 characters of valid Unicode, in NFC."""
    return _Name(
        validate=[validate.Length(min=1, max=200), _valid_unicode, _no_control_characters],
        **options,
    )


class EdgeSchema(Schema):
    """A regulation: ``source`` acts on ``target``, activating (1) or repressing (-1)."""

    class Meta:
        unknown = RAISE

    source = _name_field(required=True)
    target = _name_field(required=True)
    sign = fields.Integer(required=True, strict=True, validate=validate.OneOf([1, -1]))


class NetworkCreateSchema(Schema):
    """Body of ``POST /networks``; edges must name nodes of the network."""

    class Meta:
        unknown = RAISE

    name = _name_field(required=True)
    nodes = fields.List(_name_field(), required=True, validate=validate.Length(min=1))
    edges = fields.List(fields.Nested(EdgeSchema), load_default=list)

    @validates_schema(skip_on_field_errors=True)
    def _check_references(self, data: dict[str, Any], **_kwargs: Any) -> None:
        seen: set[str] = set()
        duplicates: set[str] = set()
        for node in data["nodes"]:
            (duplicates if node in seen else seen).add(node)
        if duplicates:
            raise SchemaError(f"Duplicate nodes: {', '.join(sorted(duplicates))}", "nodes")
        problems: dict[int, dict[str, list[str]]] = {}
        for position, edge in enumerate(data["edges"]):
            for end in ("source", "target"):
                if edge[end] not in seen:
                    problems.setdefault(position, {})[end] = [f"Unknown node '{edge[end]}'"]
        if problems:
            raise SchemaError({"edges": problems})


class NetworkSummarySchema(Schema):
    """A network without its nodes and edges, as lists show it."""

    id = fields.String(required=True)
    name = fields.String(required=True)
    created_at = fields.String(required=True)
    node_count = fields.Integer(required=True)
    edge_count = fields.Integer(required=True)


class NetworkSchema(Schema):
    """A stored network."""

    id = fields.String(required=True)
    name = fields.String(required=True)
    created_at = fields.String(required=True)
    nodes = fields.List(fields.String(), required=True)
    edges = fields.List(fields.Nested(EdgeSchema), required=True)


class NetworkPageSchema(Schema):
    """One page of ``GET /api/v2/networks``."""

    items = fields.List(fields.Nested(NetworkSummarySchema), required=True)
    next = fields.String(allow_none=True, required=True)


class PageQuerySchema(Schema):
    """Query string of ``GET /api/v2/networks``."""

    class Meta:
        unknown = RAISE

    limit = fields.Integer(
        load_default=DEFAULT_PAGE_SIZE, validate=validate.Range(min=1, max=MAX_PAGE_SIZE)
    )
    cursor = fields.String(load_default=None)


# -------------------------------------------------------------------- storage


def default_database_path() -> str:
    """``GRN_DATABASE`` from the environment, else a file in the system temp directory."""
    return os.environ.get("GRN_DATABASE") or os.path.join(
        tempfile.gettempdir(), "gennet_grn.sqlite3"
    )


class NetworkStore:
    """Networks in one SQLite file, safe for several processes and threads.

    Each instance owns one connection: make one per request (or per thread),
    never share it between threads.  The database is in WAL mode, so readers
    never wait for a writer, and writers wait up to ``busy_timeout`` seconds for
    each other instead of failing at once.

    Example::

        NetworkStore.initialise("/tmp/grn.sqlite3")
        with NetworkStore("/tmp/grn.sqlite3") as store:
            network = store.create("toggle", ["x", "y"], [])
            store.get(network["id"])

    Args:
        path: The database file.
        busy_timeout: Seconds to wait for another connection's write lock.
    """

    def __init__(self, path: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE for writes).
        self.connection = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=True
        )
        self.connection.row_factory = sqlite3.Row
        self.connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")

    @classmethod
    def initialise(cls, path: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        """Create the table and switch the file to WAL mode (idempotent, any process)."""
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with cls(path, busy_timeout) as store:
            store.connection.execute("PRAGMA journal_mode = WAL")
            store.connection.execute(_SCHEMA_SQL)

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()

    def __enter__(self) -> NetworkStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction.

        Raises:
            ServiceUnavailableError: Another connection kept the write lock
                longer than the busy timeout (a 503 with ``Retry-After``).
        """
        # Taking the write lock up front avoids the deadlock of two readers that
        # both try to upgrade to writers.
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if getattr(error, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                raise
            raise ServiceUnavailableError(
                "The network database is busy with other writes; retry shortly",
                service="grn-database",
                retry_after=1,
            ) from error
        try:
            yield self.connection
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    def create(self, name: str, nodes: list[str], edges: list[dict[str, Any]]) -> dict[str, Any]:
        """Store a network and return it with its new ``id``.

        Raises:
            ConflictError: A network with this name exists.
            ServiceUnavailableError: The database stayed locked by other writes.
        """
        # Normalised here too, so a direct caller stores names as the API does.
        name = normalise_name(name)
        nodes = [normalise_name(node) for node in nodes]
        edges = [
            {
                **edge,
                "source": normalise_name(edge["source"]),
                "target": normalise_name(edge["target"]),
            }
            for edge in edges
        ]
        network_id = uuid.uuid4().hex
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            with self._write() as connection:
                connection.execute(
                    "INSERT INTO networks (id, name, created_at, node_count, edge_count,"
                    " nodes, edges) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        network_id,
                        name,
                        created_at,
                        len(nodes),
                        len(edges),
                        json.dumps(nodes),
                        json.dumps(edges),
                    ),
                )
        except sqlite3.IntegrityError as error:
            raise ConflictError(
                f"A network named '{name}' already exists", metadata={"name": name}
            ) from error
        return {
            "id": network_id,
            "name": name,
            "created_at": created_at,
            "nodes": nodes,
            "edges": edges,
        }

    def get(self, network_id: str) -> dict[str, Any]:
        """The network with this id.

        Raises:
            NotFoundError: No such network.
        """
        row = self.connection.execute(
            "SELECT id, name, created_at, nodes, edges FROM networks WHERE id = ?",
            (network_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError("Network", network_id)
        return {
            "id": row["id"],
            "name": row["name"],
            "created_at": row["created_at"],
            "nodes": json.loads(row["nodes"]),
            "edges": json.loads(row["edges"]),
        }

    def delete(self, network_id: str) -> None:
        """Delete the network with this id.

        Raises:
            NotFoundError: No such network.
            ServiceUnavailableError: The database stayed locked by other writes.
        """
        with self._write() as connection:
            deleted = connection.execute("DELETE FROM networks WHERE id = ?", (network_id,))
        if deleted.rowcount == 0:
            raise NotFoundError("Network", network_id)

    def summaries(
        self, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """``(seq, summary)`` of networks stored after position ``after``, oldest first."""
        sql = (
            "SELECT seq, id, name, created_at, node_count, edge_count FROM networks"
            " WHERE seq > ? ORDER BY seq"
        )
        parameters: tuple[int, ...] = (after,)
        if limit is not None:
            sql += " LIMIT ?"
            parameters = (after, limit)
        return [
            (
                row["seq"],
                {
                    "id": row["id"],
                    "name": row["name"],
                    "created_at": row["created_at"],
                    "node_count": row["node_count"],
                    "edge_count": row["edge_count"],
                },
            )
            for row in self.connection.execute(sql, parameters)
        ]


def _store() -> NetworkStore:
    """This request's store (one connection per request, closed at teardown)."""
    store = g.get("grn_store")
    if store is None:
        store = NetworkStore(current_app.config["DATABASE"], current_app.config["BUSY_TIMEOUT"])
        g.grn_store = store
    assert isinstance(store, NetworkStore)
    return store


def _close_store(_error: BaseException | None) -> None:
    store = g.pop("grn_store", None)
    if store is not None:
        store.close()


# ---------------------------------------------------------------------- views


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "seq" or not (value.isascii() and value.isdigit()) or int(value) > _MAX_SEQ:
            raise ValueError(text)
        return int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationError(
            "Invalid cursor: use the 'next' value of the previous page", field="cursor"
        ) from None


@doc(
    body=NetworkCreateSchema,
    response=NetworkSchema,
    status=201,
    errors=[ConflictError, ValidationError, ServiceUnavailableError],
)
def create_network() -> tuple[Response, int]:
    """Store a network.

    Every edge must name nodes of the network; a name already taken is a 409.
    """
    body = request.get_json()
    # Count before the schema looks at each item: an oversized network fails fast.
    for field, limit in (("nodes", MAX_NODES), ("edges", MAX_EDGES)):
        items = body.get(field) if isinstance(body, dict) else None
        if isinstance(items, list) and len(items) > limit:
            raise ValidationError(
                f"A network has at most {limit} {field}; got {len(items)}",
                field=field,
                metadata={f"max_{field}": limit},
            )
    data = NetworkCreateSchema().load(body)
    network = _store().create(data["name"], data["nodes"], data["edges"])
    return jsonify(NetworkSchema().dump(network)), 201


@doc(response=NetworkSchema, errors=[NotFoundError])
def get_network(network_id: str) -> Response:
    """Fetch one network with its nodes and edges."""
    return jsonify(NetworkSchema().dump(_store().get(network_id)))


@doc(status=204, errors=[NotFoundError, ServiceUnavailableError])
def delete_network(network_id: str) -> tuple[str, int]:
    """Delete a network."""
    _store().delete(network_id)
    return "", 204


@doc(response=NetworkSummarySchema, many=True)
def list_networks_v1() -> Response:
    """List every network (without nodes and edges), in one response."""
    summaries = [summary for _, summary in _store().summaries()]
    return jsonify(NetworkSummarySchema(many=True).dump(summaries))


@doc(response=NetworkPageSchema, query=PageQuerySchema, errors=[ValidationError])
def list_networks_v2() -> Response:
    """List networks a page at a time.

    Pass the ``next`` value of a page as ``cursor`` to get the following one;
    ``next`` is null on the last page.
    """
    query = PageQuerySchema().load(request.args.to_dict())
    after = 0 if query["cursor"] is None else _decode_cursor(query["cursor"])
    rows = _store().summaries(after, query["limit"] + 1)
    page = rows[: query["limit"]]
    following = _encode_cursor(page[-1][0]) if len(rows) > len(page) else None
    return jsonify(
        NetworkPageSchema().dump({"items": [summary for _, summary in page], "next": following})
    )


@doc(tags=["health"])
def health() -> Response:
    """Report that the service is up and its database answers."""
    _store().connection.execute("SELECT 1").fetchone()
    return jsonify({"status": "ok", "service": "grn-service"})


def _add_network_routes(blueprint: Blueprint, list_view: Callable[[], Response]) -> None:
    blueprint.add_url_rule("/networks", "create_network", create_network, methods=["POST"])
    blueprint.add_url_rule("/networks", "list_networks", list_view, methods=["GET"])
    blueprint.add_url_rule("/networks/<network_id>", "get_network", get_network, methods=["GET"])
    blueprint.add_url_rule(
        "/networks/<network_id>", "delete_network", delete_network, methods=["DELETE"]
    )


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The GRN service's Flask app.

    Example::

        app = create_app({"DATABASE": "/tmp/grn.sqlite3"})
        app.test_client().post("/api/v2/networks", json={"name": "n", "nodes": ["a"]})

    Args:
        config: Flask configuration over the defaults; ``DATABASE`` is the SQLite
            file (see :func:`default_database_path`), ``BUSY_TIMEOUT`` the seconds
            a write waits for another's lock.

    Returns:
        The app, with the error envelope, versions, compression and API docs.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024 * 1024
    app.config["BUSY_TIMEOUT"] = DEFAULT_BUSY_TIMEOUT
    if config:
        app.config.update(config)
    app.config.setdefault("DATABASE", default_database_path())
    NetworkStore.initialise(app.config["DATABASE"], app.config["BUSY_TIMEOUT"])

    setup_error_handlers(app)
    Metrics(app)  # GET /metrics
    Compression(app)
    api = VersionedAPI(app)
    _add_network_routes(
        api.version("v1", deprecated=V1_DEPRECATED, sunset=V1_SUNSET), list_networks_v1
    )
    _add_network_routes(api.version("v2"), list_networks_v2)
    app.add_url_rule("/health", "health", health, methods=["GET"])
    app.teardown_appcontext(_close_store)
    OpenAPI(app, title="GRN service", version="2.0.0")
    Health(app)
    BreakerConsole(app)
    return app

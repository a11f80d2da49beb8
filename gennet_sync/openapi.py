"""OpenAPI 3.1 documents that describe the gennet_sync error envelope, and offline docs.

:class:`OpenAPI` walks the app's URL map and builds the document with apispec and
its marshmallow plugin (this module writes no schema generator of its own):

- the error envelope is the ``ErrorEnvelope`` component schema, and each standard
  error is a component response (``NotFound``, ``ValidationError``...) with an
  example envelope;
- each operation lists the error codes it can return: those its view declares
  (``@doc(errors=[NotFoundError, ConflictError])``), those declared on its
  blueprint, version or app (:func:`declare_errors`), and the standard ones where
  they apply: 404 where the path has parameters; 400, 413, 415 and 422 where
  there is a request body; 422 with a query schema; 429 where marked rate
  limited; 502, 503 and 504 where the view calls another service
  (``@doc(calls=["grn"])``); 500 everywhere.  Each error status lists its codes
  (``x-error-codes``), one example envelope per code (``examples``) and, per
  code, the schema of its ``metadata`` (component schemas ``Error.<CODE>``);
- views declare their marshmallow schemas with the :func:`doc` decorator; the
  docstring's first line becomes the summary, the rest the description;
- the error catalogue, every code with its status, description, metadata and
  the operations that return it, is served at ``/errors`` (JSON, or a page
  without scripts for a browser) and linked from ``/docs``;
- views are left out with ``@doc(hidden=True)``, and so is every endpoint whose
  name starts with ``gennet_`` or ``gennet.`` (the library's own: the document,
  the docs, metrics, health checks), without any import of this module;
- with :class:`~gennet_sync.versioning.VersionedAPI`, each version also has its
  own document (``/openapi.json?version=v1`` and ``/api/v1/openapi.json``) and the
  operations of deprecated versions are marked ``deprecated``.

``/openapi.json`` serves the document and ``/docs`` serves Swagger UI, whose
assets come from the installed ``swagger-ui-bundle-v2`` package (Swagger UI 5,
which renders OpenAPI 3.1) through the app itself: no CDN, so the page works
offline.  apispec and the Swagger UI bundle are the ``docs`` extra; they are
imported only when a document or the page is first built.
"""

from __future__ import annotations

import copy
import functools
import html
import importlib
import json
import logging
import re
import secrets
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_from_directory
from marshmallow import Schema, fields
from werkzeug.routing import Rule

from gennet_sync.error_catalogue import (
    BAD_REQUEST,
    CRASH,
    METHOD_NOT_ALLOWED,
    ROUTING_NOT_FOUND,
    SCHEMA_VALIDATION,
    SERVICE_CALL_ERRORS,
    STANDARD_STATUSES,
    TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    ErrorCatalogue,
    ErrorEntry,
    ErrorLike,
    OperationRef,
    app_error_classes,
    error_entries,
    merge_entries,
    metadata_schema,
)
from gennet_sync.error_handler import app_state
from gennet_sync.exceptions import (
    MAX_FIELD_ERRORS,
    MAX_METADATA_ITEMS,
    MAX_METADATA_VALUES,
    MAX_STRING_LENGTH,
    GenNetException,
    MetadataField,
    NotFoundError,
    ValidationError,
    make_envelope,
)

__all__ = [
    "ErrorBodySchema",
    "ErrorEnvelopeSchema",
    "OpenAPI",
    "OperationDoc",
    "declare_errors",
    "doc",
    "is_library_endpoint",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
SchemaLike = type[Schema] | Schema

_FEATURE = "openapi"
_DOC_ATTRIBUTE = "_gennet_openapi"
_ERRORS_ATTRIBUTE = "_gennet_openapi_errors"
#: Library endpoints that are part of the API all the same.
_DOCUMENTED_LIBRARY_ENDPOINTS = frozenset({"gennet_api_versions"})
_RULE_VARIABLE = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<args>[^)]*)\))?:)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>"
)
_CONVERTER_SCHEMAS: Mapping[str, dict[str, Any]] = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "uuid": {"type": "string", "format": "uuid"},
    "path": {"type": "string"},
    "string": {"type": "string"},
    "default": {"type": "string"},
    "any": {"type": "string"},
}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SWAGGER_ASSETS = frozenset(
    {
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-ui.css",
        "index.css",
        "favicon-32x32.png",
        "favicon-16x16.png",
    }
)


# --------------------------------------------------------------------------- envelope schemas


class ErrorBodySchema(Schema):
    """The inside of the error envelope: ``code``, ``type``, ``message``, ``metadata``."""

    code = fields.String(
        required=True,
        metadata={"description": "Machine-readable code in UPPER_SNAKE", "example": "NOT_FOUND"},
    )
    type = fields.String(
        required=True,
        metadata={"description": "The error's type name", "example": "NotFoundError"},
    )
    message = fields.String(
        required=True,
        metadata={
            "description": f"Human-readable message; cut at {MAX_STRING_LENGTH} characters",
            "example": "Network with id 'abc123' not found",
        },
    )
    metadata = fields.Dict(
        keys=fields.String(),
        required=True,
        metadata={
            "description": (
                "Details of the error; always an object, maybe empty, and bounded: "
                f"strings cut at {MAX_STRING_LENGTH} characters, at most {MAX_METADATA_ITEMS} "
                "keys or items per container (the rest counted under a '...' key or a last "
                f"item), {MAX_METADATA_VALUES} values in all; a 422 lists at most "
                f"{MAX_FIELD_ERRORS} field errors, fields_omitted counting the rest"
            )
        },
    )


class ErrorEnvelopeSchema(Schema):
    """The error envelope every gennet_sync error response carries.

    Example::

        {"error": {"code": "NOT_FOUND", "type": "NotFoundError",
                   "message": "Network with id 'abc123' not found",
                   "metadata": {"resource_type": "Network", "resource_id": "abc123"}}}
    """

    error = fields.Nested(ErrorBodySchema, required=True)


@dataclass(frozen=True)
class _StandardError:
    component: str
    code: str
    type: str
    message: str
    description: str
    retry_after: bool = False


_STANDARD_ERRORS: Mapping[int, _StandardError] = {
    400: _StandardError(
        "BadRequest", "BAD_REQUEST", "BadRequest", "Malformed request", "Bad request"
    ),
    401: _StandardError(
        "Unauthorized",
        "UNAUTHORIZED",
        "UnauthorizedError",
        "Authentication required",
        "Unauthorized",
    ),
    403: _StandardError(
        "Forbidden", "FORBIDDEN", "ForbiddenError", "Access forbidden", "Forbidden"
    ),
    404: _StandardError(
        "NotFound", "NOT_FOUND", "NotFoundError", "Network with id 'abc123' not found", "Not found"
    ),
    409: _StandardError("Conflict", "CONFLICT", "ConflictError", "Conflict", "Conflict"),
    413: _StandardError(
        "PayloadTooLarge",
        "REQUEST_ENTITY_TOO_LARGE",
        "RequestEntityTooLarge",
        "The request body exceeds the limit of 16777216 bytes.",
        "Request body too large",
    ),
    415: _StandardError(
        "UnsupportedMediaType",
        "UNSUPPORTED_MEDIA_TYPE",
        "UnsupportedMediaType",
        "Unsupported Content-Encoding",
        "Unsupported media type or content coding",
    ),
    422: _StandardError(
        "ValidationError",
        "VALIDATION_ERROR",
        "ValidationError",
        "Request validation failed",
        "The request body is well-formed but invalid",
    ),
    429: _StandardError(
        "RateLimited",
        "RATE_LIMIT_EXCEEDED",
        "RateLimitError",
        "Rate limit exceeded",
        "Too many requests",
        retry_after=True,
    ),
    500: _StandardError(
        "InternalServerError",
        "INTERNAL_SERVER_ERROR",
        "InternalServerError",
        "Internal server error",
        "Unexpected server error",
    ),
    503: _StandardError(
        "ServiceUnavailable",
        "SERVICE_UNAVAILABLE",
        "ServiceUnavailableError",
        "Service unavailable",
        "A dependency is unavailable or a circuit breaker is open",
        retry_after=True,
    ),
}


# --------------------------------------------------------------------------- the decorator


@dataclass(frozen=True)
class OperationDoc:
    """What :func:`doc` records on a view; see there for the fields."""

    body: SchemaLike | None = None
    response: SchemaLike | None = None
    many: bool = False
    status: int = 200
    query: SchemaLike | None = None
    summary: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    errors: tuple[ErrorLike, ...] = ()
    calls: tuple[str, ...] = ()
    rate_limited: bool = False
    hidden: bool = False
    content_type: str = "application/json"
    extra: Mapping[str, Any] = field(default_factory=dict)


def doc(
    *,
    body: SchemaLike | None = None,
    response: SchemaLike | None = None,
    many: bool = False,
    status: int = 200,
    query: SchemaLike | None = None,
    summary: str | None = None,
    description: str | None = None,
    tags: Iterable[str] = (),
    errors: Iterable[ErrorLike] = (),
    calls: Iterable[str] = (),
    rate_limited: bool = False,
    hidden: bool = False,
    content_type: str = "application/json",
    extra: Mapping[str, Any] | None = None,
) -> Callable[[F], F]:
    """Declare how a view appears in the OpenAPI document; the view is unchanged.

    Put it under the route decorator.  Documentation only: validate the body
    yourself (``Schema().load(request.get_json())`` raises marshmallow's
    ``ValidationError``, which the error handlers answer with the 422 envelope).

    Example::

        @app.post("/networks")
        @doc(body=NetworkSchema, response=NetworkSchema, status=201,
             errors=[ConflictError], rate_limited=True)
        def create_network():
            \"\"\"Create a network.\"\"\"
            network = NetworkSchema().load(request.get_json())
            return NetworkSchema().dump(store.add(network)), 201

    Args:
        body: Marshmallow schema (class or instance) of the JSON request body.
        response: Marshmallow schema of the success response body.
        many: The response is a JSON array of ``response`` items.
        status: Status of the success response.
        query: Marshmallow schema whose fields are the query parameters.
        summary: Overrides the docstring's first line.
        description: Overrides the rest of the docstring.
        tags: Tags; the blueprint's name when none are given.
        errors: The errors the view can answer with, beyond the standard ones:
            exception classes (``NotFoundError``, your own ``GenNetException``
            subclasses, werkzeug's ``BadGateway``...), each documented with its
            code, or a standard status (401, 403, 404, 409, 413, 415, 422, 429,
            503) standing for the library's class for it.
        calls: Names of the services the view calls through ``ServiceSession``:
            documents 502 ``BAD_GATEWAY``, 503 ``SERVICE_UNAVAILABLE`` (also from
            an open breaker) and 504 ``GATEWAY_TIMEOUT``.
        rate_limited: Document the 429 response.
        hidden: Leave this view out of the document.
        content_type: Media type of the request and response bodies.
        extra: Raw OpenAPI operation fields merged in last (``{"security": [...]}``).

    Returns:
        A decorator that records an :class:`OperationDoc` on the view.

    Raises:
        ValueError: A status with no standard class, or a success ``status``
            outside 100-399.
        TypeError: An ``errors`` item that is neither an error class nor a status.
    """
    errors = tuple(errors)
    for error in errors:
        error_entries(error)  # fails here, at import time, not when the document is built
    calls = (calls,) if isinstance(calls, str) else tuple(calls)
    if not 100 <= status <= 399:
        raise ValueError(f"status {status} is not a success or redirect status")
    record = OperationDoc(
        body=body,
        response=response,
        many=many,
        status=status,
        query=query,
        summary=summary,
        description=description,
        tags=tuple(tags),
        errors=errors,
        calls=calls,
        rate_limited=rate_limited,
        hidden=hidden,
        content_type=content_type,
        extra=dict(extra or {}),
    )

    def decorate(view: F) -> F:
        setattr(view, _DOC_ATTRIBUTE, record)
        return view

    return decorate


def declare_errors(target: Flask | Blueprint, *errors: ErrorLike) -> None:
    """Declare errors that every operation of an app, blueprint or API version returns.

    For errors a whole group of views shares: authentication on a blueprint, a
    lookup in a version's ``url_value_preprocessor``.  They are added to what each
    view declares with :func:`doc`; a nested blueprint also gets its parents'.

    Example::

        admin = Blueprint("admin", __name__)
        declare_errors(admin, UnauthorizedError, ForbiddenError)

        v2 = api.version("v2")
        declare_errors(v2, NotFoundError)

    Args:
        target: A Flask app, a blueprint, or what ``VersionedAPI.version`` returned.
        *errors: Exception classes or standard statuses, as for ``doc(errors=...)``.

    Raises:
        ValueError: A status with no standard class.
        TypeError: An item that is neither an error class nor a status.
    """
    for error in errors:
        error_entries(error)
    declared: tuple[ErrorLike, ...] = getattr(target, _ERRORS_ATTRIBUTE, ())
    setattr(target, _ERRORS_ATTRIBUTE, declared + errors)


def is_library_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` is left out of the document as one of the library's own.

    An endpoint named ``gennet_<anything>``, or in a blueprint named ``gennet``
    (``gennet.metrics``), is operational (the document, the docs, metrics,
    health checks), not part of the service's API; a module that adds such a
    route needs no import of this one to keep it out.
    """
    if endpoint in _DOCUMENTED_LIBRARY_ENDPOINTS:
        return False
    return endpoint.startswith(("gennet_", "gennet."))


# --------------------------------------------------------------------------- Swagger UI assets


@functools.cache
def _swagger_ui_dir() -> Path | None:
    """Directory of the installed Swagger UI (5 or later), or ``None`` with a warning."""
    try:
        bundle = importlib.import_module("swagger_ui_bundle")
    except ImportError:
        logger.warning(
            "gennet_sync.openapi: /docs is disabled: install the 'docs' extra "
            "(swagger-ui-bundle-v2) to serve Swagger UI offline"
        )
        return None
    path = Path(str(bundle.swagger_ui_path))
    match = re.search(r"swagger-ui-(\d+)", path.name)
    if match is None or int(match.group(1)) < 5:
        logger.warning(
            "gennet_sync.openapi: /docs is disabled: the installed Swagger UI (%s) cannot "
            "render OpenAPI 3.1; install swagger-ui-bundle-v2>=5",
            path.name,
        )
        return None
    return path


_DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="stylesheet" href="{assets}/index.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
{errors_link}<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle(Object.assign({config}, {{
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  plugins: [SwaggerUIBundle.plugins.DownloadUrl],
  layout: "StandaloneLayout"
}}));
</script>
</body>
</html>
"""


# --------------------------------------------------------------------------- the extension


def _is_under(rule: str, prefix: str) -> bool:
    """Whether URL rule ``rule`` is ``prefix`` itself or a path below it."""
    return rule == prefix or rule.startswith(prefix + "/")


def _openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """Flask rule → OpenAPI path template and its path parameters."""
    parameters: list[dict[str, Any]] = []

    def replace(match: re.Match[str]) -> str:
        converter = match.group("converter") or "default"
        schema = dict(_CONVERTER_SCHEMAS.get(converter, {"type": "string"}))
        parameters.append(
            {"name": match.group("name"), "in": "path", "required": True, "schema": schema}
        )
        return "{" + match.group("name") + "}"

    return _RULE_VARIABLE.sub(replace, rule), parameters


class OpenAPI:
    """An OpenAPI 3.1 document for the app at ``/openapi.json`` and Swagger UI at ``/docs``.

    Set it up after the routes' blueprints and any :class:`VersionedAPI` (routes
    added later are still documented, since the document is built on the first
    request for it; only the per-version URL needs the versions to exist).

    Example::

        from marshmallow import Schema, fields
        from gennet_sync import NotFoundError, OpenAPI, doc, setup_error_handlers

        class NetworkSchema(Schema):
            id = fields.String(dump_only=True)
            name = fields.String(required=True)

        app = Flask(__name__)
        setup_error_handlers(app)

        @app.get("/networks/<network_id>")
        @doc(response=NetworkSchema, errors=[NotFoundError])
        def get_network(network_id):
            \"\"\"Fetch one network.\"\"\"

        OpenAPI(app, title="GRN service", version="2.0.0")
        # GET /openapi.json -> the document; GET /docs -> Swagger UI, offline;
        # GET /errors -> the error catalogue (JSON, or a page in a browser)

    Args:
        app: The app to set up now; or call :meth:`init_app` later.
        title: ``info.title``.
        version: ``info.version``: the version of the API description.
        spec_url: Where the document is served; ``None`` to not serve it.
        docs_url: Where Swagger UI is served; ``None`` to not serve it.
        info: More ``info`` fields (``description``, ``contact``...).
        servers: The ``servers`` list.
        openapi_version: The OpenAPI version written (3.1 by default).
        errors_url: Where the error catalogue is served; ``None`` to not serve it.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        title: str = "API",
        version: str = "1.0.0",
        spec_url: str | None = "/openapi.json",
        docs_url: str | None = "/docs",
        info: Mapping[str, Any] | None = None,
        servers: list[dict[str, Any]] | None = None,
        openapi_version: str = "3.1.0",
        errors_url: str | None = "/errors",
    ) -> None:
        if docs_url is not None and spec_url is None:
            raise ValueError("docs_url needs spec_url: the docs page loads the document from it")
        self.title = title
        self.version = version
        self.spec_url = spec_url
        self.docs_url = docs_url.rstrip("/") if docs_url else None
        self.errors_url = errors_url.rstrip("/") if errors_url else None
        self.info = dict(info or {})
        self.servers = list(servers or [])
        self.openapi_version = openapi_version
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the document, docs and error catalogue routes on ``app``."""
        state = app_state(app)
        existing = state.features.get(_FEATURE)
        if existing is not None and existing["extension"] is self:
            return
        if existing is not None:
            raise RuntimeError("this app already has an OpenAPI; use that one")
        state.features[_FEATURE] = {"extension": self, "cache": {}}
        if self.spec_url is not None:
            app.add_url_rule(self.spec_url, "gennet_openapi_spec", self._serve_spec)
            versioning = state.features.get("versioning")
            if versioning is not None:
                app.add_url_rule(
                    f"{versioning.prefix}/<version>/openapi.json",
                    "gennet_openapi_version_spec",
                    self._serve_version_spec,
                )
        if self.errors_url is not None:
            _add_catalogue_rule(app, self.errors_url, self._serve_errors)
        if self.docs_url is not None and _swagger_ui_dir() is not None:
            app.add_url_rule(self.docs_url, "gennet_docs", self._serve_docs)
            app.add_url_rule(
                f"{self.docs_url}/assets/<path:filename>", "gennet_docs_asset", self._serve_asset
            )

    # ------------------------------------------------------------------ building

    def spec(self, app: Flask, api_version: str | None = None) -> dict[str, Any]:
        """The OpenAPI document of ``app`` (or of one API version) as a dict.

        Args:
            app: The app to describe.
            api_version: A version registered with ``VersionedAPI``: only its
                operations are described.  ``None`` describes the whole app.

        Returns:
            The document; built once per version and cached.

        Raises:
            NotFoundError: ``api_version`` is not a registered version.
        """
        cache = self._cache(app)
        if api_version not in cache:
            cache[api_version] = self._build(app, api_version)
        document: dict[str, Any] = cache[api_version]
        return document

    def catalogue(self, app: Flask) -> ErrorCatalogue:
        """The error catalogue of ``app``: every code, and the operations that return it.

        It holds the codes of every documented operation, the ones any request
        may get (an unknown URL, a method the URL does not have, a crash), and
        every ``GenNetException`` subclass defined in the app's package, which
        shows as declared by no operation until one declares it.

        Returns:
            The catalogue; built once and cached, and built again when the
            app's package has gained (or lost) exception classes since, as
            when a module defining some is imported after the first request.
        """
        cache = self._cache(app)
        classes = app_error_classes(app)
        # Weak references: the cache must not keep a class alive (one made in a
        # test, say), or it would stay in the catalogue for good.
        key = tuple(weakref.ref(cls) for cls in classes)
        cached = cache.get(_CATALOGUE_KEY)
        if isinstance(cached, tuple) and cached[0] == key:
            catalogue: ErrorCatalogue = cached[1]
            return catalogue
        catalogue = self._build_catalogue(app, classes)
        cache[_CATALOGUE_KEY] = (key, catalogue)
        cache.pop(_PAGE_KEY, None)
        return catalogue

    def _cache(self, app: Flask) -> dict[Any, Any]:
        state = app_state(app).features.get(_FEATURE)
        if isinstance(state, dict) and state.get("extension") is self:
            cache: dict[Any, Any] = state["cache"]
            return cache
        # Not set up on this app (spec() called directly): cache on the side,
        # for as long as the app lives.
        return self._side_caches.setdefault(app, {})

    @functools.cached_property
    def _side_caches(self) -> weakref.WeakKeyDictionary[Flask, dict[Any, Any]]:
        return weakref.WeakKeyDictionary()

    def _versions(self, app: Flask) -> Mapping[str, Any]:
        versioning = app_state(app).features.get("versioning")
        return versioning.versions if versioning is not None else {}

    def _plan(self, app: Flask, selected: Any) -> list[_Operation]:
        """The operations to document (all, or those under one version's prefix)."""
        versions = self._versions(app)
        operation_ids: set[str] = set()
        planned: list[_Operation] = []
        for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
            if (
                is_library_endpoint(rule.endpoint)
                or rule.endpoint == "static"
                or rule.endpoint.endswith(".static")
            ):
                continue
            if selected is not None and not _is_under(rule.rule, selected.url_prefix):
                continue
            view = app.view_functions.get(rule.endpoint)
            if view is None:
                continue
            record: OperationDoc = getattr(view, _DOC_ATTRIBUTE, None) or OperationDoc()
            if record.hidden:
                continue
            deprecated = self._is_deprecated(rule, versions)
            declared = _group_errors(app, rule.endpoint)
            planned.extend(
                self._operations(app, rule, view, record, declared, operation_ids, deprecated)
            )
        return planned

    def _build(self, app: Flask, api_version: str | None) -> dict[str, Any]:
        apispec = importlib.import_module("apispec")
        marshmallow_ext = importlib.import_module("apispec.ext.marshmallow")
        versions = self._versions(app)
        selected = None
        if api_version is not None:
            selected = versions.get(api_version)
            if selected is None:
                raise NotFoundError(
                    "API version", api_version, metadata={"supported_versions": list(versions)}
                )
        title = self.title if selected is None else f"{self.title} ({api_version})"
        spec = apispec.APISpec(
            title=title,
            version=self.version,
            openapi_version=self.openapi_version,
            plugins=[marshmallow_ext.MarshmallowPlugin()],
            # apispec merges its options into the document in place: give it copies.
            **({"info": copy.deepcopy(self.info)} if self.info else {}),
            **({"servers": copy.deepcopy(self.servers)} if self.servers else {}),
        )
        spec.components.schema("ErrorBody", schema=ErrorBodySchema)
        spec.components.schema("ErrorEnvelope", schema=ErrorEnvelopeSchema)
        spec.components.header(
            "Retry-After",
            {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}},
        )
        # Kept for documents that refer to them (``extra={"responses": ...}``).
        for status, error in _STANDARD_ERRORS.items():
            spec.components.response(error.component, _error_response(status, error))
        planned = self._plan(app, selected)
        # One component per (status, code) in this document, with every source of
        # that code merged: the same code reads the same wherever it is returned.
        entries = {
            entry.key: entry
            for entry in merge_entries(entry for op in planned for entry in op.errors)
        }
        names = _component_names(entries)
        for key, entry in sorted(entries.items()):
            spec.components.schema(names[key], component=_code_schema(entry))
            spec.components.example(
                names[key], {"summary": entry.description, "value": dict(entry.example)}
            )
        by_path: dict[str, dict[str, Any]] = {}
        for op in planned:
            responses = op.operation["responses"]
            for status, group in _by_status(op.errors).items():
                responses[str(status)] = _code_response(
                    status, [entries[entry.key] for entry in group], names
                )
            op.operation["responses"] = dict(
                sorted(responses.items(), key=lambda item: _status_order(item[0]))
            )
            op.operation.update(op.extra)
            by_path.setdefault(op.path, {})[op.method.lower()] = op.operation
        for path, operations in by_path.items():
            spec.path(path=path, operations=operations)
        document: dict[str, Any] = spec.to_dict()
        # For checks that read only the document (schemathesis against a service
        # elsewhere): what a request no operation serves can get, 405 included.
        anywhere: dict[str, list[str]] = {}
        for entry in merge_entries(self._any_request_errors(app)):
            anywhere.setdefault(str(entry.status), []).append(entry.code)
        document[_ANY_REQUEST_EXTENSION] = anywhere
        return document

    def _any_request_errors(self, app: Flask) -> list[ErrorEntry]:
        """The errors a request can get whatever its URL and method."""
        anywhere = [ROUTING_NOT_FOUND, METHOD_NOT_ALLOWED, CRASH]
        if self._versions(app):
            anywhere.append(_UNKNOWN_VERSION)
        if "compression" in app_state(app).features:
            anywhere.extend(_DECODING_ERRORS)
        return anywhere

    def _build_catalogue(
        self, app: Flask, classes: Sequence[type[GenNetException]]
    ) -> ErrorCatalogue:
        catalogue = ErrorCatalogue(self.title)
        for op in self._plan(app, None):
            tags = op.operation.get("tags") or [None]
            ref = OperationRef(op.method, op.path, op.operation["operationId"], tags[0])
            catalogue.add(op.errors, ref)
        catalogue.add(self._any_request_errors(app), any_request=True)
        for cls in classes:
            if isinstance(cls.code, str) and 400 <= cls.status_code <= 599:
                catalogue.add(error_entries(cls))  # not a base class with a 3xx or no code
        return catalogue

    @staticmethod
    def _is_deprecated(rule: Rule, versions: Mapping[str, Any]) -> bool:
        for version in versions.values():
            if _is_under(rule.rule, version.url_prefix):
                return bool(version.is_deprecated)
        return False

    @staticmethod
    def _operations(
        app: Flask,
        rule: Rule,
        view: Callable[..., Any],
        record: OperationDoc,
        declared: Sequence[ErrorLike],
        operation_ids: set[str],
        deprecated: bool,
    ) -> list[_Operation]:
        path, path_parameters = _openapi_path(rule.rule)
        methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        docstring = (view.__doc__ or "").strip()
        first_line, _, rest = docstring.partition("\n")
        blueprint = rule.endpoint.rsplit(".", 1)[0] if "." in rule.endpoint else None
        decodes = "compression" in app_state(app).features
        body_limit = bool(app.config.get("MAX_CONTENT_LENGTH")) or decodes
        planned: list[_Operation] = []
        for method in methods:
            operation_id = (
                rule.endpoint if len(methods) == 1 else f"{rule.endpoint}_{method.lower()}"
            )
            base_id, counter = operation_id, 2
            while operation_id in operation_ids:
                operation_id, counter = f"{base_id}_{counter}", counter + 1
            operation_ids.add(operation_id)
            operation: dict[str, Any] = {"operationId": operation_id}
            summary = record.summary or first_line.strip()
            if summary:
                operation["summary"] = summary
            description = record.description or rest.strip()
            if record.calls:
                calls = ", ".join(f"`{name}`" for name in record.calls)
                description = f"{description}\n\nCalls {calls}.".strip()
            if description:
                operation["description"] = description
            tags = list(record.tags) or ([blueprint] if blueprint else [])
            if tags:
                operation["tags"] = tags
            if deprecated:
                operation["deprecated"] = True
            parameters: list[dict[str, Any]] = list(path_parameters)
            if record.query is not None:
                parameters.append({"in": "query", "schema": record.query})
            if parameters:
                operation["parameters"] = parameters
            has_body = method in _BODY_METHODS
            if record.body is not None and has_body:
                operation["requestBody"] = {
                    "required": True,
                    "content": {record.content_type: {"schema": record.body}},
                }
            operation["responses"] = {str(record.status): _success_response(record)}
            errors: list[ErrorEntry] = []
            for error in (*record.errors, *declared):
                errors.extend(error_entries(error))
            if path_parameters:
                errors.extend((*error_entries(NotFoundError), ROUTING_NOT_FOUND))
            if has_body:
                errors.extend((BAD_REQUEST, UNSUPPORTED_MEDIA_TYPE, SCHEMA_VALIDATION))
                if body_limit:
                    errors.append(TOO_LARGE)
            if record.query is not None:
                errors.append(SCHEMA_VALIDATION)
            if record.rate_limited:
                errors.extend(STANDARD_STATUSES[429])
            if record.calls:
                errors.extend(SERVICE_CALL_ERRORS)
            errors.extend(STANDARD_STATUSES[500])
            if decodes:
                # Compression decodes any request's body, a GET's too, before the view.
                errors.extend(_DECODING_ERRORS)
            planned.append(
                _Operation(path, method, operation, merge_entries(errors), dict(record.extra))
            )
        return planned

    # ------------------------------------------------------------------ serving

    def _serve_spec(self) -> Response:
        api_version = request.args.get("version") or None
        return jsonify(self.spec(current_app._get_current_object(), api_version))  # type: ignore[attr-defined]

    def _serve_version_spec(self, version: str) -> Response:
        return jsonify(self.spec(current_app._get_current_object(), version))  # type: ignore[attr-defined]

    def _serve_errors(self) -> Response:
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        wanted = request.args.get("format")
        if wanted not in (None, "json", "html"):
            raise ValidationError(
                "format must be json or html",
                field="format",
                metadata={"allowed": ["json", "html"]},
            )
        if wanted is None:
            # A browser asks for text/html first; an API client, */* or JSON.
            best = request.accept_mimetypes.best_match(["application/json", "text/html"])
            wanted = "html" if best == "text/html" else "json"
        catalogue = self.catalogue(app)
        if wanted == "json":
            response = jsonify(catalogue.to_dict())
        else:
            # One rendering for every mount point: behind ProxyFix(x_prefix=1) the
            # root comes from a request header, so a page cached per root would
            # let clients grow the cache without bound.
            cache = self._cache(app)
            page = cache.get(_PAGE_KEY)
            if not isinstance(page, str):
                docs = (
                    f"{_ROOT_MARK}{self.docs_url}" if "gennet_docs" in app.view_functions else None
                )
                page = cache[_PAGE_KEY] = catalogue.to_html(
                    docs_url=docs, json_url=f"{_ROOT_MARK}{self.errors_url}?format=json"
                )
            root = html.escape(request.script_root)
            response = Response(page.replace(_ROOT_MARK, root), mimetype="text/html")
        response.vary.add("Accept")
        return response

    def _app_route_at_errors_url(self, app: Flask) -> str | None:
        """The endpoint of an app route at ``errors_url`` other than ours, if any."""
        for rule in app.url_map.iter_rules("gennet_errors"):
            if isinstance(rule, _CatalogueRuleMixin):
                return rule.shadowed_by
        return None

    def _serve_docs(self) -> Response:
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        spec_url = f"{request.script_root}{self.spec_url}"
        config: dict[str, Any] = {"validatorUrl": None}  # no badge fetched from the internet
        versions = list(self._versions(app))
        if versions:
            config["urls"] = [{"name": f"{self.title} (all versions)", "url": spec_url}] + [
                {"name": f"{self.title} {name}", "url": f"{spec_url}?version={name}"}
                for name in reversed(versions)
            ]
        else:
            config["url"] = spec_url
        # Escape "</" so no value can close the <script> element early.
        config_js = json.dumps(config).replace("</", "<\\/")
        errors_link = ""
        if (
            self.errors_url is not None
            and "gennet_errors" in app.view_functions
            and self._app_route_at_errors_url(app) is None
        ):
            href = html.escape(f"{request.script_root}{self.errors_url}")
            errors_link = _ERRORS_LINK.format(href=href)
        page = _DOCS_PAGE.format(
            title=html.escape(self.title),
            assets=html.escape(f"{request.script_root}{self.docs_url}/assets"),
            config=config_js,
            errors_link=errors_link,
        )
        return Response(page, mimetype="text/html")

    def _serve_asset(self, filename: str) -> Response:
        directory = _swagger_ui_dir()
        if directory is None or filename not in _SWAGGER_ASSETS:
            raise NotFoundError("Docs asset", filename)
        return send_from_directory(directory, filename, max_age=86400)


_CATALOGUE_KEY = "gennet_error_catalogue"
#: Stands for the request's script root in the cached catalogue page; random, so
#: no text of the app's can contain it, and unchanged by HTML escaping.
_ROOT_MARK = f"gennet-script-root-{secrets.token_hex(8)}"
_PAGE_KEY = (_CATALOGUE_KEY, "html")
#: The document's top-level field listing, per status, the codes any request can get.
_ANY_REQUEST_EXTENSION = "x-error-codes-any-request"
#: What Compression answers when it cannot decode a request body.
_DECODING_ERRORS = (BAD_REQUEST, UNSUPPORTED_MEDIA_TYPE, TOO_LARGE)


class _CatalogueRuleMixin:
    """The catalogue's URL rule: it steps aside for a GET route of the app's own at its path.

    Werkzeug tries the rules of one path in the order they were added, so a
    route the app adds at ``/errors`` after OpenAPI would never be reached.
    Matching reads ``methods``: once the URL map holds another rule with the
    same path answering GET, this rule answers no method and werkzeug routes the
    request to the app's rule, with that rule's blueprint hooks, as if the
    catalogue were not there.  The decision is made again only when rules are
    added (Flask forbids that after the first request), so routing costs
    nothing more.
    """

    map: Any
    rule: str
    endpoint: str
    _gennet_methods: set[str] | None
    _gennet_rule_count = -1
    _gennet_shadowed_by: str | None = None

    @property
    def methods(self) -> set[str] | None:
        if self.map is not None and self._shadowed() is not None:
            return set()
        return self._gennet_methods

    @methods.setter
    def methods(self, value: set[str] | None) -> None:
        self._gennet_methods = value

    @property
    def shadowed_by(self) -> str | None:
        """The endpoint of the app's own GET route at this path, if there is one."""
        return self._shadowed() if self.map is not None else None

    def _shadowed(self) -> str | None:
        # The map only grows: its size says whether a rule was added since.
        count = len(self.map._rules)
        if count != self._gennet_rule_count:
            self._gennet_rule_count = count
            found = next(
                (
                    other.endpoint
                    for other in self.map.iter_rules()
                    if other is not self
                    and other.rule == self.rule
                    and "GET" in (other.methods or ("GET",))
                ),
                None,
            )
            if found is not None and self._gennet_shadowed_by is None:
                logger.warning(
                    "gennet_sync.openapi: %s is the app's own route (%s): the error catalogue "
                    "is not served there; pass OpenAPI(errors_url=...) to serve it elsewhere",
                    self.rule,
                    found,
                )
            self._gennet_shadowed_by = found
        return self._gennet_shadowed_by


def _add_catalogue_rule(app: Flask, path: str, view: Callable[[], Response]) -> None:
    """Add the catalogue's route as ``app.add_url_rule`` would, with a rule that steps aside."""
    base = app.url_rule_class
    rule_class: type[Rule] = type("CatalogueRule", (_CatalogueRuleMixin, base), {})
    had_own = "url_rule_class" in vars(app)
    app.url_rule_class = rule_class
    try:
        app.add_url_rule(path, "gennet_errors", view)
    finally:
        if had_own:
            app.url_rule_class = base
        else:
            del app.url_rule_class


_ERRORS_LINK = (
    '<nav class="gennet-errors" style="font:14px sans-serif;padding:8px 20px">'
    '<a href="{href}">Error codes: every code this API returns</a></nav>\n'
)
_UNKNOWN_VERSION = ErrorEntry(
    status=404,
    code="NOT_FOUND",
    description="The URL names an API version that does not exist",
    types=("NotFoundError",),
    metadata={
        "resource_type": MetadataField(str, "The kind of resource", True, "API version"),
        "resource_id": MetadataField(object, "The identifier that was asked for", True, "v9"),
        "supported_versions": MetadataField(list, "The versions served", example=["v1", "v2"]),
    },
    example=make_envelope(
        "NOT_FOUND",
        "NotFoundError",
        "API version with id 'v9' not found",
        {"resource_type": "API version", "resource_id": "v9", "supported_versions": ["v1", "v2"]},
    ),
)


@dataclass
class _Operation:
    """One documented operation, before its error responses are written."""

    path: str
    method: str
    operation: dict[str, Any]
    errors: list[ErrorEntry]
    extra: dict[str, Any]


def _group_errors(app: Flask, endpoint: str) -> list[ErrorLike]:
    """Errors declared on the app and on each blueprint the endpoint is nested in."""
    declared: list[ErrorLike] = list(getattr(app, _ERRORS_ATTRIBUTE, ()))
    parts = endpoint.split(".")[:-1]
    for depth in range(1, len(parts) + 1):
        blueprint = app.blueprints.get(".".join(parts[:depth]))
        if blueprint is not None:
            declared.extend(getattr(blueprint, _ERRORS_ATTRIBUTE, ()))
    return declared


def _by_status(entries: Iterable[ErrorEntry]) -> dict[int, list[ErrorEntry]]:
    grouped: dict[int, list[ErrorEntry]] = {}
    for entry in entries:
        grouped.setdefault(entry.status, []).append(entry)
    return grouped


def _status_order(status: str) -> tuple[int, str]:
    return (int(status), status) if status.isdigit() else (1000, status)


_COMPONENT_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _component_names(entries: Mapping[tuple[int, str], ErrorEntry]) -> dict[tuple[int, str], str]:
    """``Error.NOT_FOUND``; with the status too when a code is used at two statuses."""
    statuses: dict[str, int] = {}
    for _, code in entries:
        statuses[code] = statuses.get(code, 0) + 1
    names: dict[tuple[int, str], str] = {}
    taken: set[str] = set()
    for status, code in sorted(entries):
        base = "Error." + (_COMPONENT_UNSAFE.sub("_", code) or "_")
        name = base if statuses[code] == 1 else f"{base}.{status}"
        while name in taken:  # two codes that differ only in unsafe characters
            name += "_"
        taken.add(name)
        names[(status, code)] = name
    return names


def _code_schema(entry: ErrorEntry) -> dict[str, Any]:
    """The envelope of one code: ``code`` fixed, its ``metadata`` keys described."""
    return {
        "description": entry.description,
        "allOf": [{"$ref": "#/components/schemas/ErrorEnvelope"}],
        "properties": {
            "error": {
                "properties": {
                    "code": {"const": entry.code},
                    "metadata": metadata_schema(entry),
                }
            }
        },
    }


def _code_response(
    status: int, entries: Sequence[ErrorEntry], names: Mapping[tuple[int, str], str]
) -> dict[str, Any]:
    """An error status of one operation: its codes, a schema and an example for each."""
    refs = [{"$ref": f"#/components/schemas/{names[entry.key]}"} for entry in entries]
    lines = [f"- `{entry.code}`: {entry.description}" for entry in entries]
    response: dict[str, Any] = {
        "description": "\n".join(lines),
        "content": {
            "application/json": {
                "schema": refs[0] if len(refs) == 1 else {"oneOf": refs},
                "examples": {
                    entry.code: {"$ref": f"#/components/examples/{names[entry.key]}"}
                    for entry in entries
                },
            }
        },
        "x-error-codes": [entry.code for entry in entries],
    }
    if any(entry.retry_after for entry in entries):
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return response


def _error_response(status: int, error: _StandardError) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if status == 404:
        metadata = {"resource_type": "Network", "resource_id": "abc123"}
    elif status == 422:
        metadata = {"fields": {"name": ["Missing data for required field."]}}
    elif error.retry_after:
        metadata = {"retry_after": 30}
    response: dict[str, Any] = {
        "description": error.description,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorEnvelope"},
                "example": {
                    "error": {
                        "code": error.code,
                        "type": error.type,
                        "message": error.message,
                        "metadata": metadata,
                    }
                },
            }
        },
    }
    if error.retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return response


def _success_response(record: OperationDoc) -> dict[str, Any]:
    response: dict[str, Any] = {"description": "Success"}
    if record.response is not None:
        schema: Any = record.response
        if record.many:
            schema = {"type": "array", "items": record.response}
        response["content"] = {record.content_type: {"schema": schema}}
    return response

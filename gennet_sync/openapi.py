"""OpenAPI 3.1 documents that describe the gennet_sync error envelope, and offline docs.

:class:`OpenAPI` walks the app's URL map and builds the document with apispec and
its marshmallow plugin (this module writes no schema generator of its own):

- the error envelope is the ``ErrorEnvelope`` component schema, and each standard
  error is a component response (``NotFound``, ``ValidationError``...) with an
  example envelope;
- every operation gets the standard errors: 404 where the path has parameters,
  422 where there is a request body, 429 where marked rate limited (with
  ``Retry-After``), 500 and 503 everywhere;
- views declare their marshmallow schemas with the :func:`doc` decorator; the
  docstring's first line becomes the summary, the rest the description;
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, Response, current_app, jsonify, request, send_from_directory
from marshmallow import Schema, fields
from werkzeug.routing import Rule

from gennet_sync.error_handler import app_state
from gennet_sync.exceptions import (
    MAX_FIELD_ERRORS,
    MAX_METADATA_ITEMS,
    MAX_METADATA_VALUES,
    MAX_STRING_LENGTH,
    NotFoundError,
)

__all__ = [
    "ErrorBodySchema",
    "ErrorEnvelopeSchema",
    "OpenAPI",
    "OperationDoc",
    "doc",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
SchemaLike = type[Schema] | Schema

_FEATURE = "openapi"
_DOC_ATTRIBUTE = "_gennet_openapi"
_OWN_ENDPOINTS = (
    "gennet_openapi_spec",
    "gennet_openapi_version_spec",
    "gennet_docs",
    "gennet_docs_asset",
)
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
    errors: tuple[int, ...] = ()
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
    errors: Iterable[int] = (),
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
        @doc(body=NetworkSchema, response=NetworkSchema, status=201, rate_limited=True)
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
        errors: More documented error statuses (401, 403, 409, 413, 415...).
        rate_limited: Document the 429 response.
        hidden: Leave this view out of the document.
        content_type: Media type of the request and response bodies.
        extra: Raw OpenAPI operation fields merged in last (``{"security": [...]}``).

    Returns:
        A decorator that records an :class:`OperationDoc` on the view.
    """
    unknown = [code for code in errors if code not in _STANDARD_ERRORS]
    if unknown:
        raise ValueError(
            f"errors {unknown} have no standard response; known: {sorted(_STANDARD_ERRORS)}"
        )
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
        errors=tuple(errors),
        rate_limited=rate_limited,
        hidden=hidden,
        content_type=content_type,
        extra=dict(extra or {}),
    )

    def decorate(view: F) -> F:
        setattr(view, _DOC_ATTRIBUTE, record)
        return view

    return decorate


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
<div id="swagger-ui"></div>
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
        from gennet_sync import OpenAPI, doc, setup_error_handlers

        class NetworkSchema(Schema):
            id = fields.String(dump_only=True)
            name = fields.String(required=True)

        app = Flask(__name__)
        setup_error_handlers(app)

        @app.get("/networks/<network_id>")
        @doc(response=NetworkSchema)
        def get_network(network_id):
            \"\"\"Fetch one network.\"\"\"

        OpenAPI(app, title="GRN service", version="2.0.0")
        # GET /openapi.json -> the document; GET /docs -> Swagger UI, offline

    Args:
        app: The app to set up now; or call :meth:`init_app` later.
        title: ``info.title``.
        version: ``info.version``: the version of the API description.
        spec_url: Where the document is served; ``None`` to not serve it.
        docs_url: Where Swagger UI is served; ``None`` to not serve it.
        info: More ``info`` fields (``description``, ``contact``...).
        servers: The ``servers`` list.
        openapi_version: The OpenAPI version written (3.1 by default).
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
    ) -> None:
        if docs_url is not None and spec_url is None:
            raise ValueError("docs_url needs spec_url: the docs page loads the document from it")
        self.title = title
        self.version = version
        self.spec_url = spec_url
        self.docs_url = docs_url.rstrip("/") if docs_url else None
        self.info = dict(info or {})
        self.servers = list(servers or [])
        self.openapi_version = openapi_version
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the document and docs routes on ``app``."""
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
        state = app_state(app).features.get(_FEATURE)
        cache: dict[str | None, dict[str, Any]] = state["cache"] if isinstance(state, dict) else {}
        if api_version not in cache:
            cache[api_version] = self._build(app, api_version)
        return cache[api_version]

    def _versions(self, app: Flask) -> Mapping[str, Any]:
        versioning = app_state(app).features.get("versioning")
        return versioning.versions if versioning is not None else {}

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
        for status, error in _STANDARD_ERRORS.items():
            spec.components.response(error.component, _error_response(status, error))
        operation_ids: set[str] = set()
        for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
            if (
                rule.endpoint in _OWN_ENDPOINTS
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
            path, operations = self._operations(rule, view, record, operation_ids, deprecated)
            if operations:
                spec.path(path=path, operations=operations)
        document: dict[str, Any] = spec.to_dict()
        return document

    @staticmethod
    def _is_deprecated(rule: Rule, versions: Mapping[str, Any]) -> bool:
        for version in versions.values():
            if _is_under(rule.rule, version.url_prefix):
                return bool(version.is_deprecated)
        return False

    @staticmethod
    def _operations(
        rule: Rule,
        view: Callable[..., Any],
        record: OperationDoc,
        operation_ids: set[str],
        deprecated: bool,
    ) -> tuple[str, dict[str, Any]]:
        path, path_parameters = _openapi_path(rule.rule)
        methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        docstring = (view.__doc__ or "").strip()
        first_line, _, rest = docstring.partition("\n")
        blueprint = rule.endpoint.rsplit(".", 1)[0] if "." in rule.endpoint else None
        operations: dict[str, Any] = {}
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
            responses: dict[str, Any] = {str(record.status): _success_response(record)}
            error_statuses = set(record.errors) | {500, 503}
            if path_parameters:
                error_statuses.add(404)
            if has_body:
                error_statuses.add(422)
            if record.rate_limited:
                error_statuses.add(429)
            for status in sorted(error_statuses):
                responses[str(status)] = _STANDARD_ERRORS[status].component
            operation["responses"] = responses
            operation.update(record.extra)
            operations[method.lower()] = operation
        return path, operations

    # ------------------------------------------------------------------ serving

    def _serve_spec(self) -> Response:
        api_version = request.args.get("version") or None
        return jsonify(self.spec(current_app._get_current_object(), api_version))  # type: ignore[attr-defined]

    def _serve_version_spec(self, version: str) -> Response:
        return jsonify(self.spec(current_app._get_current_object(), version))  # type: ignore[attr-defined]

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
        page = _DOCS_PAGE.format(
            title=html.escape(self.title),
            assets=html.escape(f"{request.script_root}{self.docs_url}/assets"),
            config=config_js,
        )
        return Response(page, mimetype="text/html")

    def _serve_asset(self, filename: str) -> Response:
        directory = _swagger_ui_dir()
        if directory is None or filename not in _SWAGGER_ASSETS:
            raise NotFoundError("Docs asset", filename)
        return send_from_directory(directory, filename, max_age=86400)


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

"""The error catalogue: every error code a service returns, read from the exception classes.

Each exception class is the source of truth for its entry: ``status_code``,
``code``, ``description`` (else its docstring's first line) and
``metadata_fields`` (with those of its base classes).  werkzeug's HTTP errors
(``NotFound``, ``BadGateway``...) have entries too, with the code the error
handlers give them (``http_status_code``).  :class:`~gennet_sync.openapi.OpenAPI`
uses these entries for the error responses of each operation and serves the
catalogue at ``/errors``; the same entries back the check in
:mod:`gennet_sync.testing`.

Nothing here runs on the request path: entries are built when a document or the
catalogue is first asked for, and cached with it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import jinja2
from flask import Flask
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    UnsupportedMediaType,
)

from gennet_sync.circuit_breaker import CircuitBreakerError
from gennet_sync.downstream import BadGatewayError, GatewayTimeoutError, _exception_classes
from gennet_sync.error_handler import http_status_code
from gennet_sync.exceptions import (
    MAX_FIELD_ERRORS,
    ConflictError,
    ForbiddenError,
    GenNetException,
    InternalServerError,
    MetadataField,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
    make_envelope,
)

__all__ = [
    "ErrorCatalogue",
    "ErrorEntry",
    "ErrorLike",
    "OperationRef",
    "app_error_classes",
    "error_entries",
    "merge_entries",
    "metadata_schema",
]

#: What ``@doc(errors=...)`` and :func:`~gennet_sync.openapi.declare_errors` take:
#: a gennet_sync exception class, a werkzeug HTTP exception class, or a standard
#: status (401, 409...) standing for the class listed for it in the docs.
ErrorLike = type[GenNetException] | type[HTTPException] | int


@dataclass(frozen=True)
class ErrorEntry:
    """One code at one status, as the catalogue and the OpenAPI document describe it.

    Attributes:
        status: The HTTP status.
        code: The envelope's ``code``.
        description: One line on when the code is returned.
        types: The envelope ``type`` values that carry this code (class names).
        metadata: The keys its ``metadata`` may carry; ``required`` ones always.
        example: One example envelope.
    """

    status: int
    code: str
    description: str
    types: tuple[str, ...]
    metadata: Mapping[str, MetadataField]
    example: Mapping[str, Any]

    @property
    def key(self) -> tuple[int, str]:
        """``(status, code)``: what identifies an entry."""
        return (self.status, self.code)

    @property
    def retry_after(self) -> bool:
        """Whether responses with this code may carry ``Retry-After``."""
        return "retry_after" in self.metadata


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0].strip()


def _class_metadata(cls: type[GenNetException]) -> dict[str, MetadataField]:
    """``metadata_fields`` of ``cls`` and its bases; a subclass's own win."""
    merged: dict[str, MetadataField] = {}
    for klass in reversed(cls.__mro__):
        own = klass.__dict__.get("metadata_fields")
        if isinstance(own, Mapping):
            merged.update(own)
    return merged


def _example(code: str, type_: str, message: str, fields: Mapping[str, MetadataField]) -> Any:
    metadata = {name: spec.example for name, spec in fields.items() if spec.example is not None}
    return make_envelope(code, type_, message, metadata)


def _fallback_text(cls: type[GenNetException]) -> str:
    """A description for a class that has neither ``description`` nor a docstring.

    Its ``default_message``, unless that comes from a base with another status
    (``GenNetException``'s "Internal server error" on a 404): then the status's
    reason phrase ("Not Found").
    """
    status = int(cls.status_code)
    for klass in cls.__mro__:
        if "default_message" in klass.__dict__:
            if int(getattr(klass, "status_code", status)) == status:
                return str(cls.default_message)
            break
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return str(cls.code)


def _gennet_entry(cls: type[GenNetException]) -> ErrorEntry:
    code = str(cls.code)
    own = cls.__dict__.get("description")
    description = (
        own if isinstance(own, str) and own else _first_line(cls.__doc__) or _fallback_text(cls)
    )
    fields = _class_metadata(cls)
    return ErrorEntry(
        status=int(cls.status_code),
        code=code,
        description=_first_line(description),
        types=(cls.__name__,),
        metadata=fields,
        example=_example(code, cls.__name__, cls.default_message, fields),
    )


def _werkzeug_entry(
    cls: type[HTTPException], description: str | None = None, message: str | None = None
) -> ErrorEntry:
    status = cls.code
    if status is None or status < 400:
        raise ValueError(f"{cls.__name__} is not an error status ({status})")
    code = http_status_code(status)
    # werkzeug's description is the envelope's message; its first sentence describes it.
    text = _first_line(cls.description).split(". ")[0].rstrip(".")
    return ErrorEntry(
        status=status,
        code=code,
        description=description or text or code,
        types=(cls.__name__,),
        metadata={},
        example=make_envelope(code, cls.__name__, message or cls.description or code),
    )


# ------------------------------------------------------------------ the standard sources
#
# Errors the library itself answers with, where no class of the app is involved:
# routing, body decoding, marshmallow's 422 and the 500 of a crash.

ROUTING_NOT_FOUND = _werkzeug_entry(
    NotFound,
    "No route matches the URL, or a path parameter is not of its type",
    "The requested URL was not found on the server.",
)
METHOD_NOT_ALLOWED = _werkzeug_entry(
    MethodNotAllowed,
    "The URL exists but not for this method; the Allow header lists those it has",
    "The method is not allowed for the requested URL.",
)
BAD_REQUEST = _werkzeug_entry(
    BadRequest,
    "The body cannot be decoded: malformed or too deeply nested JSON, invalid UTF-8, "
    "a corrupt compressed body",
    "Failed to decode JSON object: Expecting value: line 1 column 1 (char 0)",
)
TOO_LARGE = _werkzeug_entry(
    RequestEntityTooLarge,
    "The request body, or its decoded size, is over the service's limit",
    "The request body exceeds the limit of 16777216 bytes.",
)
UNSUPPORTED_MEDIA_TYPE = _werkzeug_entry(
    UnsupportedMediaType,
    "The body is not JSON, or its Content-Encoding is not one the service decodes",
    "Did not attempt to load JSON data because the request Content-Type was not "
    "'application/json'.",
)
_MARSHMALLOW_FIELDS = {
    "fields": MetadataField(
        dict,
        "Per-field messages, nested like the body (marshmallow's messages)",
        example={"name": ["Missing data for required field."]},
    ),
    "fields_omitted": MetadataField(
        int, f"How many field errors were left out past the first {MAX_FIELD_ERRORS}"
    ),
}
SCHEMA_VALIDATION = ErrorEntry(
    status=422,
    code="VALIDATION_ERROR",
    description="The body or query parameters do not match the operation's schema",
    types=("ValidationError",),
    metadata=_MARSHMALLOW_FIELDS,
    example=_example(
        "VALIDATION_ERROR",
        "ValidationError",
        "Request validation failed: name: Missing data for required field.",
        _MARSHMALLOW_FIELDS,
    ),
)
_CRASH_FIELDS = {
    "exception_type": MetadataField(str, "With GENNET_EXPOSE_ERRORS (or debug) only"),
    "exception_message": MetadataField(str, "With GENNET_EXPOSE_ERRORS (or debug) only"),
    "traceback": MetadataField(list, "With GENNET_EXPOSE_ERRORS (or debug) only"),
}
CRASH = ErrorEntry(
    status=500,
    code="INTERNAL_SERVER_ERROR",
    description="An unexpected failure in the service; logged with its request ID",
    types=("InternalServerError",),
    metadata=_CRASH_FIELDS,
    example=make_envelope("INTERNAL_SERVER_ERROR", "InternalServerError", "Internal server error"),
)

#: The class (or library source) each standard status stands for in ``errors=``.
STANDARD_STATUSES: Mapping[int, tuple[ErrorEntry, ...]] = {
    400: (BAD_REQUEST,),
    401: (_gennet_entry(UnauthorizedError),),
    403: (_gennet_entry(ForbiddenError),),
    404: (_gennet_entry(NotFoundError),),
    409: (_gennet_entry(ConflictError),),
    413: (TOO_LARGE,),
    415: (UNSUPPORTED_MEDIA_TYPE,),
    422: (_gennet_entry(ValidationError), SCHEMA_VALIDATION),
    429: (_gennet_entry(RateLimitError),),
    500: (_gennet_entry(InternalServerError), CRASH),
    503: (_gennet_entry(ServiceUnavailableError),),
}

#: What a view that calls another service through ``ServiceSession`` may answer.
SERVICE_CALL_ERRORS: tuple[ErrorEntry, ...] = (
    _gennet_entry(BadGatewayError),
    _gennet_entry(ServiceUnavailableError),
    _gennet_entry(CircuitBreakerError),
    _gennet_entry(GatewayTimeoutError),
)


def error_entries(error: ErrorLike | ErrorEntry) -> tuple[ErrorEntry, ...]:
    """The catalogue entries ``error`` stands for.

    Args:
        error: An exception class (gennet_sync's or werkzeug's), a standard status
            (see :data:`STANDARD_STATUSES`), or an entry.

    Returns:
        One entry per source (a standard 422 has two: the class and marshmallow's).

    Raises:
        ValueError: A status with no standard class, or a class that is no error.
        TypeError: Anything else.
    """
    if isinstance(error, ErrorEntry):
        return (error,)
    if isinstance(error, bool):
        raise TypeError(f"not an error class or status: {error!r}")
    if isinstance(error, int):
        entries = STANDARD_STATUSES.get(error)
        if entries is None:
            raise ValueError(
                f"errors [{error}] have no standard response; known: {sorted(STANDARD_STATUSES)}"
                " (or pass an exception class)"
            )
        return entries
    if isinstance(error, type) and issubclass(error, GenNetException):
        if not 400 <= int(error.status_code) <= 599:
            raise ValueError(f"{error.__name__}.status_code {error.status_code} is not an error")
        return (_gennet_entry(error),)
    if isinstance(error, type) and issubclass(error, HTTPException):
        return (_werkzeug_entry(error),)
    raise TypeError(
        f"not an error class or status: {error!r}; pass a GenNetException or werkzeug "
        "HTTPException subclass, or a standard status"
    )


def merge_entries(entries: Iterable[ErrorEntry]) -> list[ErrorEntry]:
    """One entry per ``(status, code)``, in order of first appearance.

    Sources of one code are merged: their types and metadata keys are listed
    together, a key is required only when every source requires it, and the
    description and example are the first source's.
    """
    merged: dict[tuple[int, str], ErrorEntry] = {}
    for entry in entries:
        known = merged.get(entry.key)
        if known is None:
            merged[entry.key] = entry
            continue
        if known == entry:
            continue
        fields: dict[str, MetadataField] = {}
        for name in [*known.metadata, *(n for n in entry.metadata if n not in known.metadata)]:
            first = known.metadata.get(name) or entry.metadata[name]
            required = (
                name in known.metadata
                and name in entry.metadata
                and known.metadata[name].required
                and entry.metadata[name].required
            )
            fields[name] = MetadataField(first.type, first.description, required, first.example)
        types = known.types + tuple(t for t in entry.types if t not in known.types)
        merged[entry.key] = ErrorEntry(
            known.status, known.code, known.description, types, fields, known.example
        )
    return list(merged.values())


# ------------------------------------------------------------------ JSON Schema

_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: a bool is an int
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (tuple, "array"),
    (dict, "object"),
    (type(None), "null"),
)


def field_schema(spec: MetadataField) -> dict[str, Any]:
    """The JSON Schema of one metadata key (``{}`` for any JSON value)."""
    kinds = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    names: list[str] = []
    for kind in kinds:
        name = next((json for python, json in _JSON_TYPES if issubclass(kind, python)), None)
        if name is None:  # object, or a type JSON has no name for: any value
            names = []
            break
        if name not in names:
            names.append(name)
    schema: dict[str, Any] = {}
    if names:
        schema["type"] = names[0] if len(names) == 1 else names
    if spec.description:
        schema["description"] = spec.description
    return schema


def metadata_schema(entry: ErrorEntry) -> dict[str, Any]:
    """The JSON Schema of ``entry``'s ``metadata``; other keys stay allowed.

    A service may add metadata to any error (``metadata=``), and ``ServiceSession``
    adds ``service`` to a relayed envelope, so undeclared keys are not an error.
    """
    schema: dict[str, Any] = {"type": "object"}
    if entry.metadata:
        schema["properties"] = {name: field_schema(spec) for name, spec in entry.metadata.items()}
    required = [name for name, spec in entry.metadata.items() if spec.required]
    if required:
        schema["required"] = required
    return schema


def app_error_classes(app: Flask) -> list[type[GenNetException]]:
    """The ``GenNetException`` subclasses defined in ``app``'s package.

    They join the catalogue whether an operation declares them or not: a class
    the app defines is a code it may return.  "The app's package" is the first
    part of ``app.import_name`` (``myservice`` for ``myservice.app``).
    """
    package = app.import_name.split(".", 1)[0]
    # The session's walk over the hierarchy (it leaves out the per-status
    # DownstreamError classes made at run time): the catalogue sees the classes
    # raise_for_error can rebuild, no more, no fewer.
    return [
        cls
        for cls in _exception_classes()
        if not cls.__name__.startswith("_") and cls.__module__.split(".", 1)[0] == package
    ]


# ------------------------------------------------------------------ the catalogue


@dataclass(frozen=True)
class OperationRef:
    """An operation that documents a code: its method, path and ``operationId``."""

    method: str
    path: str
    operation_id: str
    tag: str | None = None


@dataclass
class _Row:
    entry: ErrorEntry
    operations: list[OperationRef] = field(default_factory=list)
    any_request: bool = False


class ErrorCatalogue:
    """Every code of a service, each with the operations that return it.

    Built by :class:`~gennet_sync.openapi.OpenAPI` from the same entries as the
    document; served at ``/errors`` as JSON (:meth:`to_dict`) and as a page
    (:meth:`to_html`).

    Args:
        title: The service's name.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._rows: dict[tuple[int, str], _Row] = {}

    def add(
        self,
        entries: Iterable[ErrorEntry],
        operation: OperationRef | None = None,
        *,
        any_request: bool = False,
    ) -> None:
        """Record ``entries``, returned by ``operation`` (or by any request)."""
        for entry in entries:
            row = self._rows.get(entry.key)
            if row is None:
                row = self._rows[entry.key] = _Row(entry)
            else:
                row.entry = merge_entries([row.entry, entry])[0]
            if operation is not None and operation not in row.operations:
                row.operations.append(operation)
            row.any_request = row.any_request or any_request

    @property
    def entries(self) -> list[ErrorEntry]:
        """The entries, by status then code."""
        return [row.entry for row in self._sorted()]

    def _sorted(self) -> list[_Row]:
        return [self._rows[key] for key in sorted(self._rows)]

    def to_dict(self) -> dict[str, Any]:
        """The catalogue as JSON: ``{"title", "errors": [...]}``, by status then code."""
        errors: list[dict[str, Any]] = []
        for row in self._sorted():
            entry = row.entry
            errors.append(
                {
                    "code": entry.code,
                    "status": entry.status,
                    "description": entry.description,
                    "types": list(entry.types),
                    "metadata": {
                        name: {
                            "schema": field_schema(spec),
                            "required": spec.required,
                            "description": spec.description,
                        }
                        for name, spec in entry.metadata.items()
                    },
                    "retry_after": entry.retry_after,
                    "example": entry.example,
                    "any_request": row.any_request,
                    "operations": [
                        {"method": op.method, "path": op.path, "operationId": op.operation_id}
                        for op in row.operations
                    ],
                }
            )
        return {"title": self.title, "errors": errors}

    def to_html(self, docs_url: str | None = None, json_url: str | None = None) -> str:
        """The catalogue as one self-contained HTML page: no script, no outside asset.

        Args:
            docs_url: The Swagger UI page to link to (each operation links to its entry).
            json_url: The JSON form of the catalogue, linked from the page.
        """
        return _html_page(self.title, self._sorted(), docs_url, json_url)


# Rendered with Jinja (Flask's own template engine), autoescaping every value: codes,
# descriptions and titles come from the app's classes and settings, not from us.
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }} — error codes</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:64rem;padding:1rem 1.5rem;
color:#1b1f23}
h1{font-size:1.6rem}h2{font-size:1.15rem;margin:0}
nav a{margin-right:1rem}
table{border-collapse:collapse;width:100%;margin:.4rem 0}
th,td{border-bottom:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
section{border:1px solid #d0d7de;border-radius:6px;padding:.8rem 1rem;margin:1rem 0}
.status{display:inline-block;min-width:2.6rem;font-weight:600;color:#fff;background:#9a6700;
border-radius:4px;padding:0 .3rem;text-align:center;margin-right:.5rem}
.s5{background:#cf222e}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f6f8fa;padding:.6rem;overflow:auto}
.muted{color:#57606a}
</style>
</head>
<body>
<h1>{{ title }}: error codes</h1>
<nav>
{%- if docs_url %}<a href="{{ docs_url }}">API docs</a>{% endif -%}
{%- if json_url %}<a href="{{ json_url }}">This catalogue as JSON</a>{% endif -%}
</nav>
<p>Every error answer is the JSON envelope
<code>{"error": {"code", "type", "message", "metadata"}}</code>.
Clients should branch on <code>code</code>.</p>
<table id="summary"><tr><th>status</th><th>code</th><th>description</th></tr>
{% for row in rows -%}
<tr><td>{{ row.entry.status }}</td><td><a href="#{{ row.anchor }}"><code>{{ row.entry.code }}</code>
</a></td><td>{{ row.entry.description }}</td></tr>
{% endfor -%}
</table>
{% for row in rows -%}
<section id="{{ row.anchor }}" class="error">
<h2><span class="status{{ ' s5' if row.entry.status >= 500 }}">{{ row.entry.status }}</span>
<code class="code">{{ row.entry.code }}</code></h2>
<p>{{ row.entry.description }}</p>
<p class="muted">type: {{ row.entry.types | join(", ") }}
{%- if row.entry.retry_after %}; may carry Retry-After{% endif %}</p>
{% if row.fields -%}
<table><tr><th>metadata key</th><th>type</th><th>always</th><th>meaning</th></tr>
{% for field in row.fields -%}
<tr><td><code>{{ field.name }}</code></td><td>{{ field.type }}</td>
<td>{{ "yes" if field.required else "no" }}</td><td>{{ field.description }}</td></tr>
{% endfor -%}
</table>
{% endif -%}
<pre>{{ row.example }}</pre>
{% if row.any_request %}<p>Any request may get it.</p>
{% endif -%}
{% if row.operations -%}
<ul class="operations">
{% for op in row.operations -%}
<li>{% if op.link %}<a href="{{ op.link }}"><code>{{ op.label }}</code></a>
{%- else %}<code>{{ op.label }}</code>{% endif %}</li>
{% endfor -%}
</ul>
{% elif not row.any_request -%}
<p class="muted">Declared by no operation.</p>
{% endif -%}
</section>
{% endfor -%}
</body>
</html>
"""


@functools.cache
def _page_template() -> jinja2.Template:
    return jinja2.Environment(autoescape=True, keep_trailing_newline=True).from_string(_PAGE)


def _html_page(title: str, rows: Sequence[_Row], docs_url: str | None, json_url: str | None) -> str:
    view = []
    for row in rows:
        entry = row.entry
        fields = []
        for name, spec in entry.metadata.items():
            kind = field_schema(spec).get("type", "any")
            fields.append(
                {
                    "name": name,
                    "type": " | ".join(kind) if isinstance(kind, list) else str(kind),
                    "required": spec.required,
                    "description": spec.description,
                }
            )
        operations = [
            {
                "label": f"{op.method} {op.path}",
                "link": f"{docs_url}#/{op.tag or 'default'}/{op.operation_id}"
                if docs_url
                else None,
            }
            for op in row.operations
        ]
        view.append(
            {
                "entry": entry,
                "anchor": f"{entry.code}-{entry.status}",
                "fields": fields,
                "example": json.dumps(entry.example, indent=2, ensure_ascii=False),
                "any_request": row.any_request,
                "operations": operations,
            }
        )
    return _page_template().render(title=title, rows=view, docs_url=docs_url, json_url=json_url)

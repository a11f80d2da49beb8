"""A check for a team's own tests: every error code a response carries is documented.

Clients branch on the envelope's ``code``, so the codes an operation documents
(``x-error-codes`` in the OpenAPI document that :class:`~gennet_sync.openapi.OpenAPI`
builds) are a promise.  This module checks each response against it:

- :func:`assert_documented_error` checks one response of a Flask test client
  (or of ``requests``, for a service on a real port) against the app's document;
- :func:`documented_errors_client` is a Flask test client that checks every
  response it receives;
- :func:`undocumented_error_codes` is the same check for schemathesis
  (``case.call_and_validate(checks=[undocumented_error_codes])``), and
  :func:`register_schemathesis_check` registers it for every schemathesis run.

A response fails the check when it is an error envelope whose status the
operation does not document, or whose ``code`` is not among the codes documented
for that status.  Responses below 400, error responses that are not an envelope
(a proxy's HTML page: schemathesis's own checks see those), and requests that no
documented operation serves (an unknown URL, ``HEAD``, a hidden view) pass.

schemathesis is not needed to import this module; install the ``testing`` extra
for the schemathesis check.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from gennet_sync.compression import _decoding_errors, _new_decoder
from gennet_sync.error_catalogue import CRASH, METHOD_NOT_ALLOWED, ROUTING_NOT_FOUND
from gennet_sync.error_handler import app_state
from gennet_sync.openapi import _ANY_REQUEST_EXTENSION, OpenAPI, _openapi_path

if TYPE_CHECKING:
    from werkzeug.test import TestResponse

__all__ = [
    "UndocumentedErrorCode",
    "any_request_error_codes",
    "assert_documented_error",
    "documented_error_codes",
    "documented_errors_client",
    "error_contract_violation",
    "register_schemathesis_check",
    "undocumented_error_codes",
]

_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


class UndocumentedErrorCode(AssertionError):
    """A response carried an error its operation does not document."""


@dataclass(frozen=True)
class _Envelope:
    code: str
    type: str


def documented_error_codes(
    document: Mapping[str, Any], method: str, path: str
) -> dict[str, frozenset[str] | None] | None:
    """The error statuses an operation documents, each with its codes.

    Args:
        document: An OpenAPI document.
        method: The HTTP method (any case).
        path: The operation's path template, as in the document (``/networks/{id}``).

    Returns:
        ``{"404": frozenset({"NOT_FOUND"}), ...}`` for statuses 400 and up, ranges
        (``"4XX"``) and ``"default"``; ``None`` as codes when the response lists
        none (any code passes); ``None`` when the document has no such operation.
    """
    item = document.get("paths", {}).get(path)
    if not isinstance(item, Mapping):
        return None
    operation = item.get(method.lower())
    if not isinstance(operation, Mapping):
        return None
    documented: dict[str, frozenset[str] | None] = {}
    for status, response in (operation.get("responses") or {}).items():
        key = str(status).upper()
        if key.isdigit() and int(key) < 400:
            continue
        if key[:1] in ("1", "2", "3"):  # 2XX...
            continue
        resolved = _resolve(document, response)
        codes = resolved.get("x-error-codes") if isinstance(resolved, Mapping) else None
        documented[key] = frozenset(map(str, codes)) if isinstance(codes, list) else None
    return documented


def _resolve(document: Mapping[str, Any], value: Any) -> Any:
    """Follow local ``$ref``s (``#/components/responses/NotFound``)."""
    seen: set[str] = set()
    while isinstance(value, Mapping) and isinstance(value.get("$ref"), str):
        ref = value["$ref"]
        if not ref.startswith("#/") or ref in seen:
            return value
        seen.add(ref)
        target: Any = document
        for token in ref[2:].split("/"):
            part = token.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, Mapping) else None
        value = target
    return value


#: The most an error body is decoded to: an envelope is a few kilobytes at most.
_MAX_DECODED_BODY = 16 * 1024 * 1024


def _decoded(body: bytes, content_encoding: str | None) -> bytes:
    """``body`` decoded with the response's content coding, as Compression wrote it.

    A client that decoded the body already (requests) leaves the header on it:
    a body that does not decode is taken as it is.
    """
    coding = (content_encoding or "identity").strip().lower()
    if coding in ("identity", ""):
        return body
    try:
        decoder = _new_decoder("gzip" if coding == "x-gzip" else coding)
    except ValueError:
        if body[:1] in (b"{", b"[", b" ", b"\n"):
            return body
        raise UndocumentedErrorCode(
            f"cannot read an error body sent with Content-Encoding: {content_encoding}; "
            "install the compression extra, or send Accept-Encoding: identity in the test"
        ) from None
    try:
        return decoder.decompress(body, _MAX_DECODED_BODY)
    except _decoding_errors():
        return body


def _envelope(body: bytes, content_encoding: str | None = None) -> _Envelope | None:
    """The code and type of an error envelope, or ``None`` for any other body."""
    try:
        data = json.loads(_decoded(body, content_encoding))
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) != {"error"}:
        return None
    error = data["error"]
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return None
    kind = error.get("type")
    return _Envelope(error["code"], kind if isinstance(kind, str) else "")


def error_contract_violation(
    document: Mapping[str, Any],
    method: str,
    path: str,
    status: int,
    body: bytes,
    content_encoding: str | None = None,
) -> str | None:
    """Why a response breaks the operation's documented errors, or ``None`` when it does not.

    Args:
        document: The service's OpenAPI document.
        method: The request's method.
        path: The operation's path template (``/networks/{network_id}``).
        status: The response status.
        body: The response body as sent.
        content_encoding: The response's ``Content-Encoding`` (gzip and deflate are read).

    Returns:
        A message naming the operation, the status, the code and what is documented.
    """
    if status < 400:
        return None
    documented = documented_error_codes(document, method, path)
    if documented is None:
        return None
    envelope = _envelope(body, content_encoding)
    if envelope is None:
        return None
    return _violation(f"{method.upper()} {path}", documented, status, envelope)


def any_request_error_codes(document: Mapping[str, Any]) -> dict[str, frozenset[str] | None]:
    """The error statuses, each with its codes, that any request can get.

    A request that no operation serves (a method the URL does not have, an
    unknown URL) can get these: routing's 404 and 405, a crash's 500, and with
    Compression the 400, 413 and 415 of a body it cannot decode.

    Args:
        document: An OpenAPI document; :class:`~gennet_sync.openapi.OpenAPI`
            lists these under ``x-error-codes-any-request``.  A document without
            that field gets routing's and a crash's codes.

    Returns:
        ``{"405": frozenset({"METHOD_NOT_ALLOWED"}), ...}``.
    """
    listed = document.get(_ANY_REQUEST_EXTENSION)
    if not isinstance(listed, Mapping):
        listed = {
            str(entry.status): [entry.code]
            for entry in (ROUTING_NOT_FOUND, METHOD_NOT_ALLOWED, CRASH)
        }
    return {
        str(status).upper(): frozenset(map(str, codes)) if isinstance(codes, list) else None
        for status, codes in listed.items()
    }


def _violation(
    where: str,
    documented: Mapping[str, frozenset[str] | None],
    status: int,
    envelope: _Envelope,
) -> str | None:
    key = str(status)
    for candidate in (key, f"{key[0]}XX", "DEFAULT"):
        if candidate in documented:
            codes = documented[candidate]
            if codes is None or envelope.code in codes:
                return None
            return (
                f"{where} answered {status} with code {envelope.code!r} "
                f"(type {envelope.type}), which its {status} response does not document; "
                f"documented: {sorted(codes)}. Declare the error on the view "
                "(@doc(errors=[...])) or stop returning it."
            )
    listed = sorted(k for k in documented if k != "DEFAULT")
    return (
        f"{where} answered {status} with code {envelope.code!r} (type {envelope.type}), "
        f"a status the operation does not document; documented error statuses: {listed}. "
        "Declare the error on the view (@doc(errors=[...])) or stop returning it."
    )


def _document(app: Flask) -> Mapping[str, Any]:
    state = app_state(app).features.get("openapi")
    extension = state.get("extension") if isinstance(state, dict) else None
    if not isinstance(extension, OpenAPI):
        raise RuntimeError("the app has no OpenAPI: set up gennet_sync.OpenAPI(app) first")
    return extension.spec(app)


def _operation_path(app: Flask, method: str, url: str, environ: Mapping[str, Any] | None) -> str:
    """The document path of the rule serving ``method url``, or ``""`` when none does."""
    try:
        if environ is not None:
            adapter = app.url_map.bind_to_environ(dict(environ))
            rule, _ = adapter.match(method=method, return_rule=True)
        else:
            parts = urlsplit(url)
            adapter = app.url_map.bind(
                parts.netloc or "localhost", url_scheme=parts.scheme or "http"
            )
            rule, _ = adapter.match(parts.path or "/", method=method, return_rule=True)
    except (HTTPException, RequestRedirect):  # no rule: an unknown URL or method
        return ""
    return _openapi_path(rule.rule)[0]


def assert_documented_error(app: Flask, response: Any) -> None:
    """Fail when ``response`` carries an error its operation does not document.

    Example::

        def test_unknown_network_is_documented(client):
            response = client.get("/api/v2/networks/nope")
            assert response.status_code == 404
            assert_documented_error(client.application, response)

    Args:
        app: The app whose OpenAPI document is the reference.
        response: A Flask test client response, or a ``requests.Response`` from
            the app served on a real port.

    Raises:
        UndocumentedErrorCode: The response's status or code is not documented.
        RuntimeError: The app has no :class:`~gennet_sync.openapi.OpenAPI`.
    """
    __tracebackhide__ = True
    document = _document(app)
    request = getattr(response, "request", None)
    environ = getattr(request, "environ", None)
    if request is None:
        raise TypeError("the response does not say which request it answers")
    method = str(request.method).upper()
    url = str(getattr(request, "url", "") or "")
    path = _operation_path(app, method, url, environ)
    if not path or method == "HEAD":
        return
    body, encoding = _body_of(response)
    problem = error_contract_violation(document, method, path, response.status_code, body, encoding)
    if problem is not None:
        raise UndocumentedErrorCode(problem)


def _body_of(response: Any) -> tuple[bytes, str | None]:
    encoding = response.headers.get("Content-Encoding")
    if hasattr(response, "get_data"):  # werkzeug: the bytes as sent
        data: bytes = response.get_data()
        return data, encoding
    return bytes(getattr(response, "content", b"") or b""), encoding


class _CheckingClient(FlaskClient):
    """A test client that checks every response with :func:`assert_documented_error`."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        __tracebackhide__ = True
        response = super().open(*args, **kwargs)
        assert_documented_error(self.application, response)
        return response


def documented_errors_client(app: Flask, **kwargs: Any) -> FlaskClient:
    """A Flask test client that fails any request answered with an undocumented error.

    Example::

        @pytest.fixture
        def client(app):
            return documented_errors_client(app)

        def test_delete_twice(client):
            client.delete("/api/v2/networks/abc")   # raises UndocumentedErrorCode if
                                                   # DELETE does not document its 404

    Args:
        app: The app under test, with :class:`~gennet_sync.openapi.OpenAPI`.
        **kwargs: Passed to the client (``use_cookies``...).

    Returns:
        The client; use it as ``app.test_client()``.
    """
    return _CheckingClient(app, app.response_class, **kwargs)


def undocumented_error_codes(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis check: the response's error code is documented by its operation.

    Reads the document schemathesis loaded, so it also checks a service that
    runs elsewhere (``schemathesis.openapi.from_url``).

    Example::

        schema = schemathesis.openapi.from_wsgi("/openapi.json", app)

        @schema.parametrize()
        def test_api(case):
            case.call_and_validate(additional_checks=[undocumented_error_codes])

    Args:
        ctx: schemathesis's check context (unused).
        response: The response schemathesis received.
        case: The case it sent.

    Returns:
        ``None``; schemathesis reports the raised error as a failure.

    Raises:
        UndocumentedErrorCode: The response's status or code is not documented.
    """
    __tracebackhide__ = True
    operation = case.operation
    # The method actually sent: schemathesis also probes methods the operation
    # does not have (TRACE for a GET), and those are not the operation's answers.
    sent = getattr(getattr(response, "request", None), "method", None)
    method = str(sent or operation.method).upper()
    if method == "HEAD":
        return None
    document = operation.schema.raw_schema
    encodings = response.headers.get("content-encoding")
    encoding = encodings[0] if isinstance(encodings, list) and encodings else encodings
    encoding = encoding if isinstance(encoding, str) else None
    status = int(response.status_code)
    body = bytes(response.content or b"")
    if method != str(operation.method).upper():
        envelope = _envelope(body, encoding) if status >= 400 else None
        where = f"{method} {operation.path} (a method the operation does not have)"
        anywhere = any_request_error_codes(document)
        problem = None if envelope is None else _violation(where, anywhere, status, envelope)
    else:
        problem = error_contract_violation(
            document, method, str(operation.path), status, body, encoding
        )
    if problem is not None:
        raise UndocumentedErrorCode(problem)
    return None


def register_schemathesis_check() -> Any:
    """Register :func:`undocumented_error_codes` with schemathesis, for every run.

    Call it from a ``conftest.py`` or a schemathesis hooks file; the CLI then
    runs the check too (``schemathesis run --checks all``...).  Needs the
    ``testing`` extra.

    Returns:
        The registered check.

    Raises:
        ImportError: schemathesis is not installed.
    """
    try:
        schemathesis = importlib.import_module("schemathesis")
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the schemathesis check needs schemathesis: pip install 'gennet_sync[testing]'"
        ) from error
    return schemathesis.check(undocumented_error_codes)

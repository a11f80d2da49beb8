"""OpenTelemetry spans for the envelope, ``ServiceSession`` and the breaker.

Needs only ``opentelemetry-api`` (the ``[otel]`` extra).  Nothing happens until a
tracer provider is set (``trace.set_tracer_provider``, which the SDK's set-up and
:func:`configure_tracing` do): before that every hook here returns after one
attribute read.  The attributes and events are gennet_sync's breaker convention,
documented in ``docs/tracing.md``.  No Flask and no requests here: the Flask and
requests sides call in with what they know.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import socket
import sys
import threading
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from gennet_sync.breaker_policy import StateChangeEvent
from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError
from gennet_sync.exceptions import GenNetException

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the [otel] extra is not installed: every hook is a no-op
    otel_trace = None  # type: ignore[assignment]

#: The context key the requests and urllib3 instrumentations check before making a
#: span (a private name of opentelemetry-api, which they import too); should it go,
#: they are no longer kept out of a call, and tracing still works.
_SUPPRESS_HTTP_INSTRUMENTATION: Any = (
    None
    if otel_trace is None
    else getattr(otel_context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", None)
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = [
    "ATTR_BREAKER_NAME",
    "ATTR_BREAKER_PREVIOUS_STATE",
    "ATTR_BREAKER_STATE",
    "ATTR_BREAKER_TRANSITION_REASON",
    "ATTR_DOWNSTREAM_ERROR_CODE",
    "ATTR_ERROR_CODE",
    "ATTR_REQUEST_ID",
    "ENVIRON_SPAN_ID",
    "ENVIRON_TRACE_ID",
    "EVENT_BREAKER_STATE_CHANGE",
    "client_call",
    "configure_tracing",
    "count_resend",
    "crash_context",
    "current_trace_ids",
    "gunicorn_post_fork",
    "gunicorn_worker_exit",
    "instrument_breaker",
    "record_envelope",
    "server_call",
    "shutdown_tracing",
    "tracing_enabled",
]

_logger = logging.getLogger(__name__)

#: The envelope's ``code`` of an error this service answered (server span).
ATTR_ERROR_CODE: Final = "gennet.error.code"
#: The request ID of the request served (server span).
ATTR_REQUEST_ID: Final = "gennet.request_id"
#: The ``code`` of the error envelope a downstream answered (client span).
ATTR_DOWNSTREAM_ERROR_CODE: Final = "gennet.downstream.error.code"
#: The breaker a call went through (client span, state-change event).
ATTR_BREAKER_NAME: Final = "gennet.breaker.name"
#: The breaker's state once the call was over (client span); the new state (event).
ATTR_BREAKER_STATE: Final = "gennet.breaker.state"
#: The state a breaker left (state-change event).
ATTR_BREAKER_PREVIOUS_STATE: Final = "gennet.breaker.previous_state"
#: Why it changed: a ``TransitionReason`` value (state-change event).
ATTR_BREAKER_TRANSITION_REASON: Final = "gennet.breaker.transition_reason"
#: The span event for a breaker's state change, on the span of the call that caused it.
EVENT_BREAKER_STATE_CHANGE: Final = "gennet.breaker.state_change"

#: WSGI environ keys holding the server span's IDs (gunicorn's access log reads
#: them as ``%({gennet_sync.trace_id}e)s``).
ENVIRON_TRACE_ID: Final = "gennet_sync.trace_id"
ENVIRON_SPAN_ID: Final = "gennet_sync.span_id"
#: The span of a request that escaped Flask, for the boundary's crash response.
_ENVIRON_CRASHED_SPAN: Final = "gennet_sync.crashed_span"

_SCOPE: Final = "gennet_sync"
try:
    _VERSION = version("gennet_sync")
except PackageNotFoundError:  # a source tree that was never installed
    _VERSION = "0.0.0"
#: The WSGI environ key werkzeug keeps the request object under (its ``url_rule``
#: names the route once Flask has matched it).
_WERKZEUG_REQUEST: Final = "werkzeug.request"
#: Methods the HTTP semantic conventions name; any other is ``_OTHER``.
_KNOWN_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"}
)
#: Query parameters whose values are secrets (signed URLs: AWS S3, Azure SAS, Google
#: Cloud Storage): the list opentelemetry-util-http redacts (an instrumentation
#: package, not part of the API ``[otel]`` installs), and AWS Signature Version 4's
#: presigned-URL parameters, the form S3 presigns with today.
_PARAMS_TO_REDACT: Final = (
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
)
#: One such parameter and its value, in a query string or in free text (an
#: exception's message quotes the URL); the value ends where the URL does.
_SECRET_PARAMETER: Final = re.compile(
    r"(?:(?<=[?&;])|^)(" + "|".join(_PARAMS_TO_REDACT) + r")=[^&#\s'\"]*"
)
#: Largest error body read (already in memory) for a downstream envelope's code.
_MAX_ENVELOPE_BODY: Final = 1024 * 1024

_Result = TypeVar("_Result")


# -- is tracing on? ---------------------------------------------------------------------


def _provider_now() -> TracerProvider | None:
    """The tracer provider set for this process, or ``None`` before one is set.

    ``trace.get_tracer_provider()`` looks in ``os.environ`` on every call (0.8 us,
    2% of a request on its own); the module attribute it returns is read
    directly (30 ns), and the public call is the fallback should it be renamed.
    """
    if otel_trace is None:
        return None
    provider: TracerProvider | None = getattr(otel_trace, "_TRACER_PROVIDER", _MISSING)
    if provider is _MISSING:
        found = otel_trace.get_tracer_provider()
        return None if isinstance(found, otel_trace.ProxyTracerProvider) else found
    return provider


_MISSING: Any = object()
#: The module whose ``_TRACER_PROVIDER`` :func:`_provider_now` reads, for the WSGI
#: boundary to read it without a call on every request; ``None`` when that is not
#: how opentelemetry keeps it (or it is absent): then call :func:`_provider_now`.
PROVIDER_HOLDER: Any = (
    otel_trace if otel_trace is not None and hasattr(otel_trace, "_TRACER_PROVIDER") else None
)
_tracers: dict[int, tuple[TracerProvider, Tracer]] = {}


def tracing_enabled() -> bool:
    """True once a tracer provider is set: gennet_sync then makes spans."""
    return _provider_now() is not None


def _tracer(provider: TracerProvider) -> Tracer:
    cached = _tracers.get(id(provider))
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = provider.get_tracer(_SCOPE, _VERSION)
    _tracers.clear()  # one provider per process; a test that swaps it leaves no garbage
    _tracers[id(provider)] = (provider, tracer)
    return tracer


def current_trace_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the span current here, or ``None`` when none is.

    Example::

        ids = current_trace_ids()
        print(ids[0] if ids else "no trace")
    """
    if otel_trace is None:
        return None
    context = otel_trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


# -- breaker transitions ------------------------------------------------------------------

_watched: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_watched_lock = threading.Lock()


def _on_state_change(event: StateChangeEvent) -> None:
    """Listener: the change as an event on the span current in the thread that caused it.

    A breaker calls its listeners in the thread whose call changed its state, once
    its lock is released, so the current span is that call's span.
    """
    if otel_trace is None:
        return
    span = otel_trace.get_current_span()
    if span.is_recording():
        span.add_event(
            EVENT_BREAKER_STATE_CHANGE,
            {
                ATTR_BREAKER_NAME: event.name,
                ATTR_BREAKER_PREVIOUS_STATE: event.old_state.value,
                ATTR_BREAKER_STATE: event.new_state.value,
                ATTR_BREAKER_TRANSITION_REASON: event.reason.value,
            },
        )


def instrument_breaker(breaker: CircuitBreaker) -> None:
    """Record ``breaker``'s state changes as span events; once per breaker.

    ``ServiceSession`` does it for its breakers; call it for a breaker used as a
    decorator or through ``call()``.

    Example::

        breaker = get_circuit_breaker("payments")
        instrument_breaker(breaker)
    """
    if breaker in _watched:
        return
    with _watched_lock:
        if breaker not in _watched:
            breaker.add_listener(_on_state_change)
            _watched.add(breaker)


# -- client side: one span per logical ServiceSession call -------------------------------


class _ClientCall:
    """What one traced call saw: its last response and how many times it was re-sent."""

    __slots__ = ("json", "responses", "retries", "status")

    def __init__(self) -> None:
        self.responses = 0
        self.retries = 0
        self.status: int | None = None
        self.json = False

    def on_response(self, response: Any, *_args: Any, **_kwargs: Any) -> None:
        # A requests response hook: called for the answer to every hop of the call,
        # before its body is read (never read here: the caller may stream it).
        self.responses += 1
        self.status = response.status_code
        self.json = "json" in response.headers.get("Content-Type", "").lower()


#: The traced call in progress in this context (``None``: none, or tracing is off).
_client_call_state: ContextVar[_ClientCall | None] = ContextVar(
    "gennet_sync_traced_call", default=None
)


def count_resend() -> None:
    """A retry of the call in progress is about to be sent (``ServiceRetry`` calls this)."""
    state = _client_call_state.get()
    if state is not None:
        state.retries += 1


def _method(method: str | None) -> str:
    method = (method or "GET").upper()
    return method if method in _KNOWN_METHODS else "_OTHER"


def _redact(text: str) -> str:
    """``text`` with the values of signed URLs' secret query parameters replaced."""
    if "=" not in text:  # most messages and queries: no regular expression run
        return text
    return _SECRET_PARAMETER.sub(r"\1=REDACTED", text)


def _record_exception(span: Span, error: BaseException) -> None:
    """``span.record_exception`` with secret query parameters redacted from the text.

    requests' exceptions quote the URL they failed on, query included, and so
    does the message of an exception chained below ``error`` in its traceback.
    """
    message = str(error)
    stacktrace = "".join(traceback.format_exception(error))
    redacted_message, redacted_stacktrace = _redact(message), _redact(stacktrace)
    attributes = None
    if redacted_message != message or redacted_stacktrace != stacktrace:
        attributes = {
            "exception.message": redacted_message,
            "exception.stacktrace": redacted_stacktrace,
        }
    span.record_exception(error, attributes=attributes)


def _span_name(method: str) -> str:
    """A span's name for ``method``: ``HTTP`` for a method the conventions do not name."""
    return "HTTP" if method == "_OTHER" else method


def _url_attributes(url: str) -> dict[str, Any]:
    """``url.full`` without credentials, ``server.address`` and ``server.port``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # the call fails on it anyway; its text may hold a password
        return {}
    attributes: dict[str, Any] = {}
    netloc = parts.netloc
    if "@" in netloc:  # the semantic conventions say: never the password
        netloc = "REDACTED:REDACTED@" + netloc.rpartition("@")[2]
    query = _redact(parts.query)
    attributes["url.full"] = urlunsplit(parts._replace(netloc=netloc, query=query))
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme)
    if port is not None:
        attributes["server.port"] = port
    return attributes


def _envelope_code(response: Any) -> str | None:
    """The ``code`` of an error envelope already read into ``response``; never reads a stream."""
    content = getattr(response, "_content", None)
    if not isinstance(content, bytes) or len(content) > _MAX_ENVELOPE_BODY:
        return None
    if "json" not in response.headers.get("Content-Type", "").lower():
        return None
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def client_call(
    send: Callable[[Any, str, CircuitBreaker | None, dict[str, Any]], _Result],
    request: Any,
    url: str,
    breaker: CircuitBreaker | None,
    kwargs: dict[str, Any],
) -> _Result:
    """Run ``send(request, url, breaker, kwargs)``, one logical call, inside a client span.

    Without a tracer provider, only ``send``.  With one: a ``CLIENT`` span around
    the call (its retries and redirects inside it), W3C trace context and baggage
    injected into ``request``'s headers, and the requests and urllib3
    instrumentations kept from adding spans of their own below it.
    """
    provider = _provider_now()
    if provider is None:
        return send(request, url, breaker, kwargs)
    method = _method(request.method)
    attributes = {"http.request.method": method, **_url_attributes(url)}
    if method == "_OTHER":
        attributes["http.request.method_original"] = str(request.method)
    if breaker is not None:
        instrument_breaker(breaker)
        attributes[ATTR_BREAKER_NAME] = breaker.name
    span = _tracer(provider).start_span(
        _span_name(method), kind=SpanKind.CLIENT, attributes=attributes
    )
    context = otel_trace.set_span_in_context(span)
    # This span is the HTTP client span: the requests/urllib3 instrumentations,
    # when installed, would add one per send (and per redirect hop) below it.
    if _SUPPRESS_HTTP_INSTRUMENTATION is not None:
        context = otel_context.set_value(_SUPPRESS_HTTP_INSTRUMENTATION, True, context)
    propagate.inject(request.headers, context=context)
    state = _ClientCall()
    hooks = request.hooks
    request.hooks = {**hooks, "response": [*hooks.get("response", ()), state.on_response]}
    token = otel_context.attach(context)
    state_token = _client_call_state.set(state)
    try:
        result = send(request, url, breaker, kwargs)
    except BaseException as error:
        _end_client_span(span, state, breaker, None, error)
        raise
    else:
        _end_client_span(span, state, breaker, result, None)
        return result
    finally:
        request.hooks = hooks
        _client_call_state.reset(state_token)
        otel_context.detach(token)
        span.end()


def _end_client_span(
    span: Span,
    state: _ClientCall,
    breaker: CircuitBreaker | None,
    response: Any,
    error: BaseException | None,
) -> None:
    with contextlib.suppress(Exception):  # a span must never fail the call it describes
        if breaker is not None:
            # The state as recorded: the ``state`` property would first refresh it,
            # which can make a call to a shared storage (Redis) from here.
            span.set_attribute(ATTR_BREAKER_STATE, breaker._state.value)
        resends = state.retries + max(state.responses - 1, 0)
        if resends:
            span.set_attribute("http.request.resend_count", resends)
        status = state.status
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        downstream_code = None
        if status is not None and status >= 400:
            span.set_attribute("error.type", str(status))
            if response is not None:
                downstream_code = _envelope_code(response)
            elif (
                state.json and isinstance(error, GenNetException) and not isinstance(error, OSError)
            ):
                # raise_errors: the JSON answer became this exception, with the
                # envelope's code (requests' exceptions, and ours standing in for
                # them after a transport failure, are OSErrors).
                downstream_code = error.code
            if downstream_code is not None:
                span.set_attribute(ATTR_DOWNSTREAM_ERROR_CODE, downstream_code)
            span.set_status(Status(StatusCode.ERROR))
        elif error is not None:
            name = (
                "CircuitBreakerError"
                if isinstance(error, CircuitBreakerError)
                else type(error).__qualname__
            )
            span.set_attribute("error.type", name)
            if isinstance(error, Exception):
                _record_exception(span, error)
            span.set_status(Status(StatusCode.ERROR, _redact(str(error))[:256]))


# -- server side: the span of a request through the envelope -----------------------------


def record_envelope(status: int, code: str, type_: str) -> None:
    """The error envelope being returned, on the current server span.

    ``error.type`` is the envelope's ``type``, ``gennet.error.code`` its code; a
    5xx also records the exception being handled and sets the status to ERROR
    (a 4xx is the client's error, not the server's).
    """
    if _provider_now() is None:
        return
    span = otel_trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("error.type", type_)
    span.set_attribute(ATTR_ERROR_CODE, code)
    if status >= 500:
        # The handlers build envelopes inside Flask's ``except`` clause.
        error = sys.exc_info()[1]
        if isinstance(error, Exception):
            _record_exception(span, error)
        span.set_status(Status(StatusCode.ERROR, f"{status} {code}"))


def _instrumented_elsewhere(app: object) -> bool:
    """True when another instrumentation makes this request's server span.

    opentelemetry-instrumentation-flask marks the apps it instruments (its span
    starts in a ``before_request`` hook, after this boundary); a WSGI middleware
    around this one has a server span current already.  A span that is valid but
    not recording is one its sampler dropped (an unsampled span has no kind to
    read): a span of ours would be a second root where the middleware chose none.
    A recording span of another kind (a client span calling this app in-process,
    a job's own span) is a parent, not this request's server span; so is a remote
    span context (a middleware that only attached what it extracted).
    """
    if getattr(app, "_is_instrumented_by_opentelemetry", False):
        return True
    span = otel_trace.get_current_span()
    if span.is_recording():
        return getattr(span, "kind", None) is SpanKind.SERVER
    context = span.get_span_context()
    return context.is_valid and not context.is_remote


if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import Getter

    _GetterBase = Getter[dict[str, Any]]
else:
    _GetterBase = object


class _EnvironGetter(_GetterBase):
    """Reads W3C trace context headers from a WSGI environ."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return None if value is None else [value]

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return [key[5:].lower().replace("_", "-") for key in carrier if key.startswith("HTTP_")]


_ENVIRON_GETTER: Final = _EnvironGetter()

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def server_call(
    wsgi_app: WSGIApp,
    environ: dict[str, Any],
    start_response: StartResponse,
    request_id: str,
    app: object,
) -> Iterable[bytes]:
    """Serve one request with ``wsgi_app`` inside its server span.

    Without a tracer provider, only ``wsgi_app(environ, start_response)``.  With
    one: a ``SERVER`` span continuing the caller's trace (W3C ``traceparent``),
    or, when opentelemetry-instrumentation-flask (or a WSGI middleware) makes
    the server span, that span gets ``gennet.request_id``; either way the
    envelope's attributes come from :func:`record_envelope`.
    """
    provider = _provider_now()
    if provider is None:
        return wsgi_app(environ, start_response)
    if _instrumented_elsewhere(app):
        return _enrich_server_span(wsgi_app, environ, start_response, request_id)
    return _traced_server_call(provider, wsgi_app, environ, start_response, request_id)


def _enrich_server_span(
    wsgi_app: WSGIApp,
    environ: dict[str, Any],
    start_response: StartResponse,
    request_id: str,
) -> Iterable[bytes]:
    def start_with_ids(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
        # The other instrumentation's span is current from its before_request hook
        # until its teardown, and the response starts in between.
        span = otel_trace.get_current_span()
        if span.is_recording():
            span.set_attribute(ATTR_REQUEST_ID, request_id)
        if span.get_span_context().is_valid:  # an unsampled span's IDs still join the logs
            _put_ids(environ, span)
        return start_response(status, headers, *args)

    return wsgi_app(environ, start_with_ids)


def _put_ids(environ: dict[str, Any], span: Span) -> None:
    context = span.get_span_context()
    environ[ENVIRON_TRACE_ID] = f"{context.trace_id:032x}"
    environ[ENVIRON_SPAN_ID] = f"{context.span_id:016x}"


def _host_and_port(host: str) -> tuple[str, str]:
    """``host:port`` split, IPv6 literals (``[::1]:8000``) without their brackets."""
    if host.startswith("["):
        address, _, rest = host[1:].partition("]")
        return address, rest[1:] if rest.startswith(":") else ""
    if host.count(":") == 1:
        address, _, port = host.partition(":")
        return address, port
    return host, ""


def _server_attributes(environ: Mapping[str, Any], method: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": environ.get("wsgi.url_scheme", "http"),
        # The path the client asked for: an app mounted under a prefix sees only
        # the rest of it in PATH_INFO.
        "url.path": (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/",
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = str(environ.get("REQUEST_METHOD"))
    if environ.get("QUERY_STRING"):
        attributes["url.query"] = _redact(environ["QUERY_STRING"])
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME")
    if host:
        address, port = _host_and_port(host)
        attributes["server.address"] = address
        if port.isdigit():
            attributes["server.port"] = int(port)
    if environ.get("REMOTE_ADDR"):
        attributes["client.address"] = environ["REMOTE_ADDR"]
    if environ.get("HTTP_USER_AGENT"):
        attributes["user_agent.original"] = environ["HTTP_USER_AGENT"]
    protocol = environ.get("SERVER_PROTOCOL", "")
    if protocol.startswith("HTTP/"):
        attributes["network.protocol.version"] = protocol[5:]
    return attributes


def _traced_server_call(
    provider: TracerProvider,
    wsgi_app: WSGIApp,
    environ: dict[str, Any],
    start_response: StartResponse,
    request_id: str,
) -> Iterable[bytes]:
    method = _method(environ.get("REQUEST_METHOD"))
    parent = propagate.extract(environ, getter=_ENVIRON_GETTER)
    attributes = _server_attributes(environ, method)
    attributes[ATTR_REQUEST_ID] = request_id
    span = _tracer(provider).start_span(
        _span_name(method), context=parent, kind=SpanKind.SERVER, attributes=attributes
    )
    _put_ids(environ, span)

    def start_with_status(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
        with contextlib.suppress(Exception):
            code = int(status[:3])
            span.set_attribute("http.response.status_code", code)
            if code >= 500:
                span.set_status(Status(StatusCode.ERROR))
            request = environ.get(_WERKZEUG_REQUEST)
            rule = getattr(getattr(request, "url_rule", None), "rule", None)
            if isinstance(rule, str):
                span.set_attribute("http.route", rule)
                span.update_name(f"{_span_name(method)} {rule}")
        return start_response(status, headers, *args)

    context = otel_trace.set_span_in_context(span, parent)
    token = otel_context.attach(context)
    try:
        body = wsgi_app(environ, start_with_status)
    except BaseException as error:
        # Escaped Flask (a teardown function raised): the boundary answers 500.
        span.set_attribute("error.type", "InternalServerError")
        span.set_attribute(ATTR_ERROR_CODE, "INTERNAL_SERVER_ERROR")
        span.set_attribute("http.response.status_code", 500)
        if isinstance(error, Exception):
            _record_exception(span, error)
        span.set_status(Status(StatusCode.ERROR))
        span.end()
        # The boundary logs the crash and answers it after this: its log line
        # belongs to this request's trace (see crash_context).
        environ[_ENVIRON_CRASHED_SPAN] = span
        raise
    finally:
        otel_context.detach(token)
    return _end_span_on_close(body, span, context, environ.get("wsgi.file_wrapper"))


def _end_span_on_close(
    body: Iterable[bytes], span: Span, context: otel_context.Context, file_wrapper: object
) -> Iterable[bytes]:
    """``body``, whose ``close()`` (the server calls it once it is sent) ends ``span``.

    A server's own file wrapper (``send_file``) is kept as it is, its ``close``
    replaced on the instance, so that gunicorn still sends it with ``sendfile()``.
    """
    if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
        close_file = getattr(body, "close", None)

        def close() -> None:
            try:
                if close_file is not None:
                    close_file()
            finally:
                span.end()

        with contextlib.suppress(AttributeError):  # a wrapper with __slots__: wrapped below
            body.close = close  # type: ignore[attr-defined]
            return body
    return _EndSpanOnClose(body, span, context)


class _EndSpanOnClose:
    """A WSGI body that ends the request's span once the server has sent it.

    A streamed body (``stream_with_context``) runs the view's code while the
    server sends it, after the view returned: each chunk is made, and the body
    closed, with the request's span current, so that a ``ServiceSession`` call or
    a log line there belongs to the request's trace.  A body that raises while
    being sent marks the span as failed.
    """

    __slots__ = ("_body", "_context", "_iterator", "_span")

    def __init__(self, body: Iterable[bytes], span: Span, context: otel_context.Context) -> None:
        self._body = body
        self._span = span
        self._context = context
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        self._iterator = iter(self._body)
        return self

    def __next__(self) -> bytes:
        iterator = self._iterator
        if iterator is None:
            iterator = self._iterator = iter(self._body)
        token = otel_context.attach(self._context)
        try:
            return next(iterator)
        except StopIteration:
            raise
        except BaseException as error:
            _mark_failed(self._span, error)
            raise
        finally:
            otel_context.detach(token)

    def close(self) -> None:
        token = otel_context.attach(self._context)
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        except BaseException as error:
            _mark_failed(self._span, error)
            raise
        finally:
            otel_context.detach(token)
            self._span.end()


def _mark_failed(span: Span, error: BaseException) -> None:
    """``error`` raised while the response was sent: the request failed."""
    with contextlib.suppress(Exception):  # a span must never fail the response
        span.set_attribute("error.type", type(error).__qualname__)
        if isinstance(error, Exception):
            _record_exception(span, error)
        span.set_status(Status(StatusCode.ERROR))


@contextlib.contextmanager
def crash_context(environ: dict[str, Any]) -> Iterator[None]:
    """The span of a request that escaped Flask, current while the boundary answers it.

    Its error log line then carries the request's trace and span IDs.
    """
    # Taken out: gunicorn's access log makes an atom of every environ value.
    span = environ.pop(_ENVIRON_CRASHED_SPAN, None)
    if span is None or otel_trace is None:
        yield
        return
    token = otel_context.attach(otel_trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


# -- SDK set-up per process (gunicorn: per worker, after fork) ---------------------------

_configured: tuple[SDKTracerProvider, _StopOnce] | None = None
#: shutdown_tracing runs at interpreter exit (once registered, for any later set-up).
_exit_handler_registered = threading.Event()

#: Longest a process waits, as it exits, for its last spans to be exported.
SHUTDOWN_TIMEOUT: Final = 2.0


class _StopOnce:
    """An exporter whose ``shutdown`` also cuts short an export being retried.

    The OTLP exporter retries a collector that does not answer for up to its
    timeout (10 s); a gunicorn worker exiting would wait that long, holding its
    slot.  :func:`shutdown_tracing` stops the exporter first, then the provider
    (whose own call to ``shutdown`` is then a no-op instead of a warning).
    """

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self._stopped = False
        self._lock = threading.Lock()

    def export(self, spans: Any) -> Any:
        return self._exporter.export(spans)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        with self._lock:
            stopped, self._stopped = self._stopped, True
        if not stopped:
            self._exporter.shutdown()


def configure_tracing(
    service_name: str | None = None,
    *,
    exporter: SpanExporter | None = None,
    instance_id: str | None = None,
) -> bool:
    """Set up the OpenTelemetry SDK for this process, exporting spans over OTLP/HTTP.

    Needs ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-http``.
    Without an ``exporter``, it does nothing unless ``OTEL_EXPORTER_OTLP_ENDPOINT``
    or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, and never when
    ``OTEL_SDK_DISABLED`` is true; the exporter and the batch processor read the
    other ``OTEL_*`` variables themselves.  Call it in each process that serves
    requests, after any fork: a gunicorn master must not (see
    :func:`gunicorn_post_fork`).

    Example::

        configure_tracing("workflow-service")   # OTEL_EXPORTER_OTLP_ENDPOINT set

    Args:
        service_name: ``service.name``; by default ``OTEL_SERVICE_NAME``, else
            ``GENNET_SERVICE_NAME``, else the SDK's default.
        exporter: Where spans go (tests pass an in-memory one); by default OTLP/HTTP.
        instance_id: ``service.instance.id``; a random UUID by default.

    Returns:
        True when this call set the SDK up; False when it did nothing (also when
        a tracer provider is already set, which is logged).
    """
    global _configured  # noqa: PLW0603 - one provider per process
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter is None and not endpoint:
        return False
    if _configured is not None or otel_trace is None:
        return False
    if _provider_now() is not None:
        # Set by the application, or inherited from a gunicorn master that set it
        # up before forking: the API allows one provider per process.
        _logger.warning("tracing: a tracer provider is already set; configure_tracing() left it")
        return False
    try:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider as SDKProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )

            exporter = OTLPSpanExporter()
    except ImportError as error:
        _logger.warning("tracing not set up: %s (needs opentelemetry-sdk and its exporter)", error)
        return False
    attributes: dict[str, Any] = {
        "service.instance.id": instance_id or str(uuid.uuid4()),
        "process.pid": os.getpid(),
        "host.name": socket.gethostname(),
    }
    name = (
        service_name or os.environ.get("OTEL_SERVICE_NAME") or os.environ.get("GENNET_SERVICE_NAME")
    )
    if name:
        attributes["service.name"] = name
    # Its own exit handler would wait for an export as long as the exporter's
    # timeout; shutdown_tracing bounds the wait (gunicorn's worker_exit calls it
    # first, and then this handler finds nothing left to do).
    provider = SDKProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    stop_once = _StopOnce(exporter)
    provider.add_span_processor(BatchSpanProcessor(cast("SpanExporter", stop_once)))
    otel_trace.set_tracer_provider(provider)
    _configured = (provider, stop_once)
    if not _exit_handler_registered.is_set():
        _exit_handler_registered.set()
        atexit.register(shutdown_tracing)
    return True


def shutdown_tracing(timeout: float = SHUTDOWN_TIMEOUT) -> None:
    """Export the spans still queued, for at most ``timeout`` seconds, and stop the SDK
    :func:`configure_tracing` set up (a collector that is down, or one that accepts
    connections and never answers, costs no more).

    The flush and the SDK's shutdown run in a daemon thread this call waits
    ``timeout`` for: an export blocked reading a socket cannot be interrupted,
    and it is left behind, its spans lost, when the process exits.
    """
    global _configured
    configured, _configured = _configured, None
    if configured is None:
        return
    provider, exporter = configured

    def stop() -> None:
        try:
            provider.force_flush(int(timeout * 1000))
        finally:
            # Ends an export being retried (not one blocked on a socket), then
            # the batch processor, whose own call to the exporter is then a no-op.
            exporter.shutdown()
            provider.shutdown()

    stopping = threading.Thread(target=stop, name="gennet-tracing-shutdown", daemon=True)
    stopping.start()
    stopping.join(timeout)
    if stopping.is_alive():
        exporter.shutdown()  # no more retries, whatever else still runs
        _logger.warning(
            "tracing: the last spans were not exported within %.1f s; giving up on them", timeout
        )


def gunicorn_post_fork(server: Any, worker: Any) -> None:
    """gunicorn ``post_fork`` hook: set the SDK up in the new worker.

    Per worker and after the fork, because the batch processor's thread and the
    exporter's connections do not survive a fork; each worker is a
    ``service.instance.id`` of its own.  In a gunicorn config module::

        from gennet_sync.tracing import gunicorn_post_fork, gunicorn_worker_exit

        def post_fork(server, worker):
            gunicorn_post_fork(server, worker)

        worker_exit = gunicorn_worker_exit

    Args:
        server: gunicorn's arbiter.
        worker: The worker just forked.
    """
    service = os.environ.get("OTEL_SERVICE_NAME") or os.environ.get("GENNET_SERVICE_NAME")
    service = service or getattr(getattr(server, "cfg", None), "proc_name", None)
    instance = f"{socket.gethostname()}-{worker.pid}-{uuid.uuid4().hex[:8]}"
    if configure_tracing(service, instance_id=instance):
        server.log.info("worker %s: tracing to %s", worker.pid, _endpoint_for_log())


def gunicorn_worker_exit(server: Any, worker: Any) -> None:
    """gunicorn ``worker_exit`` hook: export the worker's last spans before it exits."""
    shutdown_tracing()


def _endpoint_for_log() -> str:
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ""
    )
    return endpoint or "the configured exporter"

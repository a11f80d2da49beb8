"""One JSON error envelope for every error a Flask app returns.

``setup_error_handlers(app)`` (or the :class:`GenNet` extension) registers four
handlers, by class, and Flask finds the right one along each exception's MRO:

- :class:`~gennet_sync.exceptions.GenNetException`: its own status, envelope, headers;
- marshmallow's ``ValidationError``: 422 ``VALIDATION_ERROR`` with per-field messages;
- werkzeug's ``HTTPException``: its own status and headers, code from its phrase;
- ``Exception``: 500 with a generic message, logged with its traceback.

It also gives every response an ``X-Request-ID`` and keeps that ID in
:mod:`gennet_sync.context` for the duration of the request.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import flask.globals
import flask.helpers
from flask import Flask, Response, current_app, has_request_context, jsonify, request
from flask.wrappers import Request
from marshmallow import ValidationError as MarshmallowValidationError
from werkzeug.exceptions import BadRequest, ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import InternalServerError as WerkzeugInternalServerError
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.local import LocalProxy
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_path_info

from gennet_sync import tracing as _tracing
from gennet_sync.circuit_breaker import registry
from gennet_sync.context import (
    _VALID_REQUEST_ID,
    REQUEST_ID_HEADER,
    RequestIdFilter,
    is_valid_request_id,
    new_request_id,
    set_request_id_fallback,
)
from gennet_sync.context import _made as _new_request_ids
from gennet_sync.context import _request_id as _request_id_var
from gennet_sync.exceptions import (
    MAX_FIELD_ERRORS,
    MAX_METADATA_DEPTH,
    GenNetException,
    make_envelope,
)
from gennet_sync.http_client import http_status_code

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "EXTENSION_KEY",
    "AppState",
    "GenNet",
    "app_state",
    "error_response",
    "http_status_code",
    "setup_error_handlers",
]

logger = logging.getLogger(__name__)

#: Key of this library's per-app state in ``app.extensions``.
EXTENSION_KEY = "gennet_sync"

#: Where the request ID is kept in the WSGI environ, which outlives the request context.
_ENVIRON_REQUEST_ID = "gennet_sync.request_id"


def error_response(
    status: int,
    code: str,
    type_: str,
    message: str,
    metadata: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
) -> Response:
    """Build a JSON envelope response; every handler goes through here.

    Args:
        status: The HTTP status.
        code: The envelope's ``code``.
        type_: The envelope's ``type``.
        message: The envelope's ``message``.
        metadata: The envelope's ``metadata``; made JSON-safe.
        headers: Headers the response must carry, as a mapping or as pairs (a
            header may repeat: two ``WWW-Authenticate`` challenges).

    Returns:
        The ``application/json`` response.
    """
    response = jsonify(make_envelope(code, type_, message, metadata))
    response.status_code = status
    _tracing.record_envelope(status, code, type_)
    response.gennet_error_code = code  # type: ignore[attr-defined]  # read by gennet_sync.metrics
    if headers:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in pairs:
            # Content-Type and Content-Length belong to our JSON body, not the original.
            if name.lower() not in ("content-type", "content-length"):
                response.headers.add(name, value)
    return response


_READ_CHUNK = 64 * 1024


def _body_too_large(limit: int, what: str = "The request body") -> RequestEntityTooLarge:
    """The 413 for a body over ``limit`` bytes, saying which limit it passed."""
    return RequestEntityTooLarge(f"{what} exceeds the limit of {limit} bytes.")


class _CappedBody(io.RawIOBase):
    """A body of unknown length (chunked) that is a 413 as soon as it passes ``limit``.

    werkzeug's own stream for such a body stops at the limit without an error
    when read to its end, so a view would see the body cut short (and a JSON body
    a misleading 400).  This one asks its source for at most one byte past the
    limit: enough to tell a body that ends exactly there (accepted) from one that
    goes on (refused), and never more than ``limit + 1`` bytes read in all.

    Args:
        source: The stream to read (``wsgi.input``, or a decoded body).
        limit: The largest accepted size in bytes.
        what: How the 413's message names the body.
    """

    def __init__(self, source: Any, limit: int, what: str = "The request body") -> None:
        super().__init__()
        self._source = source
        self._limit = limit
        self._what = what
        self._total = 0

    def readable(self) -> bool:
        return True

    def _pull(self, size: int) -> bytes:
        try:
            data: bytes = self._source.read(min(size, self._limit - self._total + 1))
        except (OSError, ValueError) as error:  # the client went away mid-body
            raise ClientDisconnected() from error
        self._total += len(data)
        if self._total > self._limit:
            raise _body_too_large(self._limit, self._what)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._pull(len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return self.readall()
        return self._pull(size) if size else b""

    def readall(self) -> bytes:
        parts: list[bytes] = []
        while data := self._pull(_READ_CHUNK):
            parts.append(data)
        return b"".join(parts)


class _SafeJSONRequest(Request):
    """A request that never hands a view a body cut short, nor crashes on deep JSON.

    - :attr:`stream` (so ``get_data``, ``get_json``, ``form``, ``files``) refuses a
      body over ``MAX_CONTENT_LENGTH`` with a 413 whether its length is announced
      or not (chunked), and accepts one exactly at the limit.
    - JSON nested too deeply for the parser is a 400, not a 500.
    """

    @cached_property
    def stream(self) -> Any:
        limit = self.max_content_length
        if limit is None or self.shallow:
            return super().stream
        length = self.content_length
        if length is not None:
            if length > limit:  # refused before a byte of it is read
                raise _body_too_large(limit)
            # Read to its announced length: werkzeug's default here (a stream
            # capped at the limit) refuses one more read of a body exactly at it.
            return LimitedStream(self.environ["wsgi.input"], length)
        if "wsgi.input_terminated" in self.environ:  # chunked, or decoded by us
            return _CappedBody(self.environ["wsgi.input"], limit)
        return super().stream  # no length, no end: werkzeug reads nothing

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        try:
            return super().get_json(force=force, silent=silent, cache=cache)
        except RecursionError:
            if silent:
                return None
            raise BadRequest("Failed to decode JSON object: nested too deeply.") from None

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        # Flask hides the parser's message outside debug mode; it describes the
        # client's own input, so say what was wrong.
        if e is None:
            return super().on_json_loading_failed(e)
        raise BadRequest(f"Failed to decode JSON object: {e}") from e


_NOT_READ: Any = object()
# Flask's split of a blueprint's name into it and its parents' names, which its
# ``blueprints`` property returns; a Flask without it gets the property's value.
_blueprint_names: Callable[[str], list[str]] | None = getattr(
    flask.helpers, "_split_blueprint_path", None
)


class _RuleBlueprintsRequest(Request):
    """A request that works out :attr:`blueprints` once per URL rule, not on every read.

    Flask reads ``request.blueprints`` three times a request (for the
    ``before_request`` hooks, the ``after_request`` hooks and the teardown
    functions) and works it out each time, from the endpoint of the URL rule
    matched (three property calls and a split for an endpoint in a blueprint).
    Here the value Flask's property gives is kept with the rule it came from and
    given back while the request's rule is that rule; a rule set later (an app
    routing again by hand) is read afresh.  Mixed in only when the app's request
    class reads the blueprints from the rule as Flask does (see
    :func:`_blueprints_follow_the_rule`); a class derived later that reads its
    ``endpoint`` or ``blueprint`` its own way gets Flask's property, which reads them.
    """

    _blueprints_rule: Any = _NOT_READ
    _blueprints: list[str]
    #: Whether this class reads ``endpoint`` and ``blueprint`` as Flask does.
    _reads_the_rule = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._reads_the_rule = _reads_as_flask_does(cls, ("blueprint", "endpoint"))

    @property
    def blueprints(self) -> list[str]:
        if not self._reads_the_rule:
            return super().blueprints
        rule = self.url_rule
        if rule is self._blueprints_rule:
            # The very list Flask's cached split gives; none: a new empty list per
            # read, as Flask's property makes (a caller may change what it got).
            return self._blueprints or []
        endpoint = None if rule is None else rule.endpoint
        if _blueprint_names is None:  # not the Flask this was written for
            blueprints = super().blueprints
        elif endpoint is not None and "." in endpoint:
            # What Flask's properties give (blueprints, from blueprint, from
            # endpoint), without their calls: its own (cached) split of the
            # blueprint's name, else a new empty list.
            blueprints = _blueprint_names(endpoint.rpartition(".")[0])
        else:
            blueprints = []
        self._blueprints = blueprints
        self._blueprints_rule = rule
        return blueprints


def _reads_as_flask_does(request_class: type[Request], names: tuple[str, ...]) -> bool:
    """Whether ``request_class`` has Flask's own properties of these ``names``."""
    return all(getattr(request_class, name) is getattr(Request, name) for name in names)


def _blueprints_follow_the_rule(request_class: type[Request]) -> bool:
    """Whether ``request_class`` works out its blueprints from its URL rule as Flask does."""
    return _reads_as_flask_does(request_class, ("blueprints", "blueprint", "endpoint"))


#: Set in a request's WSGI environ (to any value) by a middleware that found
#: something a ``before`` step added with ``before_always=False`` must act on.
BEFORE_STEPS_WANTED = "gennet_sync.before_steps_wanted"

#: A feature's work before the view: raise to answer with an error instead.
BeforeStep = Callable[[Request], None]
#: A feature's work on the response, as an ``after_request`` hook does it.
AfterStep = Callable[[Request, Response], Response]


@dataclass
class AppState:
    """Per-app state of gennet_sync, kept in ``app.extensions["gennet_sync"]``.

    Attributes:
        extension: The :class:`GenNet` instance registered on the app.
        features: State of optional features, by name (``"compression"``,
            ``"versioning"``, ``"openapi"``...), set by their own ``init_app``.
    """

    extension: GenNet
    features: dict[str, Any] = field(default_factory=dict)
    _before_steps: list[BeforeStep] = field(default_factory=list, init=False, repr=False)
    # The steps of the last shared before hook that run on a routed, unmarked request.
    _before_routed: list[BeforeStep] = field(default_factory=list, init=False, repr=False)
    _after_steps: list[AfterStep] = field(default_factory=list, init=False, repr=False)
    _before_hook: Callable[[], None] | None = field(default=None, init=False, repr=False)
    _after_hook: Callable[[Response], Response] | None = field(default=None, init=False, repr=False)

    def claim_feature(self, name: str, extension: object) -> bool:
        """Register ``extension`` as the app's ``name`` feature; False if it already is.

        Raises:
            RuntimeError: Another instance holds the feature (its settings would
                be ignored).
        """
        existing = self.features.get(name)
        if existing is extension:
            return False
        if existing is not None:
            raise RuntimeError(f"this app already has a {type(extension).__name__}; use that one")
        self.features[name] = extension
        return True

    def add_request_steps(
        self,
        app: Flask,
        before: BeforeStep | None = None,
        after: AfterStep | None = None,
        *,
        before_always: bool = True,
    ) -> None:
        """Run ``before`` ahead of every view and ``after`` on every response of ``app``.

        The features share one ``before_request`` and one ``after_request`` hook
        instead of a pair each: Flask pays ``ensure_sync`` for every hook on every
        request, and each hook its own lookups of ``request``.  The steps run as
        their hooks would: ``before`` steps in the order they were added, ``after``
        steps in reverse (the last feature set up touches the response first).  A
        step joins the shared hook only while that hook is still the last one
        registered; after a hook of the app's own, it gets a new shared hook, so
        the app's hooks run between the features' steps exactly as before.

        A ``before`` step that can only act on a request no URL rule matched, or
        on one a WSGI middleware marked by setting ``environ[BEFORE_STEPS_WANTED]``
        (a decoding error it found), is added with ``before_always=False``: on
        every other request the shared hook skips it without calling it, one check
        for all such steps.  On the requests it runs for, it runs in its place
        among the others.

        Args:
            app: The app this state belongs to.
            before: Called with the request before the view.
            after: Called with the request and the response; returns the response.
            before_always: ``False``: ``before`` does nothing on a routed request
                its middleware did not mark, and is not called for one.
        """
        if before is not None:
            last_before = _last(app.before_request_funcs.get(None))
            if self._before_hook is None or last_before is not self._before_hook:
                self._before_steps = []
                self._before_routed = []
                self._before_hook = _before_hook(self._before_steps, self._before_routed)
                app.before_request(self._before_hook)
            self._before_steps.append(before)
            if before_always:
                self._before_routed.append(before)
        if after is not None:
            last_after = _last(app.after_request_funcs.get(None))
            if self._after_hook is None or last_after is not self._after_hook:
                self._after_steps = []
                self._after_hook = _after_hook(self._after_steps)
                app.after_request(self._after_hook)
            self._after_steps.insert(0, after)


def _last(hooks: Sequence[object] | None) -> object:
    """The hook registered last, if any."""
    return hooks[-1] if hooks else None


# flask types ``request`` as the object it stands for; it is a proxy.
_request_proxy = cast("LocalProxy[Request]", request)

# The context variable behind Flask's ``request`` proxy: the shared hooks read the
# request from it directly (the proxy's lookup is a Python call, twice a request).
# tests/unit/test_performance_equivalence.py pins that it holds what ``request``
# stands for; a Flask without it gets the proxy's lookup.
_request_contexts: ContextVar[Any] | None = getattr(flask.globals, "_cv_request", None)


def _before_hook(steps: list[BeforeStep], routed: list[BeforeStep]) -> Callable[[], None]:
    def run_before_steps() -> None:
        # One lookup of the request for all steps.
        if _request_contexts is not None:
            current = _request_contexts.get().request
        else:
            current = _request_proxy._get_current_object()
        # Most requests: routed, and no middleware asked for the other steps.
        if current.routing_exception is None and BEFORE_STEPS_WANTED not in current.environ:
            for step in routed:
                step(current)
            return
        for step in steps:
            step(current)

    return run_before_steps


def _after_hook(steps: list[AfterStep]) -> Callable[[Response], Response]:
    def run_after_steps(response: Response) -> Response:
        if _request_contexts is not None:
            current = _request_contexts.get().request
        else:
            current = _request_proxy._get_current_object()
        for step in steps:
            response = step(current, response)
        return response

    return run_after_steps


def app_state(app: Flask) -> AppState:
    """The gennet_sync state of ``app``, registering :class:`GenNet` first if needed."""
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        GenNet(app)
        state = app.extensions[EXTENSION_KEY]
    assert isinstance(state, AppState)
    return state


class GenNet:
    """The gennet_sync Flask extension: error envelope and request IDs.

    Works with the app factory pattern; per-app state lives in
    ``app.extensions["gennet_sync"]`` and settings come from ``app.config``:

    - ``GENNET_EXPOSE_ERRORS`` (default ``None``: follow ``app.debug``): put the
      details of unexpected exceptions (type, message, traceback) in the 500
      envelope's metadata.
    - ``GENNET_REQUEST_ID_HEADER`` (default ``"X-Request-ID"``).
    - ``GENNET_BREAKER_STORAGE`` (default: the environment variable of that name,
      else per-process memory): ``redis://host:port/db`` shares the state of every
      breaker the registry creates (so of every ``ServiceSession``) across workers
      and hosts.

    ``init_app`` wraps ``app.wsgi_app`` (the request ID goes on every response on
    its way out; an exception escaping Flask still gets the envelope) and puts a
    :class:`~gennet_sync.context.RequestIdFilter` on ``app.logger``, so Flask's own
    log records carry ``request_id`` too.

    ``GenNet(app, metrics=True)`` also serves Prometheus metrics (the ``prometheus``
    extra): the same as ``gennet_sync.metrics.Metrics(app)`` with its defaults.

    Example::

        gennet = GenNet()

        def create_app():
            app = Flask(__name__)
            gennet.init_app(app)
            return app
    """

    def __init__(self, app: Flask | None = None, *, metrics: bool = False) -> None:
        # metrics=True: also serve Prometheus metrics (gennet_sync.metrics.Metrics).
        self._metrics = metrics
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the handlers and request hooks on ``app``."""
        app.config.setdefault("GENNET_EXPOSE_ERRORS", None)
        app.config.setdefault("GENNET_REQUEST_ID_HEADER", REQUEST_ID_HEADER)
        storage_url = app.config.get("GENNET_BREAKER_STORAGE")
        if storage_url:
            registry.adopt_default_storage(storage_url)
        if EXTENSION_KEY in app.extensions:
            # Already set up, by this or another GenNet: it has no settings of its own,
            # so any instance is the same extension (features set it up on demand).
            self._init_metrics(app)
            return
        app.extensions[EXTENSION_KEY] = AppState(extension=self)
        # Flask logs the exceptions no handler took ("Exception on /path") itself.
        app.logger.addFilter(RequestIdFilter())
        app.logger.addFilter(_ESCAPED_TRACEBACKS)
        if not issubclass(app.request_class, _SafeJSONRequest):
            bases: tuple[type[Request], ...] = (_SafeJSONRequest, app.request_class)
            if _blueprints_follow_the_rule(app.request_class):
                bases = (_RuleBlueprintsRequest, *bases)
            app.request_class = type("GenNetRequest", bases, {})
        app.register_error_handler(GenNetException, _handle_gennet_exception)
        app.register_error_handler(MarshmallowValidationError, _handle_marshmallow_error)
        app.register_error_handler(HTTPException, _handle_http_exception)
        app.register_error_handler(Exception, _handle_unexpected_exception)
        if type(app).log_exception is Flask.log_exception:  # not overridden by the app's class
            app.log_exception = functools.partial(  # type: ignore[method-assign]
                _log_flask_exception, app
            )
        app.wsgi_app = _WSGIBoundary(app.wsgi_app, app)  # type: ignore[method-assign]
        # The request ID is read from the request's environ where it is needed; no
        # before_request hook copies it to ``g`` (Flask's per-hook cost, on every
        # request).  ``g.gennet_request_id`` still reads it, for code written for it.
        if not issubclass(app.app_ctx_globals_class, _RequestIdGlobals):
            app.app_ctx_globals_class = type(  # type: ignore[assignment]
                "GenNetGlobals", (_RequestIdGlobals, app.app_ctx_globals_class), {}
            )
        self._init_metrics(app)

    def _init_metrics(self, app: Flask) -> None:
        if self._metrics:
            # By name: gennet_sync.metrics sits above this module and needs the
            # optional prometheus extra, which an app without metrics never imports.
            importlib.import_module("gennet_sync.metrics").setup_metrics(app)


def setup_error_handlers(app: Flask) -> GenNet:
    """Make every error ``app`` returns the gennet_sync JSON envelope.

    Example::

        app = Flask(__name__)
        setup_error_handlers(app)

    Calling it again on the same app changes nothing.

    Returns:
        The :class:`GenNet` extension registered on ``app``.
    """
    return app_state(app).extension


_UNSAFE_IN_LOG = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u2028\u2029]")


def _log_safe(value: object) -> str:
    """``value`` as text that cannot start a new log line (nor fake an escape).

    Control characters (CR, LF, ESC...), the Unicode line separators and the
    backslash itself become backslash escapes (``\\r``, ``\\x1b``, ``\\\\``), so a
    path like ``/a%0D%0AERROR forged`` is logged as one line, ``/a\\r\\nERROR forged``.
    """
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE_IN_LOG.sub(_escape_match, text)


def _escape_match(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


#: Set (through ``extra``) on the records gennet_sync logs about a failed request.
_ESCAPE_TRACEBACK = "gennet_escape_traceback"
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


class _EscapedTracebackFilter(logging.Filter):
    """Formats the traceback of gennet_sync's request-failure records itself.

    The stack comes from the source files and is kept as it is; the exception
    messages, which may quote the request (``RuntimeError(f"no network {name}")``),
    are escaped like the path, so no request can start a line of the log.  The
    stdlib's formatters use a record's ``exc_text`` when it is set.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not record.exc_text and getattr(record, _ESCAPE_TRACEBACK, False):
            record.exc_text = _escaped_traceback(record.exc_info[1])
        return True


def _escaped_traceback(error: BaseException | None) -> str:
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if error.__cause__ is not None:
            chain.append((error, _CAUSE))
            error = error.__cause__
        elif error.__context__ is not None and not error.__suppress_context__:
            chain.append((error, _CONTEXT))
            error = error.__context__
        else:
            chain.append((error, ""))
            error = None
    parts: list[str] = []
    for index, (exc, link) in enumerate(reversed(chain)):
        if index:
            parts.append(link)  # how this exception followed the one above
        if exc.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(exc.__traceback__))
        parts.extend(
            _log_safe(line.rstrip("\n")) + "\n"
            for line in traceback.format_exception_only(type(exc), exc)
        )
    return "".join(parts).rstrip("\n")


_ESCAPED_TRACEBACKS = _EscapedTracebackFilter()
logger.addFilter(_ESCAPED_TRACEBACKS)


def _log_flask_exception(app: Flask, exc_info: Any) -> None:
    """Flask's ``log_exception`` (an exception no handler took), with the request escaped."""
    app.logger.error(
        "Exception on %s [%s]",
        _log_safe(request.path),
        _log_safe(request.method),
        exc_info=exc_info,
        extra={_ESCAPE_TRACEBACK: True},
    )


def _expose_errors(app: Flask) -> bool:
    setting = app.config.get("GENNET_EXPOSE_ERRORS")
    return bool(app.debug if setting is None else setting)


def _crash_metadata(app: Flask, error: BaseException) -> dict[str, Any]:
    """The details of an unexpected exception, when ``app`` exposes them; else nothing."""
    if not _expose_errors(app):
        return {}
    return {
        "exception_type": type(error).__qualname__,
        # The envelope renders it with str(), falling back when its __str__ raises.
        "exception_message": error,
        "traceback": traceback.format_exception(error),
    }


def _request_id() -> str:
    """The current request's ID (see :func:`_environ_request_id`)."""
    return _environ_request_id(_request_proxy._get_current_object().environ)


def _log_extra() -> dict[str, Any]:
    return {"request_id": _request_id(), _ESCAPE_TRACEBACK: True}


def _handle_gennet_exception(error: GenNetException) -> Response:
    if error.status_code >= 500:
        logger.error("%s: %s", type(error).__name__, _log_safe(error.message), extra=_log_extra())
    envelope = error.to_dict()["error"]
    return error_response(
        error.status_code,
        envelope["code"],
        envelope["type"],
        envelope["message"],
        envelope["metadata"],
        error.headers,
    )


def _handle_marshmallow_error(error: MarshmallowValidationError) -> Response:
    messages = error.messages
    # A message raised without a field (a validates_schema check, or by hand) is a
    # list: keyed by its field name ("_schema"), fields is always a mapping.
    fields = messages if isinstance(messages, dict) else {error.field_name: messages}
    kept, omitted = _first_field_errors(fields)
    metadata: dict[str, Any] = {"fields": kept}
    if omitted:
        metadata["fields_omitted"] = omitted
    return error_response(
        422,
        "VALIDATION_ERROR",
        "ValidationError",
        _validation_summary(kept, omitted),
        metadata,
    )


def _first_field_errors(fields: Mapping[Any, Any]) -> tuple[dict[Any, Any], int]:
    """The first :data:`MAX_FIELD_ERRORS` fields with errors, and how many entries are left.

    Depth first, in marshmallow's order, keeping its nested shape.  The entries
    left out are counted by ``len()`` at each level where the walk stopped (a
    nested object left out counts as one), so a body with a million unknown keys
    costs fifty entries, not a million.
    """
    left = MAX_FIELD_ERRORS
    omitted = 0

    def walk(node: Mapping[Any, Any], depth: int) -> dict[Any, Any]:
        nonlocal left, omitted
        kept: dict[Any, Any] = {}
        for key, value in node.items():
            if left <= 0:
                omitted += len(node) - len(kept)
                break
            # Deeper than the envelope renders (a hand-made error): kept whole, cut there.
            if isinstance(value, Mapping) and value and depth < MAX_METADATA_DEPTH:
                kept[key] = walk(value, depth + 1)
            else:
                kept[key] = value
                left -= 1
        return kept

    return walk(fields, 0), omitted


def _validation_summary(fields: Mapping[Any, Any], omitted: int = 0) -> str:
    """``Request validation failed: edges.0.sign: Must be one of: -1, 1. (and 2 more)``.

    Reads only ``fields`` as kept by :func:`_first_field_errors`; ``omitted`` more
    entries count among the rest.
    """

    def problems(path: str, messages: Any, depth: int = 0) -> Iterator[str]:
        if depth >= MAX_METADATA_DEPTH:
            yield f"{path}: (nested too deeply)"
        elif isinstance(messages, Mapping):
            for key, value in messages.items():
                yield from problems(f"{path}.{key}" if path else str(key), value, depth + 1)
        elif isinstance(messages, (list, tuple)) and messages:
            if all(isinstance(item, str) for item in messages):
                yield from (f"{path}: {item}" for item in messages)
            else:
                for item in messages:
                    yield from problems(path, item, depth + 1)
        else:
            yield f"{path}: {messages}"

    found = problems("", fields)
    first = next(found, None)
    if first is None:
        return "Request validation failed"
    rest = sum(1 for _ in found) + omitted
    more = f" (and {rest} more)" if rest else ""
    return f"Request validation failed: {first}{more}"


def _handle_http_exception(error: HTTPException) -> Response:
    original = getattr(error, "original_exception", None)
    if isinstance(error, WerkzeugInternalServerError) and isinstance(original, Exception):
        # Flask wraps an exception no handler took (one raised in an after_request
        # hook or in an error handler) and has logged it: answer it as if the view
        # had raised it, so its details follow GENNET_EXPOSE_ERRORS like any crash.
        if isinstance(original, GenNetException):
            return _handle_gennet_exception(original)
        if isinstance(original, MarshmallowValidationError):
            return _handle_marshmallow_error(original)
        if not isinstance(original, HTTPException):
            return _unexpected_exception_response(original)
    status = error.code or 500
    if status >= 500:
        logger.error("HTTP %s: %s", status, _log_safe(error.description), extra=_log_extra())
    # werkzeug puts Content-Type in get_headers(); keep the rest (Allow,
    # WWW-Authenticate, Retry-After...), repeated ones included.
    return error_response(
        status,
        http_status_code(status),
        type(error).__name__,
        error.description or HTTP_STATUS_CODES.get(status, "Error"),
        None,
        error.get_headers(),
    )


def _handle_unexpected_exception(error: Exception) -> Response:
    logger.error(
        "Unhandled exception on %s %s",
        _log_safe(request.method),
        _log_safe(request.path),
        exc_info=(type(error), error, error.__traceback__),
        extra=_log_extra(),
    )
    return _unexpected_exception_response(error)


def _unexpected_exception_response(error: Exception) -> Response:
    metadata = _crash_metadata(current_app, error)
    return error_response(
        500, "INTERNAL_SERVER_ERROR", "InternalServerError", "Internal server error", metadata
    )


def _environ_request_id(environ: WSGIEnvironment) -> str:
    """The ID :class:`_WSGIBoundary` bound to the request with this ``environ``.

    A request context made without the boundary (``app.test_request_context()``)
    gets one on first use, from its request-ID header or new, kept in the environ
    so every later reader sees the same ID.
    """
    request_id: str | None = environ.get(_ENVIRON_REQUEST_ID)
    if request_id is None:
        header = current_app.config["GENNET_REQUEST_ID_HEADER"]
        request_id = _incoming_or_new_request_id(environ, _environ_key(header))
        environ[_ENVIRON_REQUEST_ID] = request_id
    return request_id


def _environ_key(header: str) -> str:
    """Where the WSGI environ keeps request header ``header`` (as werkzeug reads it)."""
    key = header.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


def _incoming_or_new_request_id(environ: WSGIEnvironment, key: str) -> str:
    incoming: str | None = environ.get(key)
    return incoming if incoming is not None and is_valid_request_id(incoming) else new_request_id()


def _request_id_from_flask() -> str | None:
    """The ID of the request whose context is pushed (a streamed body's generator)."""
    if not has_request_context():
        return None
    return _request_id()


set_request_id_fallback(_request_id_from_flask)


class _RequestIdGlobals:
    """Mixed into the app's ``g`` class: ``g.gennet_request_id`` is the request's ID.

    Read on demand (:func:`~gennet_sync.context.current_request_id` is the
    documented way); a value the app assigns to it is kept, as on a plain ``g``.
    """

    @property
    def gennet_request_id(self) -> str:
        assigned = self.__dict__.get("gennet_request_id")
        if assigned is not None:
            return cast(str, assigned)
        if not has_request_context():
            raise AttributeError("gennet_request_id: no request is being handled")
        return _request_id()


def _start_with_request_id(
    start_response: StartResponse,
    header: str,
    lowered: str,
    request_id: str,
    status: str,
    headers: list[tuple[str, str]],
    exc_info: OptExcInfo | None = None,
) -> Callable[[bytes], object]:
    """``start_response`` with the request ID as the last header (the boundary's)."""
    length = len(lowered)
    for name, _ in headers:
        # Lengths first: most names are not ours, and lower() is a call.
        if len(name) == length and name.lower() == lowered:  # the view set one
            headers = [pair for pair in headers if pair[0].lower() != lowered]
            break
    return start_response(status, [*headers, (header, request_id)], exc_info)


_partial = functools.partial


class _WSGIBoundary:
    """WSGI middleware: what must hold for every response, whatever failed inside Flask.

    - Every response carries the request ID, set on its way out through
      ``start_response``: an ``after_request`` hook of ours would be skipped when
      another hook raises.
    - The thread's request ID is unbound when the request is over, even when a
      teardown function that runs before ours raises.
    - An exception that escapes Flask (from a teardown function: a database
      session failing to close) is logged and answered with the 500 envelope; the
      server would send its own HTML page.  Under ``PROPAGATE_EXCEPTIONS``
      (testing, debug) it is left to the test client or the debugger, as Flask does.
    """

    def __init__(self, wsgi_app: WSGIApplication, app: Flask) -> None:
        self.wsgi_app = wsgi_app
        self.app = app
        # The request-ID header setting as last read: its name, its environ key and
        # its lowered name (replaced as one, so a request never mixes two settings).
        self._setting = ("", "", "")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # Every request passes here: calls are counted (each costs about as much
        # as the work of a line), hence the inlined helpers.
        header = self.app.config["GENNET_REQUEST_ID_HEADER"]
        setting = self._setting
        if header != setting[0]:  # read once per setting, not per request
            setting = self._setting = (header, _environ_key(header), header.lower())
        _, key, lowered = setting
        # Bound here, before Flask: the ID is known to every hook, handler and
        # teardown function (they read it from the environ or the context).  An
        # app mounted inside another one takes a valid ID from its own header,
        # else keeps the one its host bound.
        incoming: str | None = environ.get(key)
        request_id: str | None
        if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming) is not None:
            request_id = incoming
        else:
            request_id = environ.get(_ENVIRON_REQUEST_ID)
            if not request_id:
                try:  # new_request_id(), inlined
                    request_id = _new_request_ids.popleft()
                except IndexError:
                    request_id = new_request_id()
        environ[_ENVIRON_REQUEST_ID] = request_id

        # A partial, not a closure: cheaper to make, and this frame keeps no cells.
        start_with_request_id = _partial(
            _start_with_request_id, start_response, header, lowered, request_id
        )
        token = _request_id_var.set(request_id)
        try:
            # Without a tracer provider (opentelemetry absent, or none set yet),
            # server_call only calls the app: its first check, _provider_now's
            # read, is made here (without calling either).
            holder = _tracing.PROVIDER_HOLDER
            if (_tracing._provider_now() if holder is None else holder._TRACER_PROVIDER) is None:
                return self.wsgi_app(environ, start_with_request_id)
            return _tracing.server_call(
                self.wsgi_app, environ, start_with_request_id, request_id, self.app
            )
        except Exception as error:
            with _tracing.crash_context(environ):  # its log line joins the request's trace
                return self._crash_response(environ, error, start_with_request_id)
        finally:
            # A streamed body still finds the ID through the request context that
            # stream_with_context pushes (see _request_id_from_flask).  A token made
            # in another context cannot be reset here; the next request on this
            # thread binds its own ID anyway.
            try:  # noqa: SIM105 (contextlib.suppress costs about 0.4 us a request)
                _request_id_var.reset(token)
            except (ValueError, RuntimeError):
                pass

    def _crash_response(
        self, environ: WSGIEnvironment, error: Exception, start_response: StartResponse
    ) -> Iterable[bytes]:
        """The 500 envelope for an exception that escaped Flask itself."""
        propagate = self.app.config["PROPAGATE_EXCEPTIONS"]
        if propagate or (propagate is None and (self.app.testing or self.app.debug)):
            raise error
        exc_info = sys.exc_info()  # called while the caller handles ``error``
        logger.error(
            "Unhandled exception escaped Flask (from a teardown function?) on %s %s",
            _log_safe(environ.get("REQUEST_METHOD")),
            _log_safe(get_path_info(environ)),  # as request.path shows it
            exc_info=exc_info,
            extra={"request_id": environ.get(_ENVIRON_REQUEST_ID), _ESCAPE_TRACEBACK: True},
        )
        envelope = make_envelope(
            "INTERNAL_SERVER_ERROR",
            "InternalServerError",
            "Internal server error",
            _crash_metadata(self.app, error),
        )
        response = self.app.response_class(
            self.app.json.dumps(envelope), status=500, mimetype="application/json"
        )

        def restart(
            status: str, headers: list[tuple[str, str]], _exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            # A second start_response must pass exc_info: the server replaces the
            # headers it has not sent yet, or re-raises when they are on the wire.
            return start_response(status, headers, exc_info)

        return response(environ, restart)

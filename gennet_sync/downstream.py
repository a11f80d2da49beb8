"""What a downstream service's error answer means, as the exception to raise for it.

:func:`raise_for_error` and :func:`error_from_response` read a 4xx/5xx response
(its envelope, its status, its ``Retry-After``, at most :data:`MAX_ERROR_BODY` of
its body) into a ``GenNetException``.  The classes they and ``ServiceSession``
raise (``DownstreamError``, ``BadGatewayError``, ``GatewayTimeoutError``, the
"requests-flavoured" ones) live here too, apart from the session, so the error
catalogue can list them without importing the session.
"""

from __future__ import annotations

import email.utils
import functools
import json
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final, cast
from urllib.parse import urlsplit

import requests
from werkzeug.http import HTTP_STATUS_CODES

from gennet_sync.circuit_breaker import CircuitBreakerError, CircuitState
from gennet_sync.exceptions import (
    ConflictError,
    ForbiddenError,
    GenNetException,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
    make_envelope,
    retry_after_seconds,
)

__all__ = [
    "MAX_ERROR_BODY",
    "BadGatewayError",
    "DownstreamError",
    "GatewayTimeoutError",
    "downstream_error_class",
    "error_from_response",
    "host_port",
    "http_status_code",
    "raise_for_error",
    "requests_flavoured",
]

#: Most bytes of an error body read (decoded) to find an envelope: room for a long
#: list of validation errors, not for a downstream that answers with gigabytes.
MAX_ERROR_BODY: Final = 1024 * 1024
_ERROR_BODY_CHUNK: Final = 64 * 1024

#: Statuses whose error class is known when a downstream type is not; others get a
#: :class:`DownstreamError` subclass carrying the status.
_STATUS_CLASSES: Final[Mapping[int, type[GenNetException]]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitError,
    500: InternalServerError,
    502: ServiceUnavailableError,
    503: ServiceUnavailableError,
    504: ServiceUnavailableError,
}

#: ASCII digits only: ``str.isdigit`` also takes "²", which ``float`` refuses.  Ten
#: digits are centuries; more are garbage, not a wait.
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")

#: A ``Retry-After`` further away than this is no wait a server means: ignored.
_RETRY_AFTER_NONSENSE: Final = 366 * 24 * 3600.0

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def _retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delta-seconds or an HTTP date); ``None`` if bad."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment.tzinfo is None:  # an HTTP date is GMT by definition
            return None
        # An HTTP date is wall-clock time, so it is compared with the wall clock.
        seconds = max(0.0, moment.timestamp() - (time.time() if now is None else now))
    return seconds if seconds <= _RETRY_AFTER_NONSENSE else None


def _small_body(headers: Mapping[str, str]) -> bool:
    """Whether a response's ``Content-Length`` says its body is at most :data:`MAX_ERROR_BODY`.

    Such a body is cheap to read to the end, which keeps its connection for the
    next call; a larger one, or one of unknown length, is dropped with it.
    """
    length = headers.get("Content-Length", "")
    return length.isascii() and length.isdigit() and int(length) <= MAX_ERROR_BODY


class DownstreamError(GenNetException):
    """An error answered by a downstream service that has no class of its own here.

    :func:`raise_for_error` raises one when a downstream envelope names a type
    this process does not know (werkzeug's ``MethodNotAllowed``...), or for an
    error status without a class.  It keeps the downstream status, code, type,
    message and metadata, so it renders to the same envelope.  Each status has
    its own subclass (``status_code`` is a class attribute); for a status that has
    a class (404, 503...) that subclass also derives from it, so
    ``except NotFoundError`` still catches a downstream ``NotFound``.

    Example::

        try:
            session.delete("/networks/abc")
        except DownstreamError as error:
            log.warning("%s said %s", error.metadata["service"], error.error_type)

    Args:
        message: The downstream message.
        error_type: The downstream envelope's ``type``; the class name by default.
        code: The downstream envelope's ``code``.
        metadata: The downstream envelope's ``metadata``.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        error_type: str | None = None,
        code: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        # Not super().__init__: for a status with a class, the next class in the MRO
        # is that class (NotFoundError), whose constructor takes other arguments.
        GenNetException.__init__(self, message, code=code, metadata=metadata)
        _fill_from_metadata(self, self.metadata)
        self.error_type: str = error_type or type(self).__name__

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return make_envelope(self.code, self.error_type, self.message, self.metadata)

    def __reduce__(self) -> tuple[Any, ...]:
        status = type(self).status_code
        if downstream_error_class(status) is not type(self):
            return super().__reduce__()
        # The per-status classes are made at run time, so pickle cannot find them
        # by name: the unpickling process makes its own for the status.
        return (_unpickle_downstream_error, (status, self.message), self.__dict__)


def _unpickle_downstream_error(status: int, message: str) -> DownstreamError:
    cls = downstream_error_class(status)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


def _status_phrase(status: int) -> str:
    # werkzeug's phrases, not http.HTTPStatus's: those change between Python
    # versions (413 is "Content Too Large" from 3.13), and both sides of a call
    # must name a status alike.
    return HTTP_STATUS_CODES.get(status) or f"HTTP {status}"


def http_status_code(status: int) -> str:
    """The UPPER_SNAKE code for an HTTP status: 405 → ``METHOD_NOT_ALLOWED``.

    The Flask side names werkzeug's errors with it and :func:`raise_for_error`
    names downstream errors that carry no envelope, so both agree.
    """
    return _NON_ALNUM.sub("_", _status_phrase(status)).strip("_").upper()


def _status_type_name(status: int) -> str:
    """``MethodNotAllowed`` for 405, the way werkzeug names its exceptions."""
    return "".join(word.capitalize() for word in _NON_ALNUM.split(_status_phrase(status)))


@functools.cache
def downstream_error_class(status: int) -> type[DownstreamError]:
    """The :class:`DownstreamError` subclass for HTTP ``status`` (one per status, cached)."""
    known = _STATUS_CLASSES.get(status)
    bases: tuple[type, ...] = (DownstreamError,) if known is None else (DownstreamError, known)
    name = f"Downstream{status}Error" if known is None else f"Downstream{known.__name__}"
    namespace = {
        "status_code": status,
        "code": http_status_code(status),
        "default_message": _status_phrase(status),
        "__module__": __name__,
        "__doc__": f"A downstream error answered with HTTP {status}.",
    }
    return cast(type[DownstreamError], type(name, bases, namespace))


def _exception_classes() -> Iterator[type[GenNetException]]:
    """``GenNetException`` and its subclasses, breadth first (the library's own come first)."""
    queue: list[type[GenNetException]] = [GenNetException]
    seen: set[type[GenNetException]] = set()
    while queue:
        cls = queue.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        if not issubclass(cls, DownstreamError):
            yield cls
        queue.extend(cls.__subclasses__())


def _class_for_type(type_name: str, status: int) -> type[GenNetException] | None:
    for cls in _exception_classes():
        if cls.__name__ == type_name and cls.status_code == status:
            return cls
    return None


def _rebuild(
    cls: type[GenNetException], message: str, code: str, metadata: dict[str, Any]
) -> GenNetException:
    """An instance of ``cls`` holding exactly the downstream message, code and metadata.

    Subclass constructors build their own message from their arguments
    (``NotFoundError(resource_type, resource_id)``); the downstream message must
    be kept as it is, so the base initialiser is called and the attributes the
    subclass constructors set are filled in from the metadata.
    """
    error = cls.__new__(cls)
    GenNetException.__init__(error, message, code=code, metadata=metadata)
    _fill_from_metadata(error, metadata)
    return error


def _fill_from_metadata(error: GenNetException, metadata: Mapping[str, Any]) -> None:
    """Set the attributes ``error``'s class constructor would have set, from its metadata."""
    if isinstance(error, NotFoundError):
        error.resource_type = str(metadata.get("resource_type", ""))
        error.resource_id = metadata.get("resource_id")
    if isinstance(error, ValidationError):
        error.field = metadata.get("field")
        error.errors = metadata.get("errors")
    if isinstance(error, ServiceUnavailableError):
        service = metadata.get("service")
        error.service = service if isinstance(service, str) else None
    if isinstance(error, (ServiceUnavailableError, RateLimitError)):
        # Whatever the downstream put there (a 400-digit number, a string), as the
        # constructors would take it; further away than a year is no wait it means.
        retry_after = retry_after_seconds(metadata.get("retry_after"))
        if retry_after is not None and retry_after <= _RETRY_AFTER_NONSENSE:
            error.retry_after = float(retry_after)
        else:
            error.retry_after = None
    if isinstance(error, DownstreamError):
        error.error_type = type(error).__name__
    if isinstance(error, CircuitBreakerError):
        states = {member.value: member for member in CircuitState}
        state = metadata.get("state")
        error.state = (
            states.get(state, CircuitState.OPEN) if isinstance(state, str) else CircuitState.OPEN
        )


def _error_body(response: requests.Response) -> bytes | None:
    """The body of an error response, or ``None`` when it is over :data:`MAX_ERROR_BODY`.

    A streamed body is read only up to that limit, so a downstream answering a 5xx
    with gigabytes cannot fill this worker's memory.
    """
    # requests reads the whole body into _content at once unless the call streams
    # (a Response built by hand may also just have it set); a stream the caller
    # iterated is consumed with no _content left to read.
    content = response._content
    if isinstance(content, bytes):
        return content if len(content) <= MAX_ERROR_BODY else None
    if getattr(response, "_content_consumed", True) or response.raw is None:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(_ERROR_BODY_CHUNK):
            size += len(chunk)
            if size > MAX_ERROR_BODY:
                return None
            chunks.append(chunk)
    except requests.RequestException:
        return None
    return b"".join(chunks)


def _release(response: requests.Response) -> None:
    """Free the connection of a response nobody will read further.

    A body read to its end already gave its connection back to the pool.  The
    rest of a small body (its ``Content-Length`` within :data:`MAX_ERROR_BODY`) is
    read and dropped so the connection goes back too, instead of a new TCP (and
    TLS) connection for the next call; the rest of a large body, or of one of
    unknown length, is not worth reading: the connection is closed with it.
    """
    # urllib3's drain reads raw bytes, never decoded (a small gzip bomb costs its
    # wire size), and swallows a failure to read: that only costs the connection.
    drain = getattr(response.raw, "drain_conn", None)
    consumed = getattr(response, "_content_consumed", True)
    if not consumed and drain is not None and _small_body(response.headers):
        drain()
    response.close()


def _parse_envelope(response: requests.Response) -> tuple[str, str, str, dict[str, Any]] | None:
    """``(code, type, message, metadata)`` of a gennet_sync error envelope, else ``None``."""
    if "json" not in response.headers.get("Content-Type", "").lower():
        return None
    body = _error_body(response)
    if body is None:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting a few thousand deep
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    code, type_name, message = error.get("code"), error.get("type"), error.get("message")
    metadata = error.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not (
        isinstance(code, str)
        and isinstance(type_name, str)
        and isinstance(message, str)
        and isinstance(metadata, dict)
    ):
        return None
    return code, type_name, message, dict(metadata)


def host_port(url: str) -> str:
    """``host:port`` of ``url`` (``host`` alone without a port), never its credentials.

    Names a breaker and the ``service`` of an error when no service name is given.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[nope": a Location header can say anything
        return ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


def _service_of(response: requests.Response) -> str:
    return host_port(response.url or "") or "downstream"


def error_from_response(
    response: requests.Response, *, service: str | None = None
) -> GenNetException | None:
    """The ``GenNetException`` a downstream error response stands for; ``None`` below 400.

    :func:`raise_for_error` raises it; the mapping is described there.

    Args:
        response: A response from a downstream service.
        service: The service's name for the metadata; the URL's ``host:port`` by default.

    Returns:
        The exception, not raised; ``None`` for a status below 400.
    """
    status = response.status_code
    if status < 400:
        return None
    service = service or _service_of(response)
    header_retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
    envelope = _parse_envelope(response)
    error: GenNetException
    if envelope is not None:
        code, type_name, message, metadata = envelope
        # The innermost service that failed stays named (a 503 that B relays from
        # C keeps service "C"); otherwise the metadata names the service called.
        metadata.setdefault("service", service)
        cls = _class_for_type(type_name, status)
        if cls is None:
            error = _rebuild(downstream_error_class(status), message, code, metadata)
            assert isinstance(error, DownstreamError)
            error.error_type = type_name
        else:
            error = _rebuild(cls, message, code, metadata)
    else:
        metadata = {"service": service, "status_code": status}
        if header_retry_after is not None and status in (429, 502, 503, 504):
            metadata["retry_after"] = header_retry_after
        message = f"Service '{service}' answered {status} {_status_phrase(status)}"
        known = _STATUS_CLASSES.get(status)
        if known is None:
            code = http_status_code(status)
            error = _rebuild(downstream_error_class(status), message, code, metadata)
            assert isinstance(error, DownstreamError)
            error.error_type = _status_type_name(status)
        else:
            error = _rebuild(known, message, known.code, metadata)
    if header_retry_after is not None and isinstance(
        error, (ServiceUnavailableError, RateLimitError)
    ):
        error.retry_after = header_retry_after
    return error


def raise_for_error(response: requests.Response, *, service: str | None = None) -> None:
    """Raise the ``GenNetException`` a downstream error response (>= 400) stands for.

    - A gennet_sync envelope becomes the exception class its ``type`` names (when
      this process has a ``GenNetException`` subclass of that name and status),
      else a :class:`DownstreamError` for its status; code, type, message and
      metadata are kept, and ``metadata["service"]`` is added when absent.
    - Any other 4xx/5xx maps by status (404 → ``NotFoundError``, 502/503/504 →
      ``ServiceUnavailableError``, ...), with ``service`` and ``status_code`` in
      its metadata.
    - The response's ``Retry-After`` becomes the error's ``retry_after``.
    - At most :data:`MAX_ERROR_BODY` bytes of a streamed body are read; a larger
      body is not an envelope.

    A Flask app with :func:`~gennet_sync.error_handler.setup_error_handlers` that
    lets the exception propagate answers its own client with the same envelope.

    Example::

        response = session.get("/networks/abc")
        raise_for_error(response, service="grn")   # NotFoundError, as grn raised it

    Args:
        response: A response from a downstream service.
        service: The service's name for the metadata; the URL's ``host:port`` by default.

    Raises:
        GenNetException: The matching subclass, when the status is 400 or more.
    """
    error = error_from_response(response, service=service)
    if error is not None:
        raise error


class BadGatewayError(ServiceUnavailableError):
    """A downstream answered, but not with a response that could be used (502).

    A redirect loop, a redirect to a URL that cannot be followed, a body that
    cannot be decoded or that ends early: :class:`ServiceSession` raises it with
    ``raise_errors`` (also as the requests exception it replaces, see
    :func:`requests_flavoured`).  A ``ServiceUnavailableError``, so code catching
    that keeps catching it.

    Example::

        raise BadGatewayError("grn sent a corrupt gzip body", service="grn")
    """

    status_code = 502
    code = "BAD_GATEWAY"
    default_message = "Bad gateway"


class GatewayTimeoutError(ServiceUnavailableError):
    """A downstream did not answer in time (504): a timeout or the call's total limit.

    A ``ServiceUnavailableError``, so code catching that keeps catching it.

    Example::

        raise GatewayTimeoutError("grn did not answer in 20 s", service="grn")
    """

    status_code = 504
    code = "GATEWAY_TIMEOUT"
    default_message = "Gateway timeout"


def requests_flavoured(
    ours: type[GenNetException], theirs: type[requests.RequestException]
) -> type[GenNetException]:
    """The class of an error that is both ``ours`` and the requests error ``theirs``.

    Everything :class:`ServiceSession` raises in place of a requests exception
    (a refusal by its breaker, a mapped timeout...) is an instance of such a
    class, so ``except requests.ConnectionError`` in code written for requests
    still catches it, and ``except CircuitBreakerError`` too.  It has the name of
    ``ours`` and renders to the same envelope.  Its ``request`` is the request
    that failed and ``response`` is ``None``; a pickled copy keeps neither.

    Example::

        cls = requests_flavoured(GatewayTimeoutError, requests.ReadTimeout)
        assert issubclass(cls, requests.Timeout) and cls.status_code == 504

    Args:
        ours: A ``GenNetException`` class.
        theirs: The requests exception class it stands in for.

    Returns:
        The class (one per pair, cached).
    """
    cached = _flavoured_classes.get((ours, theirs))
    if cached is not None:
        return cached
    namespace = {
        "__module__": __name__,
        "__qualname__": ours.__qualname__,
        "__doc__": f"{ours.__name__} raised in place of requests' {theirs.__name__}.",
        "__reduce__": _reduce_flavoured,
        "request": None,
        "response": None,
    }
    made = cast(type[GenNetException], type(ours.__name__, (ours, theirs), namespace))
    # Two threads may both make one: the first stored is the one everybody gets.
    return _flavoured_classes.setdefault((ours, theirs), made)


_flavoured_classes: dict[tuple[type[GenNetException], type[Exception]], type[GenNetException]] = {}


def _reduce_flavoured(self: GenNetException) -> tuple[Any, ...]:
    ours, theirs = type(self).__bases__
    # A request or response may hold a generator or a socket: they are not pickled.
    state = {k: v for k, v in self.__dict__.items() if k not in ("request", "response")}
    return (_restore_flavoured, (ours, theirs, self.message), state)


def _restore_flavoured(
    ours: type[GenNetException], theirs: type[requests.RequestException], message: str
) -> GenNetException:
    cls = requests_flavoured(ours, theirs)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


def _flavour(
    error: GenNetException,
    theirs: type[requests.RequestException],
    request: requests.PreparedRequest | None,
) -> GenNetException:
    """``error`` as an instance of ``requests_flavoured(type(error), theirs)``."""
    cls = requests_flavoured(type(error), theirs)
    flavoured = cls.__new__(cls)
    Exception.__init__(flavoured, *error.args)
    flavoured.__dict__.update(error.__dict__)
    flavoured.request = request  # type: ignore[attr-defined]
    flavoured.response = None  # type: ignore[attr-defined]
    return flavoured

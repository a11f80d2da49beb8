"""Calls to other services: a ``requests.Session`` with the resilience built in.

:class:`ServiceSession` is used wherever a ``requests.Session`` is, and adds what
every service-to-service call needs:

- relative URLs joined to ``base_url`` (absolute URLs are used as given);
- a default ``(connect, read)`` timeout on every request that passes none, and a
  total time limit per call that a trickling server cannot outlast;
- the service's circuit breaker from the process-wide registry: connection
  errors, timeouts, 5xx answers and garbage (redirect loops, undecodable bodies)
  are failures, 4xx answers, proxy failures and untrusted certificates never are,
  and an open breaker refuses the call with ``CircuitBreakerError`` (also a
  ``requests.ConnectionError``) before any I/O;
- retries through urllib3's ``Retry`` on the mounted adapters: idempotent
  methods only, connection errors and 502/503/504, exponential backoff with
  jitter, a sane ``Retry-After`` honoured up to a cap, never for a body that
  cannot be sent twice;
- a connection pool sized for threaded workers, never shared with a forked child;
- ``X-Request-ID`` of the request being served forwarded on every call, and a
  ``User-Agent`` naming gennet_sync and the calling service;
- the proxy environment read once per host, not on every call (requests' largest
  per-call cost: a ServiceSession call costs less CPU than a plain Session's);
- optionally, gzip-compressed request bodies and errors raised as the
  ``GenNetException`` the downstream service raised (:func:`raise_for_error`).

The breaker, the default timeout and the error mapping live in :meth:`send`, which
``Session.request()``, every verb and every redirect hop go through.  One logical
call, with its urllib3 retries and redirect hops, is one breaker outcome.  A
redirect to another host ends the service's part of the call (its answer, the
redirect, is a success); that host's answers are never counted against it.
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import enum
import functools
import gzip
import heapq
import itertools
import json
import logging
import math
import os
import re
import socket
import ssl
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, TypeAlias, cast
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.sessions import merge_setting as _untyped_merge_setting
from requests.utils import get_environ_proxies
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.poolmanager import ProxyManager
from urllib3.util import make_headers, parse_url
from urllib3.util.retry import Retry
from werkzeug.http import HTTP_STATUS_CODES

from gennet_sync import tracing as _tracing
from gennet_sync.bulkhead import Bulkhead, get_bulkhead
from gennet_sync.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    get_circuit_breaker,
)
from gennet_sync.circuit_breaker import registry as _registry
from gennet_sync.context import REQUEST_ID_HEADER, current_request_id
from gennet_sync.deadline import (
    DEADLINE_HEADER,
    FORWARD_MARGIN,
    format_budget,
    forwarded_budget,
    parse_budget,
    time_left,
)
from gennet_sync.exceptions import (
    BulkheadFullError,
    ConflictError,
    DeadlineExceededError,
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
from gennet_sync.retry_budget import (
    DEFAULT_RETRY_BUDGET,
    RetryBudget,
    RetryBudgetConfig,
    get_retry_budget,
)

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection
    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

    from gennet_sync.circuit_breaker import CallPermit

__all__ = [
    "ACCEPT_ENCODING",
    "DEFAULT_COMPRESS_MIN_SIZE",
    "DEFAULT_FAILURE_STATUSES",
    "DEFAULT_MAX_HOST_BREAKERS",
    "DEFAULT_POOL_CONNECTIONS",
    "DEFAULT_POOL_MAXSIZE",
    "DEFAULT_RETRIES",
    "DEFAULT_RETRY_AFTER_MAX",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TOTAL_TIMEOUT",
    "MAX_ERROR_BODY",
    "BadGatewayError",
    "DownstreamError",
    "GatewayTimeoutError",
    "ServiceRetry",
    "ServiceSession",
    "TimeoutValue",
    "downstream_error_class",
    "error_from_response",
    "host_port",
    "http_status_code",
    "make_retry",
    "raise_for_error",
    "requests_flavoured",
]

logger = logging.getLogger(__name__)

#: A requests timeout: seconds for both phases, ``(connect, read)``, or ``None`` (wait forever).
TimeoutValue: TypeAlias = float | tuple[float | None, float | None] | None

#: ``(connect, read)`` seconds.  The connect timeout sits just above the 3 s TCP
#: retransmission step; the read timeout stays below gunicorn's default 30 s
#: worker timeout, so a hung downstream never gets the calling worker killed.
DEFAULT_TIMEOUT: Final[tuple[float, float]] = (3.05, 20.0)

#: Longest a call to a named service takes in all: connecting, every read, the
#: retries and their waits, and the body (unless the caller streams it).  Under
#: gunicorn's default 30 s worker timeout, with time left to answer the client.
DEFAULT_TOTAL_TIMEOUT: Final = 25.0

#: Per-host breakers a session without a service keeps; the least recently used
#: goes first, so a crawler-like session cannot grow the registry without end.
DEFAULT_MAX_HOST_BREAKERS: Final = 512

#: Responses the breaker counts as failures: the service is broken or unreachable.
#: 4xx answers are the caller's problem and never count; nor does 501.
DEFAULT_FAILURE_STATUSES: Final = frozenset({500, 502, 503, 504})

#: Connections kept per host: room for a gthread worker's threads (and then some),
#: so 32 threads on one session never see "Connection pool is full".
DEFAULT_POOL_MAXSIZE: Final = 64

#: Hosts whose pools are kept (requests' default).
DEFAULT_POOL_CONNECTIONS: Final = 10

#: Longest ``Retry-After`` (seconds) a retry waits for; a sync worker must not sleep for minutes.
DEFAULT_RETRY_AFTER_MAX: Final = 5

#: Retries of one call by default (connection errors and 502/503/504, idempotent methods).
DEFAULT_RETRIES: Final = 2

#: Request bodies at least this large are gzipped when ``compress_requests`` is on.
DEFAULT_COMPRESS_MIN_SIZE: Final = 1024

#: Most bytes of an error body read (decoded) to find an envelope: room for a long
#: list of validation errors, not for a downstream that answers with gigabytes.
MAX_ERROR_BODY: Final = 1024 * 1024
_ERROR_BODY_CHUNK: Final = 64 * 1024

#: requests' merge of a call's setting over the session's (untyped in its stubs).
_merge_setting = cast(Callable[[Any, Any], Any], _untyped_merge_setting)

#: Hosts whose proxy environment a session keeps (see ``merge_environment_settings``).
_ENVIRON_PROXIES_KEPT: Final = 256

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
_ABSOLUTE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]+")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")

try:
    _VERSION = version("gennet_sync")
except PackageNotFoundError:  # a source tree that was never installed
    _VERSION = "0.0.0"

#: The codings urllib3 decodes itself: gzip and deflate always, br and zstd when
#: brotli and zstandard are installed.  Advertising more would get bodies back
#: that nothing here can read.
ACCEPT_ENCODING: Final = make_headers(accept_encoding=True)["accept-encoding"].replace(",", ", ")


class _Call:
    """A logical call in progress: whose it is, where it went first, its permit, its
    deadline, whether its body can be sent again and whether it has been redirected."""

    __slots__ = (
        "deadline",
        "failed_attempt",
        "permit",
        "redirected",
        "replayable",
        "retry_charged",
        "session",
        "url",
    )

    def __init__(
        self,
        session: ServiceSession,
        url: str,
        permit: CallPermit | _NoPermit,
        deadline: _Deadline | None,
        *,
        replayable: bool,
    ) -> None:
        self.session = session
        self.url = url
        self.permit = permit
        self.deadline = deadline
        self.replayable = replayable
        self.redirected = False
        #: An attempt the service failed (an error status, a refused or reset
        #: connection) came before: what cuts the call short later still counts.
        self.failed_attempt = False
        #: A retry was taken from the retry budget and has not been sent yet.
        self.retry_charged = False


#: The call in progress in this context: its deadline and whether its body can be
#: sent again, for the connections and retries below it.
_call_in_progress: ContextVar[_Call | None] = ContextVar(
    "gennet_sync_call_in_progress", default=None
)

#: The call whose redirects requests is following (set only while
#: ``resolve_redirects`` prepares and sends one hop): that send is the hop, which
#: reuses the call's permit.  A call a hook makes is never a hop, even on the same
#: session: it is a call of its own, with its own permit and error mapping.
_redirect_of: ContextVar[_Call | None] = ContextVar("gennet_sync_redirect_of", default=None)


class _Default(enum.Enum):
    """The type of :data:`_DEFAULT`: "the caller said nothing", unlike ``None``."""

    TOKEN = 0


_DEFAULT: Final = _Default.TOKEN


class CallObserver(Protocol):
    """Told of every :class:`ServiceSession` call and retry (``gennet_sync.metrics``).

    Set as :data:`call_observer`; ``None`` (the default) costs each call one test.
    """

    def observe(
        self, session: ServiceSession, request: requests.PreparedRequest, send: Callable[[], Any]
    ) -> requests.Response:
        """Run ``send`` (the whole call) and return its response, noting how it ended."""
        ...

    def retried(self, call: _Call | None) -> None:
        """A retry of ``call`` is about to be made."""
        ...


#: The observer of every call, or ``None``; set by ``gennet_sync.metrics``.
call_observer: CallObserver | None = None

#: The session whose call the observer is watching in this context: the redirect
#: hops of that call come back through send() and are part of it.
_observed_by: ContextVar[ServiceSession | None] = ContextVar("gennet_sync_observed", default=None)


def _observed_send(
    observer: CallObserver,
    session: ServiceSession,
    request: requests.PreparedRequest,
    kwargs: dict[str, Any],
) -> requests.Response:
    token = _observed_by.set(session)
    try:
        # ServiceSession.send itself: a subclass overriding send() must run once, not twice.
        return observer.observe(
            session, request, lambda: ServiceSession.send(session, request, **kwargs)
        )
    finally:
        _observed_by.reset(token)


#: The request whose ``send`` is running inside its session's fallback wrapper.
_fallback_for: ContextVar[requests.PreparedRequest | None] = ContextVar(
    "gennet_sync_fallback_for", default=None
)

#: What ``ServiceSession(fallback=)`` takes: called with the request and the error
#: raised (or the failure response); its response, if any, is the call's answer.
Fallback: TypeAlias = Callable[
    [requests.PreparedRequest, BaseException | None, "requests.Response | None"],
    "requests.Response | None",
]

#: A ``total_timeout`` given to :meth:`ServiceSession.request` for the call it makes.
_call_total_timeout: ContextVar[float | _Default | None] = ContextVar(
    "gennet_sync_call_total_timeout", default=_DEFAULT
)


# --------------------------------------------------------------------------- retries


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


class ServiceRetry(Retry):
    """urllib3's ``Retry`` made safe for a synchronous worker.

    Three differences from ``Retry``:

    - a ``Retry-After`` longer than ``retry_after_max`` is not waited for at all:
      the retries end and the response comes back at once, ``Retry-After`` intact,
      for the caller to pass on (a shorter one is slept, as usual);
    - only the statuses in ``status_forcelist`` are retried: a 413 or 429 (or a
      503 left out of the list) carrying ``Retry-After`` is not, unlike with
      ``Retry``, whose ``RETRY_AFTER_STATUS_CODES`` would retry it at each call of
      every worker behind an overloaded service;
    - a read timeout is never retried: the server got the request and is slow,
      and trying again would multiply the time the worker waits.  A connection
      dropped mid-exchange is still retried (``read`` counts those), for
      idempotent methods only.

    A ``Retry-After`` that is neither a sane number of seconds (at most ten
    digits, under a year) nor an HTTP date is ignored, as if absent: the usual
    backoff applies.  A retried response's body is drained to reuse its connection
    only when it is small; a larger one (or one of unknown size) is dropped with
    its connection.  Within a :class:`ServiceSession` call, a wait that would end
    past the call's total time limit is not started: the call times out instead.

    Example::

        retry = ServiceRetry(total=3, connect=3, read=1, status=3,
                             status_forcelist={502, 503, 504}, backoff_factor=0.1,
                             backoff_jitter=0.1, retry_after_max=5, raise_on_status=False)
        session = ServiceSession(base_url="http://grn:8000", retries=retry)
    """

    #: No status is retried for carrying ``Retry-After``; ``status_forcelist`` decides.
    RETRY_AFTER_STATUS_CODES: frozenset[int] = frozenset()

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        seconds = _retry_after_seconds(response.headers.get("Retry-After"))
        return None if seconds is None else min(seconds, self.retry_after_max)

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        # As urllib3 waits (Retry-After when there is one, else the backoff), but
        # the wait checked against the call's deadline is the one slept: a jittered
        # backoff drawn twice could pass the check and then sleep past the limit.
        wait = None
        if response is not None and self.respect_retry_after_header:
            wait = self.get_retry_after(response)
        if not wait:
            wait = self.get_backoff_time()
        call = _call_in_progress.get()
        deadline = None if call is None else call.deadline
        if deadline is not None and wait >= deadline.remaining():
            raise _TotalTimeoutExceeded(deadline)
        if wait > 0:
            time.sleep(wait)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> ServiceRetry:
        if isinstance(error, ReadTimeoutError):
            raise error.with_traceback(_stacktrace)
        if response is not None and self.respect_retry_after_header:
            wait = _retry_after_seconds(response.headers.get("Retry-After"))
            if wait is not None and wait > self.retry_after_max:
                reason = ResponseError(
                    f"Retry-After of {wait:.0f} s is longer than retry_after_max "
                    f"({self.retry_after_max} s)"
                )
                raise MaxRetryError(_pool, url or "", reason)  # type: ignore[arg-type]
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        call = _call_in_progress.get()
        if call is not None and _service_failed(call, response, error):
            call.failed_attempt = True
        deadline = None if call is None else call.deadline
        if deadline is not None and deadline.inherited and deadline.too_late_to_retry():
            late = error if error is not None else ResponseError("too little time left to retry")
            raise MaxRetryError(_pool, url or "", late)  # type: ignore[arg-type]
        budget = None if call is None else call.session._retry_budget
        if budget is not None:
            if not budget.try_retry():
                # The service's retry budget is spent: this failure is the call's answer.
                spent = error if error is not None else ResponseError("retry budget spent")
                raise MaxRetryError(_pool, url or "", spent)  # type: ignore[arg-type]
            # Given back if the retry is never sent (its wait or the deadline ends the call).
            assert call is not None
            call.retry_charged = True
        _tracing.count_resend()
        if call_observer is not None:
            call_observer.retried(call)
        if response is not None:
            _drop_if_large(response)
        return retry


def _as_service_retry(retries: int | Retry) -> Retry:
    """The retry policy a session mounts for its ``retries`` argument.

    A plain urllib3 ``Retry`` becomes a :class:`ServiceRetry` with every setting it
    has (``total``, ``status_forcelist``, ``allowed_methods``, the backoff...):
    otherwise its waits would ignore the call's total time limit, and a
    ``Retry-After`` of hours (urllib3's own cap is six) would block the worker.
    Its ``retry_after_max`` becomes ours unless it set one of its own.  A subclass
    of ``Retry`` is the caller's own policy and is mounted as it is.
    """
    if not isinstance(retries, Retry):
        return make_retry(retries)
    if type(retries) is not Retry:
        return retries
    converted = copy.copy(retries)  # the caller's object stays as it was
    converted.__class__ = ServiceRetry
    if converted.retry_after_max == Retry.DEFAULT_RETRY_AFTER_MAX:
        converted.retry_after_max = DEFAULT_RETRY_AFTER_MAX
    return converted


def _small_body(headers: Mapping[str, str]) -> bool:
    """Whether a response's ``Content-Length`` says its body is at most :data:`MAX_ERROR_BODY`.

    Such a body is cheap to read to the end, which keeps its connection for the
    next call; a larger one, or one of unknown length, is dropped with it.
    """
    length = headers.get("Content-Length", "")
    return length.isascii() and length.isdigit() and int(length) <= MAX_ERROR_BODY


def _drop_if_large(response: BaseHTTPResponse) -> None:
    """Close a response about to be retried unless its body is small.

    urllib3 reads a retried response's whole body to reuse its connection: a 503
    with a gigabyte body would be read into memory.  Closing drops the connection
    instead, and leaves urllib3 nothing to read.
    """
    if not _small_body(response.headers):
        response.close()


def make_retry(
    retries: int,
    *,
    status_forcelist: Collection[int] = (502, 503, 504),
    allowed_methods: Collection[str] = Retry.DEFAULT_ALLOWED_METHODS,
    backoff_factor: float = 0.1,
    backoff_max: float = 2.0,
    backoff_jitter: float = 0.1,
    retry_after_max: int = DEFAULT_RETRY_AFTER_MAX,
) -> ServiceRetry:
    """The :class:`ServiceRetry` a session builds from ``retries=<int>``.

    Up to ``retries`` retries of connection errors and ``status_forcelist``
    answers, one retry of a connection dropped mid-exchange, none of a read
    timeout; only ``allowed_methods`` (the idempotent ones) are retried.  The first
    retry is immediate, then ``backoff_factor * 2**n`` seconds plus up to
    ``backoff_jitter``, at most ``backoff_max``.  The final response comes back
    whatever its status (``raise_on_status=False``).

    Example::

        session = ServiceSession(base_url="http://grn:8000", retries=make_retry(4))

    Args:
        retries: Retries of one call; 0 for none.
        status_forcelist: Statuses retried (for ``allowed_methods``).
        allowed_methods: Methods retried; the idempotent ones by default.
        backoff_factor: Seconds of the first backoff step (doubled after each retry).
        backoff_max: Longest backoff, in seconds.
        backoff_jitter: Most random seconds added to each backoff.
        retry_after_max: Longest ``Retry-After`` waited for; a longer one ends the
            retries and returns the response at once.

    Returns:
        The retry policy, to pass as ``ServiceSession(retries=...)``.

    Raises:
        ValueError: When ``retries`` is negative.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    return ServiceRetry(
        total=retries,
        connect=retries,
        read=min(retries, 1),
        status=retries,
        other=0,
        redirect=False,
        status_forcelist=frozenset(status_forcelist),
        allowed_methods=frozenset(m.upper() for m in allowed_methods),
        backoff_factor=backoff_factor,
        backoff_max=backoff_max,
        backoff_jitter=backoff_jitter,
        retry_after_max=retry_after_max,
        raise_on_status=False,
        respect_retry_after_header=True,
    )


# --------------------------------------------------------------------------- errors


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


class _TotalTimeoutExceeded(Exception):
    """Raised inside a call (not by requests) when its total time limit has passed.

    Not a urllib3 or requests exception, so neither retries it nor wraps it: it
    comes straight back to :meth:`ServiceSession.send`.
    """

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__(f"the call's total time limit of {deadline.seconds:g} s has passed")


class _Failure(NamedTuple):
    """What a transport failure means: the error raised for it, why, and whether the
    service's breaker counts it."""

    error_class: type[ServiceUnavailableError]
    reason: str
    counts: bool


_TOTAL_TIMEOUT = _Failure(GatewayTimeoutError, "total_timeout", counts=True)
# The deadline in force (of the request being served, or a deadline_scope) cut the
# call off before the session's own limits would have: the caller chose that
# budget, and a healthy service cannot answer within any budget a client sends.
# Not counted (else any client could open a shared breaker with a tiny
# Request-Timeout); a failure the service showed before the cut still is.
_DEADLINE = _Failure(DeadlineExceededError, "deadline_exceeded", counts=False)
_TIMEOUT = _Failure(GatewayTimeoutError, "timeout", counts=True)
_UNREACHABLE = _Failure(ServiceUnavailableError, "connection_error", counts=True)
_RETRIES_EXHAUSTED = _Failure(ServiceUnavailableError, "retries_exhausted", counts=True)
_BAD_RESPONSE = _Failure(BadGatewayError, "bad_response", counts=True)
_REDIRECT_LOOP = _Failure(BadGatewayError, "redirect_loop", counts=True)
_BAD_REDIRECT = _Failure(BadGatewayError, "bad_redirect", counts=True)
# A dead or refusing proxy says nothing about the service behind it; a breaker for
# the proxy would refuse calls to every host it serves, a worse outage than the
# proxy's own.  Not counted at all.
_PROXY = _Failure(ServiceUnavailableError, "proxy_error", counts=False)
# A certificate that does not verify is configuration (a CA bundle, a host name),
# not an outage: retrying will not fix it, and an open breaker would hide the real
# error behind "circuit open".  Other TLS failures (a handshake cut off) count.
_TLS_VERIFICATION = _Failure(ServiceUnavailableError, "tls_verification", counts=False)

_MESSAGES: Final[Mapping[str, str]] = {
    "total_timeout": "Service '{service}' did not answer within the call's total time limit",
    "deadline_exceeded": "Service '{service}' did not answer before the request's deadline",
    "timeout": "Service '{service}' did not answer in time",
    "connection_error": "Service '{service}' could not be reached",
    "retries_exhausted": "Service '{service}' kept failing after retries",
    "bad_response": "Service '{service}' sent a response that could not be read",
    "redirect_loop": "Service '{service}' redirected too many times",
    "bad_redirect": "Service '{service}' redirected to a URL that cannot be followed",
    "proxy_error": "Service '{service}' could not be reached through the proxy",
    "tls_verification": "Service '{service}' did not present a certificate that verifies",
}


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps: causes, contexts, and urllib3's ``reason``/args."""
    pending, seen = [error], set[int]()
    while pending and len(seen) < 32:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(inner, BaseException):
                pending.append(inner)
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))


def _classify(error: BaseException, call: _Call) -> _Failure | None:
    """What a failure of ``call`` means for the caller and the breaker; ``None``: not
    a failure of the service (a bad URL given by the caller, a hook that raised)."""
    if isinstance(error, GenNetException):  # already ours: a refusal, a mapped error
        return None
    if isinstance(error, _TotalTimeoutExceeded) or (
        call.deadline is not None and call.deadline.expired
    ):
        return (
            _DEADLINE if call.deadline is not None and call.deadline.inherited else _TOTAL_TIMEOUT
        )
    if not isinstance(error, requests.RequestException):
        return None
    if isinstance(error, requests.exceptions.ProxyError):
        return _PROXY
    if isinstance(error, requests.exceptions.SSLError) and any(
        isinstance(inner, ssl.SSLCertVerificationError) for inner in _causes(error)
    ):
        return _TLS_VERIFICATION
    if isinstance(error, requests.Timeout) or any(
        isinstance(inner, ReadTimeoutError) for inner in _causes(error)
    ):  # requests raises a body read that timed out as a ConnectionError
        connect = isinstance(error, requests.ConnectTimeout)
        return _DEADLINE if _lowered_by_deadline(call, connect=connect) else _TIMEOUT
    if isinstance(
        error, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)
    ):
        return _BAD_RESPONSE
    if isinstance(error, requests.TooManyRedirects):
        return _REDIRECT_LOOP
    if call.redirected and isinstance(
        error,
        (
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidHeader,
        ),
    ):
        return _BAD_REDIRECT
    if isinstance(error, requests.exceptions.RetryError):
        return _RETRIES_EXHAUSTED
    if isinstance(error, requests.ConnectionError):
        return _UNREACHABLE
    return None


def _lowered_by_deadline(call: _Call, *, connect: bool) -> bool:
    """Whether the deadline in force cut the call's connect (or read) timeout below
    the session's own: a timeout of that part is then the deadline's doing."""
    deadline = call.deadline
    if deadline is None or not deadline.inherited:
        return False
    return deadline.lowered[0] if connect else deadline.lowered[1]


def _service_failed(
    call: _Call, response: BaseHTTPResponse | None, error: Exception | None
) -> bool:
    """Whether an attempt about to be retried failed through the service's fault."""
    if call.deadline is not None and call.deadline.expired:
        # The limit cut its connection: the service's failure under the session's
        # own total limit, the caller's choice under the deadline in force.
        return not call.deadline.inherited
    if response is not None:
        return response.status in call.session.failure_statuses
    if isinstance(error, NewConnectionError):  # refused, unreachable (a ConnectTimeoutError)
        return True
    if isinstance(error, ConnectTimeoutError):
        return not _lowered_by_deadline(call, connect=True)
    return isinstance(error, ProtocolError)  # reset, closed before answering


def _lowered(own: TimeoutValue, capped: TimeoutValue) -> tuple[bool, bool]:
    """Which of the (connect, read) parts of ``own`` capping made shorter."""
    own_parts = own if isinstance(own, tuple) else (own, own)
    capped_parts = capped if isinstance(capped, tuple) else (capped, capped)
    return (
        own_parts[0] is None or (capped_parts[0] or 0) < own_parts[0],
        own_parts[1] is None or (capped_parts[1] or 0) < own_parts[1],
    )


def _transport_error(
    error: BaseException,
    failure: _Failure,
    service: str,
    request: requests.PreparedRequest,
) -> GenNetException:
    """The error raised with ``raise_errors`` for ``error``: ours and the requests one."""
    mapped = failure.error_class(
        _MESSAGES[failure.reason].format(service=service),
        service=service,
        metadata={"reason": failure.reason},
    )
    theirs = type(error) if isinstance(error, requests.RequestException) else None
    if theirs is None or (
        failure in (_TOTAL_TIMEOUT, _DEADLINE) and not issubclass(theirs, requests.Timeout)
    ):
        theirs = requests.exceptions.ReadTimeout  # the limit cut off a read
    return _flavour(mapped, theirs, request)


# --------------------------------------------------------------------------- the session


class _NoPermit:
    """Stands in for a breaker permit when the session has no breaker."""

    done: Final = True

    def success(self) -> None:
        pass

    def failure(self, error: BaseException | None = None) -> None:
        pass

    def ignore(self) -> None:
        pass


_NO_PERMIT: Final = _NoPermit()

#: Errors in what the caller asked for, raised before anything is sent (or, after a
#: redirect without ``raise_errors``, as requests raises them): no fallback.
_CALLER_ERRORS: Final = (
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidJSONError,
)


# --------------------------------------------------------------------------- total time limit


class _Deadline:
    """A call's total time limit, and the connection its current attempt has checked out."""

    __slots__ = (
        "at",
        "attempt_started",
        "callers_budget",
        "callers_header",
        "connection",
        "expired",
        "finished",
        "forward",
        "inherited",
        "lowered",
        "seconds",
    )

    def __init__(self, seconds: float, *, inherited: bool = False, forward: bool = False) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.connection: _WatchedHTTPConnection | None = None
        self.expired = False
        self.finished = False
        #: The limit is the deadline of the request being served, not the session's own.
        self.inherited = inherited
        #: Each attempt tells the service the time left (``Request-Timeout``).
        self.forward = forward
        self.attempt_started = time.monotonic()
        #: Which of the (connect, read) timeouts the limit made shorter than the session's.
        self.lowered = (False, False)
        #: The ``Request-Timeout`` the caller put on the request itself, and its seconds.
        self.callers_header: str | None = None
        self.callers_budget: float | None = None

    def budget(self, remaining: float | None = None) -> str:
        """The ``Request-Timeout`` an attempt sends now (``remaining`` seconds left,
        read from the clock when not given): what is left less the margin, or the
        caller's own value when that is smaller."""
        ours = (self.remaining() if remaining is None else remaining) - FORWARD_MARGIN
        if self.callers_budget is not None and self.callers_budget <= ours:
            assert self.callers_header is not None
            return self.callers_header
        return format_budget(ours)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def too_late_to_retry(self) -> bool:
        """Less time is left than the failed attempt took: a retry would fail the same way."""
        now = time.monotonic()
        return self.at - now < now - self.attempt_started


class _Watchdog:
    """One daemon thread that cuts off calls still running at their deadline.

    A per-read timeout cannot stop a server that sends a byte just before each
    read would time out; only closing the socket can.  The thread shuts down the
    socket of the connection the call is using; the blocked read returns at once
    and the call fails with a timeout.  Registering a call costs a heap push, not
    a thread or a timer of its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._finished_in_heap = 0
        self._thread: threading.Thread | None = None

    def watch(self, deadline: _Deadline) -> None:
        with self._lock:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gennet-sync-call-deadlines", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is deadline:  # earlier than what the thread waits for
                self._lock.notify()

    def attach(self, deadline: _Deadline, connection: _WatchedHTTPConnection) -> bool:
        """Make ``connection`` the one to cut at the deadline; ``False`` once it has passed."""
        with self._lock:
            if deadline.expired:
                return False
            _unlink(deadline)
            if connection.deadline is not None:  # never released through its pool
                _unlink(connection.deadline)
            deadline.connection = connection
            connection.deadline = deadline
            return True

    def detach(self, connection: _WatchedHTTPConnection) -> None:
        """``connection`` goes back to its pool: no deadline may cut it from now on.

        Another thread can take it from the pool at once, for a call of its own; the
        call that used it may still run (a hook, a redirect, a retry's wait).
        """
        # Only the thread holding the connection links it, so seeing None here is
        # final; a link seen is rechecked under the lock (the watchdog may cut it).
        if connection.deadline is None:
            return
        with self._lock:
            if connection.deadline is not None:
                _unlink(connection.deadline)

    def finish(self, deadline: _Deadline) -> None:
        with self._lock:
            deadline.finished = True
            _unlink(deadline)
            self._finished_in_heap += 1
            # Finished calls are left in the heap until their time comes; a busy
            # process would keep thousands, so they are swept out now and then.
            if self._finished_in_heap > 1024 and self._finished_in_heap * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].finished]
                heapq.heapify(self._heap)
                self._finished_in_heap = 0

    def _run(self) -> None:
        with self._lock:
            while True:
                if not self._heap:
                    self._lock.wait()
                    continue
                at, _, deadline = self._heap[0]
                if deadline.finished:
                    heapq.heappop(self._heap)
                    self._finished_in_heap -= 1
                    continue
                wait = at - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
                deadline.expired = True
                if deadline.connection is not None:
                    _cut(deadline.connection)
                    _unlink(deadline)

    def _after_fork(self) -> None:
        # The thread does not exist in a child; a new one starts with its first call.
        self._lock = threading.Condition(threading.Lock())
        self._heap = []
        self._finished_in_heap = 0
        self._thread = None


def _unlink(deadline: _Deadline) -> None:
    """Part ``deadline`` from its connection, both ways (the watchdog's lock held)."""
    connection = deadline.connection
    if connection is not None:
        deadline.connection = None
        if connection.deadline is deadline:
            connection.deadline = None


def _cut(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is None:
        return
    # socket.socket's own shutdown, not SSLSocket's: that one also drops its TLS
    # object, under the feet of the thread reading from it.  OSError: already closed.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_WATCHDOG: Final = _Watchdog()


def _capped(timeout: TimeoutValue, limit: float) -> TimeoutValue:
    """``timeout`` with no part longer than ``limit`` (``None``: wait forever, capped too)."""
    if isinstance(timeout, tuple):
        connect, read = timeout
        return (
            limit if connect is None else min(connect, limit),
            limit if read is None else min(read, limit),
        )
    return limit if timeout is None else min(timeout, limit)


class _WatchedHTTPConnection(HTTPConnection):
    """An HTTP connection that tells the call in progress it carries its request.

    It stays linked to that call's deadline until its pool takes it back.
    """

    #: The deadline of the call that has it checked out (the watchdog's lock guards it).
    deadline: _Deadline | None = None

    def request(
        self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any
    ) -> None:
        deadline = _attach_to_call(self)
        if deadline is not None and deadline.forward and headers is not None:
            # Per attempt: a retry tells the service what is left by then.  With
            # nothing left to give, the attempt is not sent: its answer could not
            # come back in time.
            remaining = deadline.remaining()
            if forwarded_budget(remaining) == "0":
                raise _TotalTimeoutExceeded(deadline)
            if DEADLINE_HEADER not in headers:
                # Not the call's own request, which the call restores when it ends
                # (a proxy's copy, a caller's transport): a copy, so that nothing
                # keeps this attempt's value, stale when sent again.
                headers = headers.copy()
            headers[DEADLINE_HEADER] = deadline.budget(remaining)
        call = _call_in_progress.get()
        if call is not None:
            call.retry_charged = False  # sent: the retry taken from the budget is spent
        super().request(method, url, body, headers, **kwargs)

    def connect(self) -> None:
        _attach_to_call(self)
        super().connect()


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    """The HTTPS counterpart of :class:`_WatchedHTTPConnection` (its TLS handshake,
    made before the request, is watched too)."""


def _attach_to_call(connection: _WatchedHTTPConnection) -> _Deadline | None:
    call = _call_in_progress.get()
    deadline = None if call is None else call.deadline
    if deadline is not None:
        if not _WATCHDOG.attach(deadline, connection):
            raise _TotalTimeoutExceeded(deadline)  # a retry after the limit: not sent
        deadline.attempt_started = time.monotonic()
    return deadline


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection

    def _put_conn(self, conn: BaseHTTPConnection | None) -> None:
        # Before the pool has it: from then on another thread's call may use it.
        if isinstance(conn, _WatchedHTTPConnection):
            _WATCHDOG.detach(conn)
        super()._put_conn(conn)

    def __str__(self) -> str:  # error messages name the pool as urllib3 does
        return f"HTTPConnectionPool(host={self.host!r}, port={self.port!r})"


class _WatchedHTTPSConnectionPool(_WatchedHTTPConnectionPool, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection

    def __str__(self) -> str:
        return f"HTTPSConnectionPool(host={self.host!r}, port={self.port!r})"


_WATCHED_POOLS: Final = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}

#: What a request whose body cannot be sent twice gets instead of the session's retries.
_NO_RETRIES: Final = Retry(0, read=False, redirect=False, raise_on_status=False)


class _ServiceAdapter(HTTPAdapter):
    """requests' adapter with connections the deadline watchdog can cut, and no
    retries for a call whose body cannot be sent again."""

    @property
    def max_retries(self) -> Retry:
        call = _call_in_progress.get()
        if call is not None and not call.replayable:
            return _NO_RETRIES
        return self._max_retries

    @max_retries.setter
    def max_retries(self, retries: Retry) -> None:
        self._max_retries = retries

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is ProxyManager:  # not a SOCKS manager: its pools are its own
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


def _replayable(body: object) -> bool:
    """Whether urllib3 can send ``body`` again, byte for byte, on a retry.

    Bytes can; a file can when it is seekable and tells its position (urllib3
    rewinds it there); a generator, an iterator or a pipe cannot: a retry would
    send what is left of it, usually nothing.
    """
    if body is None or isinstance(body, (bytes, bytearray, str, memoryview)):
        return True
    if not hasattr(body, "read"):
        return False
    try:
        body.tell()  # type: ignore[attr-defined]
        return bool(body.seekable())  # type: ignore[attr-defined]
    except (AttributeError, OSError, TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- per-host breakers

#: Guards every session's per-host breakers and their removal from the registry.
_host_breakers_lock = threading.Lock()


def _breaker_used_elsewhere(name: str, breaker: CircuitBreaker, session: ServiceSession) -> bool:
    """Whether a live session other than ``session`` goes through ``breaker``."""
    for other in list(_live_sessions):
        if other is session:
            continue
        if other._breaker is breaker or other._per_host_breakers.get(name) is breaker:
            return True
    return False


def _release_host_breaker(name: str, breaker: CircuitBreaker, session: ServiceSession) -> None:
    """Forget a breaker ``session`` dropped, unless another session still uses it.

    Its state goes with it (with a shared storage it is read back by the next
    breaker of that name).  A breaker fetched from the registry by other code is
    not known here: that code keeps its object, the registry makes a new one.
    """
    if not _breaker_used_elsewhere(name, breaker, session):
        _registry.remove(name, breaker=breaker)


#: Sessions alive in this process; a forked child drops their inherited connections.
_live_sessions: weakref.WeakSet[ServiceSession] = weakref.WeakSet()


def _drop_inherited_connections() -> None:
    """In a forked child: close the parent's pooled sockets, so none is ever shared.

    Closing the child's copy of a socket leaves the parent's connection open; the
    pools fill again with the child's own connections on its next calls.
    """
    global _host_breakers_lock  # noqa: PLW0603
    _host_breakers_lock = threading.Lock()
    _WATCHDOG._after_fork()
    for session in list(_live_sessions):
        for adapter in list(session.adapters.values()):
            adapter.close()


if hasattr(os, "register_at_fork"):  # not on every platform (Windows)
    os.register_at_fork(after_in_child=_drop_inherited_connections)


def _user_agent(caller: str | None) -> str:
    agent = f"gennet_sync/{_VERSION} python-requests/{requests.__version__}"
    if caller:
        return f"{_NOT_TOKEN.sub('-', caller).strip('-') or 'service'} {agent}"
    return agent


def _validate_timeout(timeout: TimeoutValue) -> TimeoutValue:
    parts = timeout if isinstance(timeout, tuple) else (timeout,)
    if isinstance(timeout, tuple) and len(timeout) != 2:
        raise ValueError(f"timeout must be a number or a (connect, read) pair, got {timeout!r}")
    for part in parts:
        if part is not None and not part > 0:
            raise ValueError(f"timeout values must be > 0 or None, got {timeout!r}")
    return timeout


def _call_seconds(timeout: object) -> float | None:
    """Seconds a call with ``timeout`` can wait (connect + read); ``None``: unbounded."""
    parts = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    if not all(isinstance(part, int | float) and part > 0 for part in parts):
        return None
    total = float(sum(parts))
    return total if math.isfinite(total) else None


class ServiceSession(requests.Session):
    """A ``requests.Session`` for calling one service: breaker, timeouts, retries, errors.

    Use it wherever a ``requests.Session`` is used; it returns a
    ``requests.Response`` for every status, as requests does.

    Example::

        session = ServiceSession(base_url="http://qualitative-service:8000",
                                 service_name="qualitative-service", caller="orders")
        response = session.post("/ctl/verify", json={"formula": "AG(p)"})

        strict = ServiceSession(base_url="http://grn:8000", raise_errors=True)
        network = strict.get("/networks/abc").json()   # NotFoundError if grn says 404

    Args:
        base_url: Prefix of relative URLs: ``"/ctl/verify"`` and ``"ctl/verify"``
            both become ``base_url + "/ctl/verify"`` (the base's own path is kept).
            Absolute URLs are used as given.  No query or fragment: put
            parameters for every call in ``session.params``.
        service_name: The service's name: its breaker's name in the registry (every
            session for it shares that breaker) and the ``service`` in errors.
            Without it, the ``host:port`` of ``base_url``, or of each request's URL
            when there is no ``base_url`` either (one breaker per host).
        use_circuit_breaker: ``False``: no breaker at all.
        circuit_breaker_threshold: Consecutive failures that open the breaker.
        circuit_breaker_timeout: Seconds the breaker stays open before a trial call.
        circuit_breaker: A breaker to use instead of the registry's.
        max_host_breakers: Per-host breakers kept when there is no service name or
            ``base_url``; the least recently used beyond it is dropped (and
            removed from the registry unless another session uses it).
        circuit_breaker_config: More breaker settings (``BreakerConfig`` fields and
            the registry's ``clock``, ``storage``, ``config``...); they override the
            two above.  The registry raises ``ValueError`` when a breaker of that
            name exists with other settings.
        failure_statuses: Response statuses the breaker counts as failures.
        timeout: Default ``(connect, read)`` seconds, or one number for both, for
            requests that pass no ``timeout``; ``None``: no default (wait forever).
            A call's own ``timeout=None`` waits forever, as in requests.
        total_timeout: Most seconds one call may take in all: connecting, every
            read, the retries and their waits, and the body unless the caller
            streams it.  Past it the call fails with a timeout
            (``GatewayTimeoutError`` with ``raise_errors``, else
            ``requests.ReadTimeout``) that counts against the breaker.  By
            default :data:`DEFAULT_TOTAL_TIMEOUT` when the session names a service
            (``service_name`` or ``base_url``), else ``None`` (no limit, as
            requests).  ``request(..., total_timeout=)`` sets it for one call.
        retries: Retries per call (see :func:`make_retry`), or a urllib3 ``Retry``,
            mounted as a :class:`ServiceRetry` with the same settings (a subclass
            of ``Retry`` is mounted as it is); 0: none.
        raise_errors: Raise error responses as ``GenNetException`` (see
            :func:`raise_for_error`) and connection failures and timeouts as
            ``ServiceUnavailableError``.  ``False``: behave like requests.
        pool_connections: Hosts whose connection pools are kept.
        pool_maxsize: Connections kept per host: at least the number of threads
            sharing the session.
        caller: The calling service's name, put in ``User-Agent``; the
            ``GENNET_SERVICE_NAME`` environment variable by default.
        forward_request_id: Send the ID of the request being served (unless the
            call sets its own).
        request_id_header: The header it goes in: the downstream's
            ``GENNET_REQUEST_ID_HEADER`` when that is not ``X-Request-ID``.
        compress_requests: Gzip request bodies of at least ``compress_min_size``
            bytes (``Content-Encoding: gzip``) when that makes them smaller.
        compress_min_size: Smallest body compressed, in bytes.
        max_concurrent_calls: A bulkhead: at most this many calls to the service at
            once in this process (every session for the service shares it); the
            next is refused at once with ``BulkheadFullError`` (503, also a
            ``requests.ConnectionError``).  ``None``: no bulkhead.
        bulkhead_max_wait: Seconds a call may wait for a free slot before it is refused.
        retry_budget: Retries of this service's calls add at most this share of
            its recent calls (every session for the service shares the budget; a
            session without a service name has its own).  ``None``: retries are
            limited only by ``retries``.
        forward_deadline: Tell the service how long it has (``Request-Timeout``:
            what is left of the call's total time limit and of the deadline of
            the request being served).
        fallback: Called when a call fails or is refused (see
            :mod:`gennet_sync.fallback`); the response it returns, if not
            ``None``, is the call's answer.  A fallback with a ``remember``
            method is also given every response that is no failure.

    Every call obeys the deadline in force (of the request being served, see
    :class:`~gennet_sync.deadline_flask.Deadlines`, or of a
    :class:`~gennet_sync.deadline.deadline_scope`): its total time limit is at
    most the time left, and with none left it raises ``DeadlineExceededError``
    (504, also a ``requests.ConnectTimeout``) without sending anything.

    A copy (``copy.copy``) or a pickled session keeps every setting; its breaker is
    the registry's for the same name again (a breaker passed as ``circuit_breaker``
    is shared by a copy and cannot be pickled).

    Raises:
        ValueError: For a bad setting (negative timeout, empty pool, a ``base_url``
            that is not an http(s) URL...).
    """

    #: What a copy or a pickle keeps: requests' own list and the settings below.
    __attrs__ = (
        *requests.Session.__attrs__,
        "base_url",
        "service_name",
        "timeout",
        "raise_errors",
        "failure_statuses",
        "forward_request_id",
        "request_id_header",
        "compress_requests",
        "compress_min_size",
        "retry",
        "pool_connections",
        "pool_maxsize",
        "total_timeout",
        "max_host_breakers",
        "max_concurrent_calls",
        "bulkhead_max_wait",
        "retry_budget",
        "forward_deadline",
        "fallback",
        "_breaker_settings",
        "_breaker_per_host",
        "_own_breaker",
    )

    def __init__(
        self,
        base_url: str | None = None,
        service_name: str | None = None,
        *,
        use_circuit_breaker: bool = True,
        circuit_breaker_threshold: int = 5,
        circuit_breaker_timeout: float = 60.0,
        circuit_breaker: CircuitBreaker | None = None,
        circuit_breaker_config: Mapping[str, Any] | None = None,
        max_host_breakers: int = DEFAULT_MAX_HOST_BREAKERS,
        failure_statuses: Collection[int] = DEFAULT_FAILURE_STATUSES,
        timeout: TimeoutValue = DEFAULT_TIMEOUT,
        total_timeout: float | _Default | None = _DEFAULT,
        retries: int | Retry = DEFAULT_RETRIES,
        raise_errors: bool = False,
        pool_connections: int = DEFAULT_POOL_CONNECTIONS,
        pool_maxsize: int = DEFAULT_POOL_MAXSIZE,
        caller: str | None = None,
        forward_request_id: bool = True,
        request_id_header: str = REQUEST_ID_HEADER,
        compress_requests: bool = False,
        compress_min_size: int = DEFAULT_COMPRESS_MIN_SIZE,
        max_concurrent_calls: int | None = None,
        bulkhead_max_wait: float = 0.0,
        retry_budget: RetryBudgetConfig | None = DEFAULT_RETRY_BUDGET,
        forward_deadline: bool = True,
        fallback: Fallback | None = None,
    ) -> None:
        super().__init__()
        if base_url is not None:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
            if parts.query or parts.fragment:
                # Joining a path after them would put the path inside the query.
                raise ValueError(
                    f"base_url cannot have a query or fragment (set session.params for "
                    f"query parameters on every call), got {base_url!r}"
                )
            base_url = base_url.rstrip("/")
        if pool_connections < 1 or pool_maxsize < 1:
            raise ValueError("pool_connections and pool_maxsize must be >= 1")
        if compress_min_size < 0:
            raise ValueError(f"compress_min_size must be >= 0, got {compress_min_size}")
        if max_host_breakers < 1:
            raise ValueError(f"max_host_breakers must be >= 1, got {max_host_breakers}")
        if total_timeout is _DEFAULT:
            total_timeout = DEFAULT_TOTAL_TIMEOUT if service_name or base_url else None
        if total_timeout is not None and not total_timeout > 0:
            raise ValueError(f"total_timeout must be > 0 or None, got {total_timeout!r}")
        self.base_url: str | None = base_url
        self.service_name: str | None = service_name
        self.timeout: TimeoutValue = _validate_timeout(timeout)
        self.total_timeout: float | None = total_timeout
        self.max_host_breakers = max_host_breakers
        self.raise_errors = raise_errors
        self.failure_statuses: frozenset[int] = frozenset(failure_statuses)
        self.forward_request_id = forward_request_id
        self.request_id_header = request_id_header
        self.compress_requests = compress_requests
        self.compress_min_size = compress_min_size
        self.retry: Retry = _as_service_retry(retries)
        self.pool_connections = pool_connections
        self.pool_maxsize = pool_maxsize
        self.max_concurrent_calls = max_concurrent_calls
        self.bulkhead_max_wait = bulkhead_max_wait
        self.retry_budget = retry_budget
        self.forward_deadline = forward_deadline
        self.fallback = fallback

        self._breaker_settings: dict[str, Any] = {
            "failure_threshold": circuit_breaker_threshold,
            "recovery_timeout": circuit_breaker_timeout,
            **(circuit_breaker_config or {}),
        }
        self._per_host_breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._environ_proxies_by_host: dict[tuple[str, str, str | None], dict[str, str]] = {}
        self._breaker: CircuitBreaker | None = None
        self._breaker_per_host = False
        self._own_breaker = circuit_breaker is not None
        self.headers["User-Agent"] = _user_agent(caller or os.environ.get("GENNET_SERVICE_NAME"))
        self.headers["Accept-Encoding"] = ACCEPT_ENCODING
        for prefix in ("https://", "http://"):
            self.mount(prefix, self._make_adapter())

        name = None
        if circuit_breaker is not None:
            self._breaker = circuit_breaker
        elif use_circuit_breaker:
            name = service_name or (host_port(base_url) if base_url else None)
            self._breaker_per_host = name is None
        self._join_live_sessions(name)
        self._set_up_policies()

    def _set_up_policies(self) -> None:
        """The bulkhead and retry budget of the service (the registry's, by its name)."""
        name = self.service_name or (host_port(self.base_url) if self.base_url else None)
        self._bulkhead: Bulkhead | None = None
        if self.max_concurrent_calls is not None:
            self._bulkhead = (
                get_bulkhead(name, self.max_concurrent_calls, self.bulkhead_max_wait)
                if name is not None
                else Bulkhead(repr(self), self.max_concurrent_calls, self.bulkhead_max_wait)
            )
        self._retry_budget: RetryBudget | None = None
        if self.retry_budget is not None:
            fleet = _registry._resolve_default_storage() if self.retry_budget.shared else None
            self._retry_budget = (
                get_retry_budget(name, self.retry_budget, fleet)
                if name is not None
                else RetryBudget(self.retry_budget)
            )

    def _join_live_sessions(self, breaker_name: str | None) -> None:
        """Take the registry's breaker named ``breaker_name`` (if any) and become a live session.

        Both under the lock evictions take: an eviction in between would not see
        this session use the breaker, and would remove it from the registry (the
        next session for the service would get another breaker than this one's).
        """
        with _host_breakers_lock:
            if breaker_name is not None:
                self._breaker = get_circuit_breaker(breaker_name, **self._breaker_settings)
            _live_sessions.add(self)

    def __getstate__(self) -> dict[str, Any]:
        state = {name: getattr(self, name, None) for name in self.__attrs__}
        breaker = self._breaker
        # A registry breaker is found again by name, in another process too.
        state["_breaker"] = breaker if self._own_breaker else None
        state["_registry_breaker_name"] = (
            None if breaker is None or self._own_breaker else breaker.name
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        name = state.pop("_registry_breaker_name", None)
        # Pickled by a version without these settings.
        state.setdefault("total_timeout", None)
        state.setdefault("max_host_breakers", DEFAULT_MAX_HOST_BREAKERS)
        state.setdefault("max_concurrent_calls", None)
        state.setdefault("bulkhead_max_wait", 0.0)
        state.setdefault("retry_budget", None)
        state.setdefault("forward_deadline", False)
        state.setdefault("fallback", None)
        for attribute, value in state.items():
            setattr(self, attribute, value)
        self._per_host_breakers = OrderedDict()
        self._environ_proxies_by_host = {}
        self._join_live_sessions(name)
        self._set_up_policies()

    def _make_adapter(self) -> HTTPAdapter:
        return _ServiceAdapter(
            pool_connections=self.pool_connections,
            pool_maxsize=self.pool_maxsize,
            max_retries=self.retry,
        )

    @property
    def circuit_breaker(self) -> CircuitBreaker | None:
        """The session's breaker; ``None`` when disabled or chosen per request host."""
        return self._breaker

    def breaker_for(self, url: str) -> CircuitBreaker | None:
        """The breaker a call to ``url`` goes through (``None``: no breaker).

        Per host, at most ``max_host_breakers`` are kept: the least recently used
        beyond that is dropped, and removed from the registry unless another live
        session uses it.
        """
        if not self._breaker_per_host:
            return self._breaker
        host = host_port(url)
        breakers = self._per_host_breakers
        with _host_breakers_lock:
            breaker = breakers.get(host)
            if breaker is not None:
                breakers.move_to_end(host)
                return breaker
            breaker = get_circuit_breaker(host, **self._breaker_settings)
            breakers[host] = breaker
            while len(breakers) > self.max_host_breakers:
                _release_host_breaker(*breakers.popitem(last=False), self)
        return breaker

    def close(self) -> None:
        """Close the connection pools and let go of the per-host breakers.

        A per-host breaker no other live session uses leaves the registry; the
        session still works after ``close()``, with new ones.
        """
        super().close()
        with _host_breakers_lock:
            while self._per_host_breakers:
                _release_host_breaker(*self._per_host_breakers.popitem(last=False), self)

    def _service_label(self, call: _Call, breaker: CircuitBreaker | None, failed_url: str) -> str:
        """Who failed: this session's service, or the host a redirect led to."""
        host = host_port(failed_url)
        if host != host_port(call.url):
            return host or "downstream"
        if self.service_name:
            return self.service_name
        if breaker is not None and breaker.name:
            return breaker.name
        return host or "downstream"

    def join_url(self, url: str) -> str:
        """``url`` joined to ``base_url`` when relative; absolute URLs unchanged."""
        if self.base_url is None or _ABSOLUTE_URL.match(url):
            return url
        if url.startswith("//"):  # scheme-relative: another host, same scheme
            return f"{urlsplit(self.base_url).scheme}:{url}"
        if not url or url.startswith(("?", "#")):
            return self.base_url + url
        return f"{self.base_url}/{url.lstrip('/')}"

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        url = request.url
        if isinstance(url, bytes):
            url = url.decode("utf-8")
        if isinstance(url, str):
            request.url = self.join_url(url)
        return super().prepare_request(request)

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        """requests' merge of call, session and environment settings, with the proxy
        environment read once per host instead of on every call.

        requests reads it through every variable of ``os.environ``, twice, on each
        call: about 40% of its CPU time per call.  A service's environment is set
        when it starts, so a proxy variable changed later is not seen by a host
        this session has already called (a new session sees it).
        """
        if self.trust_env:
            proxies = dict(proxies or {})
            for scheme, proxy in self._environ_proxies(url, proxies.get("no_proxy")).items():
                proxies.setdefault(scheme, proxy)  # the call's own proxies win
            if verify is True or verify is None:
                verify = (
                    os.environ.get("REQUESTS_CA_BUNDLE")
                    or os.environ.get("CURL_CA_BUNDLE")
                    or verify
                )
        return {
            "proxies": _merge_setting(proxies, self.proxies),
            "stream": _merge_setting(stream, self.stream),
            "verify": _merge_setting(verify, self.verify),
            "cert": _merge_setting(cert, self.cert),
        }

    def _environ_proxies(self, url: str, no_proxy: str | None) -> dict[str, str]:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, no_proxy)
        found = self._environ_proxies_by_host.get(key)
        if found is None:
            if len(self._environ_proxies_by_host) >= _ENVIRON_PROXIES_KEPT:
                self._environ_proxies_by_host.clear()  # a session calling ever new hosts
            found = get_environ_proxies(url, no_proxy=no_proxy)
            self._environ_proxies_by_host[key] = found
        return found

    def rebuild_method(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        super().rebuild_method(prepared_request, response)
        if response.status_code not in (307, 308):
            # requests drops the body on these redirects but keeps Content-Encoding,
            # which would describe a body that is no longer there.
            prepared_request.headers.pop("Content-Encoding", None)

    def resolve_redirects(
        self, resp: requests.Response, req: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> Iterator[Any]:
        """requests' redirect loop, each of its sends marked as a hop of the call."""
        hops = super().resolve_redirects(resp, req, *args, **kwargs)
        call = _call_in_progress.get()
        if call is None or call.session is not self:  # called by hand, outside a call
            yield from hops
            return
        while True:
            token = _redirect_of.set(call)
            try:
                hop = next(hops)
            except StopIteration:
                return
            finally:
                _redirect_of.reset(token)
            yield hop

    def request(
        self,
        method: str | bytes,
        url: str | bytes,
        *args: Any,
        total_timeout: float | _Default | None = _DEFAULT,
        **kwargs: Any,
    ) -> requests.Response:
        """``requests.Session.request``, with the session's timeout when none is given.

        ``timeout=None`` given by the caller waits forever, as in requests.

        Args:
            method: The HTTP method.
            url: Relative to ``base_url``, or absolute.
            *args: requests' positional arguments (``params``, ``data``...).
            total_timeout: This call's total time limit in seconds (``None``: none);
                the session's ``total_timeout`` by default.
            **kwargs: requests' keyword arguments.

        Returns:
            The response, as requests returns it.
        """
        # timeout is requests' 9th parameter, the 7th after method and url.
        if len(args) < 7 and "timeout" not in kwargs:
            kwargs["timeout"] = self.timeout
        if total_timeout is not _DEFAULT and total_timeout is not None and not total_timeout > 0:
            raise ValueError(f"total_timeout must be > 0 or None, got {total_timeout!r}")
        token = _call_total_timeout.set(total_timeout)
        try:
            return super().request(method, url, *args, **kwargs)
        finally:
            _call_total_timeout.reset(token)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send ``request`` through the breaker, with the default timeout and headers.

        Raises:
            CircuitBreakerError: The service's breaker refuses calls; nothing was
                sent.  Also a ``requests.ConnectionError``.
            GenNetException: With ``raise_errors``, for an error response, or for a
                transport failure (``ServiceUnavailableError``, ``BadGatewayError``,
                ``GatewayTimeoutError``, each also the requests exception it replaces).
            requests.RequestException: Without ``raise_errors``, as requests does
                (``requests.ReadTimeout`` past the total time limit).
        """
        if isinstance(request, requests.Request):  # as requests refuses it, before any use
            raise ValueError("You can only send PreparedRequests.")
        fallback = self.fallback
        # A redirect hop is part of its call: the call falls back, not the hop.
        if (
            fallback is not None
            and _fallback_for.get() is not request
            and _redirect_of.get() is None
        ):
            return self._send_or_fall_back(fallback, request, kwargs)
        # Inside the fallback: the metrics count the call's own outcome, not its stand-in.
        if call_observer is not None and _observed_by.get() is not self:  # metrics on
            return _observed_send(call_observer, self, request, kwargs)
        if "timeout" not in kwargs:  # a direct send(); request() always passes one
            kwargs["timeout"] = self.timeout
        if self.forward_request_id and self.request_id_header not in request.headers:
            request_id = current_request_id()
            if request_id:
                request.headers[self.request_id_header] = request_id
        if self.compress_requests:
            self._compress_body(request)
        url = request.url or ""
        call = _redirect_of.get()
        if call is not None and call.session is self:
            # The hop's own hooks may call this session: those are calls of their own.
            hop_token = _redirect_of.set(None)
            try:
                return self._send_redirect_hop(call, url, request, kwargs)
            finally:
                _redirect_of.reset(hop_token)
        breaker = self.breaker_for(url)
        return _tracing.client_call(self._send_call, request, url, breaker, kwargs)

    def _send_call(
        self,
        request: requests.PreparedRequest,
        url: str,
        breaker: CircuitBreaker | None,
        kwargs: dict[str, Any],
    ) -> requests.Response:
        """One logical call through ``breaker``: what :meth:`send` does once it is not a hop."""
        total = _call_total_timeout.get()
        if total is _DEFAULT:
            total = self.total_timeout
        else:  # for this call only, not for calls its hooks make
            _call_total_timeout.set(_DEFAULT)
        # Policies in order: deadline, bulkhead, breaker, retries within budget.
        deadline = self._deadline_for(total, request)
        if deadline is not None:
            own_timeout = kwargs["timeout"]
            kwargs["timeout"] = _capped(own_timeout, deadline.seconds)
            deadline.lowered = _lowered(own_timeout, kwargs["timeout"])
        replayable = _replayable(request.body)
        # A shared HALF_OPEN trial slot is leased for as long as this call can run.
        lease = deadline.seconds if deadline is not None else _call_seconds(kwargs["timeout"])
        bulkhead = self._enter_bulkhead(request, deadline)
        # Nothing may raise between taking the permit and the try below, which
        # records its outcome: a permit left open would hold a trial slot.
        try:
            permit = self._acquire_permit(breaker, request, lease)
        except BaseException:
            if bulkhead is not None:
                bulkhead.release()
            raise
        call = _Call(self, url, permit, deadline, replayable=replayable)
        if self._retry_budget is not None:
            self._retry_budget.record_call()
        # With raise_errors an error body is read for its envelope, and only so far:
        # the response is streamed, and read in full below when it is no error and
        # the caller did not ask to stream.
        read_body = self.raise_errors and not kwargs.get("stream")
        if self.raise_errors:
            kwargs["stream"] = True
        token = _call_in_progress.set(call)
        try:
            if deadline is not None:
                _WATCHDOG.watch(deadline)
                if deadline.forward:
                    # Seen by whatever reads the request before it is sent (a mock
                    # transport, a hook); each attempt sends its own value, and the
                    # caller's own header comes back below.
                    request.headers[DEADLINE_HEADER] = deadline.budget()
            response = self._send_once(call, request, kwargs, read_body=read_body)
            if self.raise_errors and response.status_code >= 400:
                service = self._service_label(call, breaker, response.url or url)
                mapped = error_from_response(response, service=service)
                # The caller never sees this response: free its connection now.
                _release(response)
                if mapped is not None:
                    raise mapped
            return response
        except Exception as error:
            replacement = self._replacement(call, breaker, error, request)
            if replacement is None:
                raise
            raise replacement from error
        finally:
            if deadline is not None:
                _WATCHDOG.finish(deadline)
                if deadline.forward:
                    if deadline.callers_header is None:
                        request.headers.pop(DEADLINE_HEADER, None)
                    else:
                        request.headers[DEADLINE_HEADER] = deadline.callers_header
            if call.retry_charged and self._retry_budget is not None:
                self._retry_budget.refund()  # taken for a retry that was never sent
            _call_in_progress.reset(token)
            if not call.permit.done:  # only when something failed before the send
                call.permit.ignore()
            if bulkhead is not None:
                bulkhead.release()

    def _send_or_fall_back(
        self, fallback: Fallback, request: requests.PreparedRequest, kwargs: dict[str, Any]
    ) -> requests.Response:
        """``send``, with ``fallback``'s answer for a failure or a refusal, if it has one."""
        token = _fallback_for.set(request)
        try:
            response = self.send(request, **kwargs)
        except (requests.RequestException, GenNetException) as error:
            if isinstance(error, GenNetException) and error.status_code < 500:
                raise  # the service answered: a 4xx is not an outage
            if isinstance(error, _CALLER_ERRORS):
                raise  # a bad URL or header of the caller's: a bug, not an outage
            answer = fallback(request, error, None)
            if answer is None:
                raise
            return answer
        finally:
            _fallback_for.reset(token)
        if response.status_code in self.failure_statuses:
            answer = fallback(request, None, response)
            if answer is not None:
                response.close()
                return answer
        else:
            remember = getattr(fallback, "remember", None)
            # A call made with a client certificate is a caller's own, like one
            # with an Authorization header: no cache may keep its answer.
            if remember is not None and not kwargs.get("cert"):
                remember(response, streamed=bool(kwargs.get("stream")))
        return response

    def _deadline_for(
        self, total: float | None, request: requests.PreparedRequest
    ) -> _Deadline | None:
        """The call's time limit: its total timeout, within the deadline in force.

        Raises:
            DeadlineExceededError: No time is left; nothing was sent.  Also a
                ``requests.ConnectTimeout``.
        """
        left = time_left()
        inherited = left is not None and (total is None or left <= total)
        if inherited:
            assert left is not None
            # With no more than the forwarding margin left, no attempt would be
            # sent (there is no budget to forward): refuse now, before the
            # bulkhead and the breaker, which must not count a call never sent.
            if left <= FORWARD_MARGIN:
                raise self._no_time_left(request, "the request's deadline has passed")
            total = left
        if total is None:
            return None
        deadline = _Deadline(total, inherited=inherited)
        callers = request.headers.get(DEADLINE_HEADER)
        if callers is not None:
            deadline.callers_header = callers
            deadline.callers_budget = parse_budget(callers)
        # A caller's own value that is no budget is sent as it is, like any header.
        deadline.forward = self.forward_deadline and (
            callers is None or deadline.callers_budget is not None
        )
        return deadline

    def _no_time_left(self, request: requests.PreparedRequest, why: str) -> GenNetException:
        """The refusal of a call with no time left for it; nothing was sent."""
        service = self.service_name or host_port(request.url or "")
        refusal = DeadlineExceededError(
            f"No time left to call service '{service}': {why}",
            service=service,
            metadata={"reason": "deadline_exceeded"},
        )
        return _flavour(refusal, requests.exceptions.ConnectTimeout, request)

    def _enter_bulkhead(
        self, request: requests.PreparedRequest, deadline: _Deadline | None
    ) -> Bulkhead | None:
        """Take a slot of the service's bulkhead, if it has one.

        A call waits for a slot (``bulkhead_max_wait``) no longer than its time limit
        leaves for sending it.

        Raises:
            BulkheadFullError: No free slot; nothing was sent.  Also a
                ``requests.ConnectionError``.
            DeadlineExceededError: The time limit ended the wait for a slot; nothing
                was sent.  Also a ``requests.ConnectTimeout``.
        """
        bulkhead = self._bulkhead
        if bulkhead is None:
            return None
        wait = None if deadline is None else max(deadline.remaining() - FORWARD_MARGIN, 0.0)
        try:
            bulkhead.acquire(timeout=wait)
        except BulkheadFullError as refusal:
            if wait is not None and wait < bulkhead.max_wait:
                why = "its time limit ran out while it waited for a bulkhead slot"
                raise self._no_time_left(request, why) from None
            raise _flavour(refusal, requests.exceptions.ConnectionError, request) from None
        return bulkhead

    def _acquire_permit(
        self,
        breaker: CircuitBreaker | None,
        request: requests.PreparedRequest,
        trial_lease: float | None,
    ) -> CallPermit | _NoPermit:
        """The breaker's permit for one call: the one place a call is admitted.

        ``trial_lease`` is the longest the call can run (its total time limit, else
        connect + read timeout): a shared trial slot is held no longer than that.

        Raises:
            CircuitBreakerError: Refused; also a ``requests.ConnectionError``.
        """
        if breaker is None:
            return _NO_PERMIT
        try:
            return breaker.acquire(trial_lease=trial_lease)
        except CircuitBreakerError as refusal:
            raise _flavour(refusal, requests.exceptions.ConnectionError, request) from None

    def _replacement(
        self,
        call: _Call,
        breaker: CircuitBreaker | None,
        error: Exception,
        request: requests.PreparedRequest,
    ) -> Exception | None:
        """What ``send`` raises instead of ``error``; ``None``: ``error`` itself."""
        failure = _classify(error, call)
        if failure is None:
            return None
        if self.raise_errors:
            failed = getattr(error, "request", None)
            failed_url = (failed.url if failed is not None else None) or call.url
            service = self._service_label(call, breaker, failed_url)
            return _transport_error(error, failure, service, request)
        if failure in (_TOTAL_TIMEOUT, _DEADLINE) and not isinstance(error, requests.Timeout):
            assert call.deadline is not None
            return requests.exceptions.ReadTimeout(
                f"{call.url}: no complete answer within the call's total time limit "
                f"({call.deadline.seconds:g} s)",
                request=request,
            )
        return None

    def _send_redirect_hop(
        self,
        call: _Call,
        url: str,
        request: requests.PreparedRequest,
        kwargs: dict[str, Any],
    ) -> requests.Response:
        call.redirected = True
        if host_port(url) == host_port(call.url):
            # Same service: the call's permit records the outcome of the last hop.
            return super().send(request, **kwargs)
        # The service answered with a redirect elsewhere (object storage, a CDN): that
        # answer is its outcome, and the other host's failures are not its own.  The
        # other host goes through its own breaker when breakers are chosen per host.
        # A redirect to a URL nothing can follow is the service's failure, though:
        # InvalidSchema / InvalidURL here, before its answer is counted a success.
        self.get_adapter(url)
        try:
            parse_url(url)
        except LocationParseError as error:
            raise requests.exceptions.InvalidURL(error, request=request) from error
        call.permit.success()
        breaker = self.breaker_for(url) if self._breaker_per_host else None
        deadline = call.deadline
        lease = deadline.remaining() if deadline is not None else _call_seconds(kwargs["timeout"])
        permit = self._acquire_permit(breaker, request, lease if lease and lease > 0 else None)
        hop = _Call(self, url, permit, deadline, replayable=True)
        hop.redirected = True
        return self._send_once(hop, request, kwargs, read_body=False)

    def _send_once(
        self,
        call: _Call,
        request: requests.PreparedRequest,
        kwargs: dict[str, Any],
        *,
        read_body: bool,
    ) -> requests.Response:
        """``Session.send`` with its outcome recorded on the call's permit.

        ``read_body``: read the body of a response below 400 in full, as requests
        does when not streaming, and count a failure to read it.
        """
        try:
            response = super().send(request, **kwargs)
            if read_body and response.status_code < 400:
                try:
                    response.content  # noqa: B018  (reads the body, as requests does)
                except BaseException:
                    response.close()
                    raise
        except Exception as error:
            failure = _classify(error, call)
            # An attempt the limit stopped before sending it (_TotalTimeoutExceeded)
            # is nothing the service did; a failure it showed before still counts.
            sent = not isinstance(error, _TotalTimeoutExceeded)
            if failure is not None and ((failure.counts and sent) or call.failed_attempt):
                call.permit.failure(error)
            else:
                # Not the service's fault: a bad URL, a hook that raised, a proxy.
                call.permit.ignore()
            raise
        except BaseException:  # KeyboardInterrupt...
            call.permit.ignore()
            raise
        if response.status_code in self.failure_statuses:
            call.permit.failure(None)
        else:
            call.permit.success()
        return response

    def _compress_body(self, request: requests.PreparedRequest) -> None:
        body = request.body
        if body is None or "Content-Encoding" in request.headers:
            return
        if isinstance(body, str):
            try:
                body = body.encode("latin-1")  # what http.client would send
            except UnicodeEncodeError:
                return
        if not isinstance(body, bytes) or len(body) < self.compress_min_size:
            return
        compressed = gzip.compress(body, compresslevel=6, mtime=0)
        if len(compressed) >= len(body):
            return
        request.body = compressed
        request.headers["Content-Encoding"] = "gzip"
        request.headers["Content-Length"] = str(len(compressed))

    def __repr__(self) -> str:
        breaker = self._breaker.name if self._breaker else None
        return f"<ServiceSession base_url={self.base_url!r} breaker={breaker!r}>"

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

This module holds the session, its per-host breakers and the call observer hook.
The parts below it have modules of their own, each public name of which is also
exported here: :mod:`gennet_sync.retries` (``ServiceRetry``),
:mod:`gennet_sync.failures` (what a failed call means for its caller and breaker),
:mod:`gennet_sync.downstream` (the errors a downstream answered) and
:mod:`gennet_sync.transport` (the call's total time limit and its watched sockets).
"""

from __future__ import annotations

import enum
import gzip
import logging
import math
import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias, cast
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.sessions import merge_setting as _untyped_merge_setting
from requests.structures import CaseInsensitiveDict
from requests.utils import get_environ_proxies
from urllib3.exceptions import LocationParseError
from urllib3.util import make_headers, parse_url
from urllib3.util.retry import Retry

from gennet_sync import downstream as _downstream
from gennet_sync import retries as _retries
from gennet_sync import tracing as _tracing
from gennet_sync.bulkhead import Bulkhead, get_bulkhead
from gennet_sync.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerError,
    get_circuit_breaker,
)
from gennet_sync.circuit_breaker import registry as _registry
from gennet_sync.context import REQUEST_ID_HEADER, current_request_id
from gennet_sync.deadline import (
    DEADLINE_HEADER,
    FORWARD_MARGIN,
    parse_budget,
    time_left,
)
from gennet_sync.downstream import (
    MAX_ERROR_BODY,
    BadGatewayError,
    DownstreamError,
    GatewayTimeoutError,
    _flavour,
    _release,
    downstream_error_class,
    error_from_response,
    host_port,
    http_status_code,
    raise_for_error,
    requests_flavoured,
)
from gennet_sync.exceptions import (
    BulkheadFullError,
    DeadlineExceededError,
    GenNetException,
)
from gennet_sync.failures import _DEADLINE, _TOTAL_TIMEOUT, _classify, _transport_error
from gennet_sync.fallback import by_lowered_name
from gennet_sync.retries import (
    DEFAULT_RETRY_AFTER_MAX,
    ServiceRetry,
    _as_service_retry,
    _replayable,
    make_retry,
)
from gennet_sync.retry_budget import (
    DEFAULT_RETRY_BUDGET,
    RetryBudget,
    RetryBudgetConfig,
    get_retry_budget,
)
from gennet_sync.transport import (
    _NO_PERMIT,
    _WATCHDOG,
    _Call,
    _call_in_progress,
    _Deadline,
    _NoPermit,
    _ServiceAdapter,
    _TotalTimeoutExceeded,
)

if TYPE_CHECKING:
    from gennet_sync.circuit_breaker import CallPermit

# Still found here: gennet_sync.metrics lists the exception classes through this
# module, and pickles made before the errors moved to gennet_sync.downstream name
# these two functions in it.
_exception_classes = _downstream._exception_classes
_restore_flavoured = _downstream._restore_flavoured
_unpickle_downstream_error = _downstream._unpickle_downstream_error

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

#: Retries of one call by default (connection errors and 502/503/504, idempotent methods).
DEFAULT_RETRIES: Final = 2

#: Request bodies at least this large are gzipped when ``compress_requests`` is on.
DEFAULT_COMPRESS_MIN_SIZE: Final = 1024

#: requests' merge of a call's setting over the session's (untyped in its stubs).
_merge_setting = cast(Callable[[Any, Any], Any], _untyped_merge_setting)

#: Hosts whose proxy environment a session keeps (see ``merge_environment_settings``).
_ENVIRON_PROXIES_KEPT: Final = 256

_ABSOLUTE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]+")

try:
    _VERSION = version("gennet_sync")
except PackageNotFoundError:  # a source tree that was never installed
    _VERSION = "0.0.0"

#: The codings urllib3 decodes itself: gzip and deflate always, br and zstd when
#: brotli and zstandard are installed.  Advertising more would get bodies back
#: that nothing here can read.
ACCEPT_ENCODING: Final = make_headers(accept_encoding=True)["accept-encoding"].replace(",", ", ")


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


def _tell_observer_of_retry(call: _Call | None) -> None:
    """Pass a retry :mod:`gennet_sync.retries` is about to make on to :data:`call_observer`."""
    if call_observer is not None:
        call_observer.retried(call)


_retries._retry_listener = _tell_observer_of_retry

#: The session whose fallback is running in this context: its calls through that
#: session are plain calls (see :meth:`ServiceSession.send`).
_falling_back: ContextVar[ServiceSession | None] = ContextVar(
    "gennet_sync_falling_back", default=None
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


# --------------------------------------------------------------------------- the session


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


_DEADLINE_KEY: Final = DEADLINE_HEADER.lower()


def _remove_header(headers: MutableMapping[str, str], lowered: str) -> None:
    """Remove the header named ``lowered`` (in lower case) from ``headers``, in any letter case."""
    for name in [name for name in headers if name.lower() == lowered]:
        del headers[name]


def _give_back_deadline_header(headers: MutableMapping[str, str], deadline: _Deadline) -> None:
    """``headers`` as the caller left them: without the budget the call wrote, with
    the caller's own ``Request-Timeout`` (under its own name) if it had one."""
    _remove_header(headers, _DEADLINE_KEY)
    if deadline.callers_header is not None:
        headers[deadline.callers_name] = deadline.callers_header


def _capped(timeout: TimeoutValue, limit: float) -> TimeoutValue:
    """``timeout`` with no part longer than ``limit`` (``None``: wait forever, capped too)."""
    if isinstance(timeout, tuple):
        connect, read = timeout
        return (
            limit if connect is None else min(connect, limit),
            limit if read is None else min(read, limit),
        )
    return limit if timeout is None else min(timeout, limit)


def _lowered(own: TimeoutValue, capped: TimeoutValue) -> tuple[bool, bool]:
    """Which of the (connect, read) parts of ``own`` capping made shorter."""
    own_parts = own if isinstance(own, tuple) else (own, own)
    capped_parts = capped if isinstance(capped, tuple) else (capped, capped)
    return (
        own_parts[0] is None or (capped_parts[0] or 0) < own_parts[0],
        own_parts[1] is None or (capped_parts[1] or 0) < own_parts[1],
    )


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
        # requests merges each of the request's dicts with the session's, checking
        # both against a runtime Protocol (3-4 us a check on Python 3.11, on every
        # call).  An empty one merges to the session's own: handed over as None,
        # which the merge returns at once.  Session headers set to None are dropped
        # by the merge only, so then it runs.  The caller's Request gets its own back.
        headers, params = request.headers, request.params
        shortcut_headers = (
            isinstance(headers, dict)
            and not headers
            and self.headers is not None
            and None not in self.headers.values()
        )
        shortcut_params = isinstance(params, dict) and not params
        if not (shortcut_headers or shortcut_params):
            return super().prepare_request(request)
        if shortcut_headers:
            request.headers = None
        if shortcut_params:
            request.params = None
        try:
            return super().prepare_request(request)
        finally:
            request.headers, request.params = headers, params

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
        if not self.proxies and isinstance(proxies, Mapping):
            # What merge_setting makes of them, without its two checks against a
            # runtime Protocol (3-4 us each on Python 3.11, on every call).
            merged = {scheme: proxy for scheme, proxy in proxies.items() if proxy is not None}
        else:
            merged = _merge_setting(proxies, self.proxies)
        return {
            "proxies": merged,
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
        # A redirect hop is part of its call: the call falls back, not the hop.  The
        # fallback's own calls through this session (another replica) do not fall
        # back: that would call the fallback again, without end while both fail.
        if fallback is not None and _redirect_of.get() is None and _falling_back.get() is not self:
            return self._send_or_fall_back(fallback, request, kwargs)
        return self._send_observed(request, kwargs)

    def _send_observed(
        self, request: requests.PreparedRequest, kwargs: dict[str, Any]
    ) -> requests.Response:
        """:meth:`send` without the fallback, told to the call observer if there is one.

        The fallback wrapper calls this, not ``send``: a subclass overriding
        ``send`` runs once per call, as it would on a ``requests.Session``.
        """
        # Inside the fallback: the metrics count the call's own outcome, not its
        # stand-in.  A redirect hop is part of its call, which the observer watches;
        # a call a hook makes (on this session too) is one of its own.
        if call_observer is not None:  # metrics on
            hop_of = _redirect_of.get()
            if hop_of is None or hop_of.session is not self:
                # Not through send(): a subclass overriding send() runs once, not twice.
                return call_observer.observe(
                    self, request, lambda: self._send_call_of(request, kwargs)
                )
        return self._send_call_of(request, kwargs)

    def _send_call_of(
        self, request: requests.PreparedRequest, kwargs: dict[str, Any]
    ) -> requests.Response:
        """The call (or redirect hop) ``request`` is, once fallback and observer are set."""
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
                    headers = deadline.request_headers = request.headers
                    if type(headers) is CaseInsensitiveDict:  # its __setitem__ is a call
                        headers._store[_DEADLINE_KEY] = (DEADLINE_HEADER, deadline.budget())  # type: ignore[attr-defined]
                    else:  # a plain dict (a hook's): one entry, whatever its letter case
                        _remove_header(headers, _DEADLINE_KEY)
                        headers[DEADLINE_HEADER] = deadline.budget()
            response = self._send_once(call, request, kwargs, read_body=read_body)
            if deadline is not None and deadline.forward and response.history:
                # requests made each redirect hop's request from a copy of this one,
                # budget included: they are given back as the caller's would be.
                for answer in (*response.history, response):
                    if answer.request is not None and answer.request is not request:
                        _give_back_deadline_header(answer.request.headers, deadline)
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
                    # The watchdog keeps a finished deadline until its time comes (25 s
                    # by default): it must not keep the request's headers alive too.
                    deadline.request_headers = None
                    headers = request.headers
                    if deadline.callers_header is None and type(headers) is CaseInsensitiveDict:
                        headers._store.pop(_DEADLINE_KEY, None)  # type: ignore[attr-defined]  # its pop() is two calls
                    else:
                        _give_back_deadline_header(headers, deadline)
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
        # Read before the call, which may change them (raise_errors streams).
        streamed = bool(kwargs.get("stream"))
        # A call made with a client certificate is a caller's own, like one with an
        # Authorization header: no cache may keep its answer.
        private = bool(kwargs.get("cert"))
        try:
            response = self._send_observed(request, kwargs)
        except (requests.RequestException, GenNetException) as error:
            if isinstance(error, GenNetException) and error.status_code < 500:
                raise  # the service answered: a 4xx is not an outage
            if isinstance(error, _CALLER_ERRORS):
                raise  # a bad URL or header of the caller's: a bug, not an outage
            answer = self._ask_fallback(fallback, request, error, None)
            if answer is None:
                raise
            return answer
        if response.status_code in self.failure_statuses:
            answer = self._ask_fallback(fallback, request, None, response)
            if answer is not None:
                response.close()
                return answer
        else:
            remember = getattr(fallback, "remember", None)
            if remember is not None and not private:
                remember(response, streamed=streamed)
        return response

    def _ask_fallback(
        self,
        fallback: Fallback,
        request: requests.PreparedRequest,
        error: BaseException | None,
        response: requests.Response | None,
    ) -> requests.Response | None:
        """``fallback``'s answer for ``request``, whose calls on this session do not fall back."""
        token = _falling_back.set(self)
        try:
            return fallback(request, error, response)
        finally:
            _falling_back.reset(token)

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
        # By lowercased name: a missing name costs requests' CaseInsensitiveDict.get
        # a KeyError raised and caught, and most calls have none.
        entry = by_lowered_name(request.headers).get(_DEADLINE_KEY)
        callers = None if entry is None else entry[1]
        if callers is not None:
            assert entry is not None
            deadline.callers_name = entry[0]
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
        wait = None
        if deadline is not None and bulkhead.max_wait > 0:  # else the call never waits
            wait = max(deadline.remaining() - FORWARD_MARGIN, 0.0)
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

"""The transport under a ``ServiceSession`` call, and the call's total time limit.

A per-read timeout cannot stop a server that trickles its answer; only closing
the socket can.  Here are the call in progress (:data:`_call_in_progress`, read by
the connections and retries below the session), its time limit (``_Deadline``),
the one watchdog thread that cuts a call's connection at that limit, and the
urllib3 connections, pools and requests adapter that let it.  Apart from the
session because none of it is about which service is called or what it answered.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import socket
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Protocol

from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager
from urllib3.util.retry import Retry

from gennet_sync.deadline import DEADLINE_HEADER, FORWARD_MARGIN, MAX_BUDGET

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

    from gennet_sync.circuit_breaker import CallPermit
    from gennet_sync.retry_budget import RetryBudget


class _CallingSession(Protocol):
    """What the modules below ``ServiceSession`` read of the session making a call
    (they cannot import the class: it sits above them)."""

    failure_statuses: frozenset[int]
    _retry_budget: RetryBudget | None


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
        session: _CallingSession,
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


class _TotalTimeoutExceeded(Exception):
    """Raised inside a call (not by requests) when its total time limit has passed.

    Not a urllib3 or requests exception, so neither retries it nor wraps it: it
    comes straight back to :meth:`ServiceSession.send`.
    """

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__(f"the call's total time limit of {deadline.seconds:g} s has passed")


class _Deadline:
    """A call's total time limit, and the connection its current attempt has checked out."""

    __slots__ = (
        "_budget",
        "_budget_millis",
        "at",
        "attempt_started",
        "callers_budget",
        "callers_header",
        "callers_name",
        "connection",
        "expired",
        "finished",
        "forward",
        "inherited",
        "lowered",
        "request_headers",
        "seconds",
    )

    def __init__(self, seconds: float, *, inherited: bool = False, forward: bool = False) -> None:
        now = time.monotonic()
        self.seconds = seconds
        self.at = now + seconds
        self.connection: _WatchedHTTPConnection | None = None
        self.expired = False
        self.finished = False
        #: The limit is the deadline of the request being served, not the session's own.
        self.inherited = inherited
        #: Each attempt tells the service the time left (``Request-Timeout``).
        self.forward = forward
        self.attempt_started = now
        #: Which of the (connect, read) timeouts the limit made shorter than the session's.
        self.lowered = (False, False)
        #: The ``Request-Timeout`` the caller put on the request itself, and its seconds.
        self.callers_header: str | None = None
        self.callers_budget: float | None = None
        #: The name the caller gave it, in its own letter case.
        self.callers_name = DEADLINE_HEADER
        #: The headers of the request the budget was written on (see
        #: ``_WatchedHTTPConnection.request``).
        self.request_headers: Any = None
        # The last budget formatted, and its whole milliseconds: an attempt sent
        # within the same millisecond as the request was prepared (most are) sends
        # the same text, so it is formatted once per call.
        self._budget = ""
        self._budget_millis = -2

    def budget(self, remaining: float | None = None) -> str:
        """The ``Request-Timeout`` an attempt sends now (``remaining`` seconds left,
        read from the clock when not given): what is left less the margin, or the
        caller's own value when that is smaller."""
        ours = (self.remaining() if remaining is None else remaining) - FORWARD_MARGIN
        if self.callers_budget is not None and self.callers_budget <= ours:
            assert self.callers_header is not None
            # As parsed: the connection writes the value without http.client's
            # checks, and only the spaces (or a line break) around a budget's
            # digits may differ from what parse_budget read.
            return self.callers_header.strip()
        # format_budget's milliseconds; -1 where it answers "0" (nothing left, NaN).
        millis = math.floor(min(ours, MAX_BUDGET) * 1000) if ours > 0 else -1
        if millis != self._budget_millis:
            # format_budget(ours), from the milliseconds already worked out (a test
            # pins that both write the same).
            self._budget = f"{millis // 1000}.{millis % 1000:03d}" if millis >= 0 else "0"
            self._budget_millis = millis
        return self._budget

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
        # Taken through the lock itself: a Condition's own enter and exit are
        # Python calls, four per call watched.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._finished_in_heap = 0
        self._thread: threading.Thread | None = None

    def watch(self, deadline: _Deadline) -> None:
        # The lock is taken by hand, here and in finish(): ``with`` costs twice as
        # much, and every call with a time limit passes through both.
        lock = self._lock
        lock.acquire()
        try:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gennet-sync-call-deadlines", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is deadline:  # earlier than what the thread waits for
                self._wake.notify()
        finally:
            lock.release()

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
        lock = self._lock
        lock.acquire()
        try:
            deadline.finished = True
            _unlink(deadline)
            self._finished_in_heap += 1
            # Finished calls are left in the heap until their time comes; a busy
            # process would keep thousands, so they are swept out now and then.
            if self._finished_in_heap > 1024 and self._finished_in_heap * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].finished]
                heapq.heapify(self._heap)
                self._finished_in_heap = 0
        finally:
            lock.release()

    def _run(self) -> None:
        with self._lock:
            while True:
                if not self._heap:
                    self._wake.wait()
                    continue
                at, _, deadline = self._heap[0]
                if deadline.finished:
                    heapq.heappop(self._heap)
                    self._finished_in_heap -= 1
                    continue
                wait = at - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
                deadline.expired = True
                if deadline.connection is not None:
                    _cut(deadline.connection)
                    _unlink(deadline)

    def _after_fork(self) -> None:
        # The thread does not exist in a child; a new one starts with its first call.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
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


class _WatchedHTTPConnection(HTTPConnection):
    """An HTTP connection that tells the call in progress it carries its request.

    It stays linked to that call's deadline until its pool takes it back.
    """

    #: The deadline of the call that has it checked out (the watchdog's lock guards it).
    deadline: _Deadline | None = None

    #: The ``Request-Timeout`` line of the attempt being sent, written by
    #: :meth:`putrequest`.
    _budget_line: bytes | None = None

    def request(
        self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any
    ) -> None:
        deadline = _attach_to_call(self)
        if deadline is not None and deadline.forward and headers is not None:
            # Per attempt: a retry tells the service what is left by then.  With
            # nothing left to give, the attempt is not sent: its answer could not
            # come back in time.
            remaining = deadline.at - time.monotonic()
            if not remaining - FORWARD_MARGIN > 0:  # forwarded_budget() would be "0"
                raise _TotalTimeoutExceeded(deadline)
            if headers is not deadline.request_headers and type(headers) is CaseInsensitiveDict:
                headers._store.pop(_DEADLINE_KEY, None)  # type: ignore[attr-defined]  # urllib3's copy, this attempt's
            else:
                headers = _without_budget(headers, deadline)
            line = f"{DEADLINE_HEADER}: {deadline.budget(remaining)}".encode("latin-1")
        else:
            line = None
        call = _call_in_progress.get()
        if call is not None:
            call.retry_charged = False  # sent: the retry taken from the budget is spent
        try:
            self._budget_line = line
            super().request(method, url, body, headers, **kwargs)
        finally:
            self._budget_line = None

    def putrequest(
        self,
        method: str,
        url: str,
        skip_host: bool = False,
        skip_accept_encoding: bool = False,
    ) -> None:
        super().putrequest(
            method, url, skip_host=skip_host, skip_accept_encoding=skip_accept_encoding
        )
        line = self._budget_line
        if line is not None:
            # The budget, written as http.client writes a header line once it has
            # checked it: its digits need no check.  Sent through putheader()
            # like the request's own headers, one header cost about 1% of a call
            # (two regular expressions, encodings, urllib3's checks).
            self._budget_line = None
            self._output(line)  # type: ignore[attr-defined]

    def connect(self) -> None:
        _attach_to_call(self)
        super().connect()


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    """The HTTPS counterpart of :class:`_WatchedHTTPConnection` (its TLS handshake,
    made before the request, is watched too)."""


def _without_budget(headers: Any, deadline: _Deadline) -> Any:
    """The headers of an attempt, without the ``Request-Timeout`` the call wrote on
    its request (the connection writes the attempt's own value)."""
    if headers is deadline.request_headers:
        # urllib3 hands each attempt a copy of the request's headers, except
        # through a proxy's tunnel: the request keeps its own.
        headers = headers.copy()
    if isinstance(headers, CaseInsensitiveDict):
        headers._store.pop(_DEADLINE_KEY, None)  # type: ignore[attr-defined]  # its own pop() looks the name up twice
        return headers
    return {name: value for name, value in headers.items() if name.lower() != _DEADLINE_KEY}


_DEADLINE_KEY: Final = DEADLINE_HEADER.lower()


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

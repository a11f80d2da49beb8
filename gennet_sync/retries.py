"""Which attempts of a ``ServiceSession`` call are retried, and how long it waits.

:class:`ServiceRetry` is urllib3's ``Retry`` made safe for a synchronous worker (a
long ``Retry-After`` is not slept, a read timeout is not retried, no wait runs past
the call's total time limit, the service's retry budget is asked first), and
:func:`make_retry` builds the one a session mounts.  Apart from the session
because it runs inside urllib3, once per attempt, not once per call.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Collection
from types import TracebackType
from typing import TYPE_CHECKING, Final

from urllib3.exceptions import MaxRetryError, ReadTimeoutError, ResponseError
from urllib3.util.retry import Retry

from gennet_sync import tracing as _tracing
from gennet_sync.downstream import _retry_after_seconds, _small_body
from gennet_sync.failures import _service_failed
from gennet_sync.transport import _Call, _call_in_progress, _TotalTimeoutExceeded

if TYPE_CHECKING:
    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

__all__ = ["DEFAULT_RETRY_AFTER_MAX", "ServiceRetry", "make_retry"]

#: Longest ``Retry-After`` (seconds) a retry waits for; a sync worker must not sleep for minutes.
DEFAULT_RETRY_AFTER_MAX: Final = 5

#: Told of each retry about to be made, with its call (``None`` outside a
#: ``ServiceSession`` call).  ``gennet_sync.http_client`` sets it to tell its
#: ``call_observer``, which this module, below it, cannot import.
_retry_listener: Callable[[_Call | None], None] | None = None


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
        if _retry_listener is not None:
            _retry_listener(call)
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

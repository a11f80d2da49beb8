"""Deadlines across hops: the time a request has left, carried from service to service.

A request's budget arrives in the ``Request-Timeout`` header (seconds left, as a
decimal), is bound to the context that serves it, and caps every
``ServiceSession`` call made for it; each call forwards what is left.  This
module is the pure part: parsing, formatting and the context variable.  No
Flask, no requests; the Flask side is :mod:`gennet_sync.deadline_flask`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Final

from gennet_sync.context import current_request_id
from gennet_sync.exceptions import DeadlineExceededError

__all__ = [
    "DEADLINE_HEADER",
    "FORWARD_MARGIN",
    "MAX_BUDGET",
    "bind_request_deadline",
    "check_deadline",
    "deadline_scope",
    "format_budget",
    "forwarded_budget",
    "parse_budget",
    "time_left",
]

#: The header carrying a request's remaining time budget, in seconds.
DEADLINE_HEADER: Final = "Request-Timeout"
#: The largest budget believed, in seconds (a day); a larger one is ignored.
MAX_BUDGET: Final = 86400.0
#: Seconds taken off the budget a call forwards.  The callee starts its clock
#: when it starts serving the request, after the request crossed the network and
#: waited for a worker thread; without the margin each hop would gain that time.
FORWARD_MARGIN: Final = 0.02

# At most nine digits before the point and nine after: anything longer, signed,
# in exponent form or not ASCII is not a budget, and is ignored as if absent.
_BUDGET = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?")

#: Who bound the deadline in force: a request ID (the Flask side binds one per
#: request, valid only while that request is served) or :data:`_SCOPE`.
_SCOPE: Final = object()

#: When the budget of the work in this context runs out, on ``time.monotonic``'s
#: scale, and who bound it.
_deadline: ContextVar[tuple[float, object] | None] = ContextVar(
    "gennet_sync_deadline", default=None
)


def parse_budget(value: str | None) -> float | None:
    """Seconds a ``Request-Timeout`` value grants; ``None`` when absent or not a budget.

    Example::

        >>> parse_budget("1.5"), parse_budget("0"), parse_budget("-1"), parse_budget("1e9")
        (1.5, 0.0, None, None)

    Args:
        value: The header's value as received.

    Returns:
        The budget in seconds (0 means none left), or ``None``: ignore it.
    """
    if value is None:
        return None
    value = value.strip()
    if _BUDGET.fullmatch(value) is None:
        return None
    seconds = float(value)
    return seconds if seconds <= MAX_BUDGET else None


def format_budget(seconds: float) -> str:
    """``seconds`` as a ``Request-Timeout`` value: milliseconds, rounded down.

    Rounded down so a callee is never told it has more time than its caller has.
    """
    if not seconds > 0:  # NaN included
        return "0"
    millis = math.floor(min(seconds, MAX_BUDGET) * 1000)
    return f"{millis // 1000}.{millis % 1000:03d}"


def forwarded_budget(seconds: float) -> str:
    """The ``Request-Timeout`` a call with ``seconds`` left sends: less :data:`FORWARD_MARGIN`."""
    return format_budget(seconds - FORWARD_MARGIN)


def time_left(clock: Callable[[], float] = time.monotonic) -> float | None:
    """Seconds left of the deadline in force in this context; ``None``: there is none.

    A deadline bound for a request (by the Flask side) holds only while that
    request is served: once it is over, the thread that served it has none.

    Args:
        clock: The clock the deadline was bound with.
    """
    bound = _deadline.get()
    if bound is None:
        return None
    at, owner = bound
    if owner is not _SCOPE and (owner is None or owner != current_request_id()):
        return None  # left behind by a request this thread served earlier
    return at - clock()


def check_deadline(service: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Raise :class:`~gennet_sync.exceptions.DeadlineExceededError` when no time is left.

    For an app's own long loops: stop working for a caller that has given up.

    Example::

        for item in batch:
            check_deadline()
            process(item)

    Args:
        service: Named in the error's metadata.
        clock: The clock the deadline was bound with.

    Raises:
        DeadlineExceededError: The deadline in force has passed.
    """
    left = time_left(clock)
    if left is not None and left <= 0:
        raise DeadlineExceededError(
            "The request's deadline has passed", service=service, metadata={"time_left": 0}
        )


def bind_request_deadline(
    seconds: float | None, clock: Callable[[], float] = time.monotonic
) -> None:
    """Bind the budget of the request being served (``None``: it has none).

    Called by the Flask side once per request, before the view; the binding
    lapses when the request's ID is unbound.  Outside a request (no request ID
    bound) it binds nothing that any call would obey: use :class:`deadline_scope`.
    """
    if seconds is None:
        _deadline.set(None)
    else:
        _deadline.set((clock() + seconds, current_request_id()))


class deadline_scope:  # noqa: N801 - used like a function, as contextlib's helpers are
    """Give the work inside ``with`` at most ``seconds``, within any deadline already in force.

    For a job outside a request, or a part of a view that must finish sooner:
    every ``ServiceSession`` call inside it is capped by what is left and forwards
    it to the service it calls.

    Example::

        with deadline_scope(2.0):
            session.get("/networks/abc")   # at most 2 s in all, retries included

    Args:
        seconds: The budget; the tighter of it and an outer deadline applies.
        clock: The clock (``time.monotonic``, as ``ServiceSession`` uses).
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self.seconds = seconds
        self._clock = clock
        self._tokens: list[Token[tuple[float, object] | None]] = []

    def __enter__(self) -> deadline_scope:
        now = self._clock()
        left = time_left(self._clock)
        at = now + (self.seconds if left is None or self.seconds < left else left)
        self._tokens.append(_deadline.set((at, _SCOPE)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _deadline.reset(self._tokens.pop())

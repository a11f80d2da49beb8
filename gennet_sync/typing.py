"""Type aliases shared by the breaker modules: callables, protocols and ParamSpecs.

One place for them, so a signature reads the same everywhere (the way
``flask.typing`` does it).  This module imports nothing from the package, so
every other module can import it.  The listener protocol lives beside the event
it receives (:class:`gennet_sync.breaker_policy.StateListener`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeAlias, TypeVar

__all__ = [
    "Clock",
    "ExceptionPredicate",
    "OpenDurationPolicy",
    "P",
    "R",
    "RandomSource",
    "ResultPredicate",
]

#: The parameters of a function wrapped by a breaker decorator.
P = ParamSpec("P")
#: The return type of a function wrapped by a breaker decorator.
R = TypeVar("R")

#: A monotonic clock in seconds (``time.monotonic``); tests inject a fake one.
Clock: TypeAlias = Callable[[], float]
#: A source of uniform floats in ``[0, 1)`` (``random.random``); tests inject a fixed one.
RandomSource: TypeAlias = Callable[[], float]
#: Decides something about an exception a protected call raised.
ExceptionPredicate: TypeAlias = Callable[[BaseException], bool]
#: Decides something about the value a protected call returned.
ResultPredicate: TypeAlias = Callable[[Any], bool]


class OpenDurationPolicy(Protocol):
    """How long a breaker stays OPEN after its ``openings``-th consecutive opening.

    ``openings`` is 1 the first time the breaker opens after being CLOSED, 2 when
    the first trial after that fails, and so on; a successful close starts again
    at 1.

    Example::

        def doubling(recovery_timeout: float, openings: int, /) -> float:
            return min(recovery_timeout * 2 ** (openings - 1), 600.0)

        breaker = CircuitBreaker(recovery_timeout=5, open_duration=doubling)
    """

    def __call__(self, recovery_timeout: float, openings: int, /) -> float: ...

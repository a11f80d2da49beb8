"""Type aliases shared by the breaker modules: callables, protocols and ParamSpecs.

One place for them, so a signature reads the same everywhere (the way
``flask.typing`` does it).  Nothing here runs at import time beyond building
the aliases; the event class is imported for type checkers only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeAlias, TypeVar

if TYPE_CHECKING:
    from gennet_sync._breaker_policy import StateChangeEvent

__all__ = [
    "Clock",
    "ExceptionPredicate",
    "OpenDurationPolicy",
    "P",
    "R",
    "RandomSource",
    "ResultPredicate",
    "StateListener",
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


class StateListener(Protocol):
    """Called with every state change of a breaker (outside its lock).

    Example::

        def log_change(event: StateChangeEvent, /) -> None:
            logger.info("%s: %s -> %s", event.name, event.old_state, event.new_state)

        breaker = CircuitBreaker(name="grn", listeners=[log_change])
    """

    def __call__(self, event: StateChangeEvent, /) -> None: ...


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

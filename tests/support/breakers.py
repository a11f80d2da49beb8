"""Small moves the breaker tests make: a call that succeeds, tripping a breaker,
and catching a rejection."""

from __future__ import annotations

import pytest

from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError, CircuitState

__all__ = ["ok", "rejected", "trip"]


def ok() -> str:
    """A protected function that succeeds."""
    return "ok"


def trip(breaker: CircuitBreaker) -> None:
    """Fail calls through ``breaker`` until it is OPEN (at most 100)."""
    for _ in range(100):
        if breaker.state is CircuitState.OPEN:
            return
        breaker.acquire().failure()
    raise AssertionError("the breaker never opened")


def rejected(breaker: CircuitBreaker) -> CircuitBreakerError:
    """The error ``breaker`` rejects a call with; fails the test if it admits it."""
    with pytest.raises(CircuitBreakerError) as info:
        breaker.acquire()
    return info.value

"""Retry budgets: retries to one service limited to a share of its recent calls.

During an outage every call fails and, with per-call retries alone, every call
is sent ``1 + retries`` times: the load on a struggling service multiplies.  A
budget lets retries add at most ``ratio`` of the calls made in the last
``window`` seconds (plus ``min_per_second``, so a quiet service still gets its
retries).  Pure: no Flask, no requests; time comes from an injected clock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_RETRY_BUDGET",
    "RetryBudget",
    "RetryBudgetConfig",
    "clear_retry_budgets",
    "get_retry_budget",
    "remove_retry_budget",
]


@dataclass(frozen=True)
class RetryBudgetConfig:
    """Settings of a :class:`RetryBudget`, validated at construction.

    Attributes:
        ratio: Retries allowed per call made in the window (0.2: at most one
            retry for five calls); 0: only the ``min_per_second`` allowance.
        window: Seconds of history the budget counts (in ``buckets`` steps).
        min_per_second: Retries allowed per second of the window whatever the
            traffic; 0: none beyond ``ratio``.
        buckets: Steps the window moves in; more is finer and costs a little more.
    """

    ratio: float = 0.2
    window: float = 10.0
    min_per_second: float = 1.0
    buckets: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1000:
            raise ValueError(f"ratio must be between 0 and 1000, got {self.ratio!r}")
        if not 0 < self.window <= 86400:
            raise ValueError(f"window must be > 0 and at most a day, got {self.window!r}")
        if not 0 <= self.min_per_second <= 1e6:
            raise ValueError(f"min_per_second must be >= 0, got {self.min_per_second!r}")
        if isinstance(self.buckets, bool) or not 1 <= self.buckets <= 1000:
            raise ValueError(f"buckets must be between 1 and 1000, got {self.buckets!r}")


#: The budget every ``ServiceSession`` has unless told otherwise: retries add at
#: most 20% to the calls of the last 10 s, plus one a second.
DEFAULT_RETRY_BUDGET: Final = RetryBudgetConfig()


class RetryBudget:
    """Counts calls and retries per time bucket and says whether one more retry fits.

    Exact under threads: each operation is a few integer updates under a lock,
    never held across a call.

    Example::

        budget = RetryBudget(RetryBudgetConfig(ratio=0.1))
        budget.record_call()
        if budget.try_retry():
            ...  # send the call again

    Args:
        config: The settings.
        clock: Seconds on a monotonic scale (``time.monotonic``).

    Attributes:
        retries_refused: Retries the budget refused since creation.
    """

    def __init__(
        self,
        config: RetryBudgetConfig = DEFAULT_RETRY_BUDGET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._step = config.window / config.buckets
        self._calls = [0] * config.buckets
        self._retries = [0] * config.buckets
        self._calls_total = 0
        self._retries_total = 0
        self._current = math.floor(clock() / self._step)  # the bucket being filled
        self._floor = config.min_per_second * config.window
        self._lock = threading.Lock()
        self.retries_refused = 0

    def _advance(self) -> int:
        """Empty the buckets that left the window; the index of the current one."""
        now = math.floor(self._clock() / self._step)
        buckets = self.config.buckets
        if now > self._current:
            for tick in range(self._current + 1, min(now, self._current + buckets) + 1):
                index = tick % buckets
                self._calls_total -= self._calls[index]
                self._retries_total -= self._retries[index]
                self._calls[index] = self._retries[index] = 0
            self._current = now
        return self._current % buckets

    def record_call(self) -> None:
        """Count a call (its first attempt; retries are counted by :meth:`try_retry`)."""
        with self._lock:
            index = self._advance()
            self._calls[index] += 1
            self._calls_total += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget; ``False`` (and nothing taken) when it is spent."""
        with self._lock:
            index = self._advance()
            if self._retries_total + 1 > self._calls_total * self.config.ratio + self._floor:
                self.retries_refused += 1
                return False
            self._retries[index] += 1
            self._retries_total += 1
            return True

    def refund(self) -> None:
        """Give back a retry :meth:`try_retry` took that was never sent.

        Taken from the newest bucket still holding a retry: the budget is as if
        the retry had not been asked for (when that bucket has left the window,
        the retry no longer counts anyway).
        """
        with self._lock:
            index = self._advance()
            buckets = self.config.buckets
            for back in range(buckets):
                slot = (index - back) % buckets
                if self._retries[slot]:
                    self._retries[slot] -= 1
                    self._retries_total -= 1
                    return

    @property
    def calls(self) -> int:
        """Calls counted in the window."""
        with self._lock:
            self._advance()
            return self._calls_total

    @property
    def retries(self) -> int:
        """Retries taken in the window."""
        with self._lock:
            self._advance()
            return self._retries_total

    def __repr__(self) -> str:
        return f"<RetryBudget {self.retries}/{self.calls} retries/calls, {self.config}>"


_registry: dict[str, RetryBudget] = {}
_registry_lock = threading.Lock()


def get_retry_budget(name: str, config: RetryBudgetConfig = DEFAULT_RETRY_BUDGET) -> RetryBudget:
    """The process's retry budget for service ``name``, made on first use.

    Every ``ServiceSession`` for one service shares it, as they share its breaker.

    Raises:
        ValueError: A budget of that name exists with another configuration.
    """
    with _registry_lock:
        budget = _registry.get(name)
        if budget is None:
            budget = _registry[name] = RetryBudget(config)
        elif budget.config != config:
            raise ValueError(f"retry budget {name!r} exists with {budget.config}")
        return budget


def remove_retry_budget(name: str) -> None:
    """Forget the retry budget of service ``name``."""
    with _registry_lock:
        _registry.pop(name, None)


def clear_retry_budgets() -> None:
    """Forget every service's retry budget (sessions made before keep theirs)."""
    with _registry_lock:
        _registry.clear()

"""Retry budgets: retries to one service limited to a share of its recent calls.

During an outage every call fails and, with per-call retries alone, every call
is sent ``1 + retries`` times: the load on a struggling service multiplies.  A
budget lets retries add at most ``ratio`` of the calls made in the last
``window`` seconds (plus ``min_per_second``, so a quiet service still gets its
retries).  Pure: no Flask, no requests; time comes from an injected clock.

Shared fleet-wide (``RetryBudgetConfig(shared=True)`` in a ``ServiceSession``,
or a ``storage=`` given to :class:`RetryBudget`), the ratio is judged on the
calls and retries of every process that syncs with the same storage.  Each
process keeps counting locally; when it decides on a retry and its last sync is
``sync_interval`` old, it pushes the counts it gathered since and reads the
fleet's totals in one call to the storage, so a successful call never waits on
it.  When the storage does not answer, the budget decides on its local counts.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gennet_sync.storage import RetryBudgetStorage, RetryTotals

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
        shared: Judge the ratio on the fleet's calls and retries through the
            breaker registry's default storage (``GENNET_BREAKER_STORAGE``), when
            it is a shared one; ``min_per_second`` is then the fleet's allowance.
    """

    ratio: float = 0.2
    window: float = 10.0
    min_per_second: float = 1.0
    buckets: int = 10
    shared: bool = False

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
        name: The service, naming the budget in a shared storage.
        storage: A storage the fleet's processes share (e.g. ``RedisStorage``):
            the ratio is then judged on the fleet's counts.  One that is not
            shared, or cannot count retry budgets, leaves the budget local.

    Raises:
        ValueError: A shared storage without a ``name``.

    Attributes:
        retries_refused: Retries the budget refused since creation.
    """

    def __init__(
        self,
        config: RetryBudgetConfig = DEFAULT_RETRY_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        *,
        name: str | None = None,
        storage: object | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self._storage: RetryBudgetStorage | None = None
        if (
            storage is not None
            and getattr(storage, "shared", False)
            and isinstance(storage, RetryBudgetStorage)
        ):
            if name is None:
                raise ValueError("a retry budget shared through a storage needs a name")
            self._storage = storage
        # Counts since the last push to the storage, and the fleet's totals it
        # answered (None: not known, or the storage did not answer: local decisions).
        self._unsynced_calls = 0
        self._unsynced_retries = 0
        self._fleet: RetryTotals | None = None
        self._synced_at = -math.inf
        self._syncing = False
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
        # The lock taken by hand: ``with`` costs twice as much, on every call.
        lock = self._lock
        lock.acquire()
        try:
            index = self._advance()
            self._calls[index] += 1
            self._calls_total += 1
            self._unsynced_calls += 1
        finally:
            lock.release()

    def try_retry(self) -> bool:
        """Take one retry from the budget; ``False`` (and nothing taken) when it is spent.

        With a shared storage, first syncs with it when the last sync is
        ``sync_interval`` old (one call, which returns at once while the storage
        backs off from an outage), and judges on the fleet's totals.
        """
        if self._storage is not None:
            self._sync(self._storage)
        with self._lock:
            index = self._advance()
            fleet = self._fleet
            if fleet is None:
                calls, retries = self._calls_total, self._retries_total
            else:
                # The fleet's totals as of the last sync, plus what this process did since.
                calls = fleet.calls + self._unsynced_calls
                retries = fleet.retries + self._unsynced_retries
            if retries + 1 > calls * self.config.ratio + self._floor:
                self.retries_refused += 1
                return False
            self._retries[index] += 1
            self._retries_total += 1
            self._unsynced_retries += 1
            return True

    def _sync(self, storage: RetryBudgetStorage) -> None:
        """Push the counts since the last sync and take the fleet's totals, when due.

        One thread at a time, never under the lock: the others decide on the
        totals of the previous sync meanwhile.
        """
        with self._lock:
            now = self._clock()
            if self._syncing or now - self._synced_at < storage.sync_interval:
                return
            self._syncing = True
            self._synced_at = now
            calls, retries = self._unsynced_calls, self._unsynced_retries
            self._unsynced_calls = self._unsynced_retries = 0
        totals: RetryTotals | None = None
        try:
            totals = storage.sync_retry_budget(
                self.name or "",
                calls=calls,
                retries=retries,
                window_seconds=max(1, math.ceil(self.config.window)),
            )
        except Exception:  # a storage must not raise; if one does, decide locally
            totals = None
        finally:
            with self._lock:
                self._syncing = False
                # Unanswered: the counts pushed are lost to the fleet (this process
                # still has them locally) and decisions are local until a sync answers.
                self._fleet = totals

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
                    self._unsynced_retries = max(0, self._unsynced_retries - 1)
                    return

    @property
    def calls(self) -> int:
        """Calls counted in the window."""
        with self._lock:
            self._advance()
            return self._calls_total

    @property
    def shared(self) -> bool:
        """Whether the budget syncs with a shared storage."""
        return self._storage is not None

    @property
    def fleet_totals(self) -> RetryTotals | None:
        """The fleet's totals at the last sync; ``None`` when local (or unanswered)."""
        with self._lock:
            return self._fleet

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


def get_retry_budget(
    name: str,
    config: RetryBudgetConfig = DEFAULT_RETRY_BUDGET,
    storage: object | None = None,
) -> RetryBudget:
    """The process's retry budget for service ``name``, made on first use.

    Every ``ServiceSession`` for one service shares it, as they share its breaker.
    ``storage`` is used when the budget is made with ``config.shared`` (see
    :class:`RetryBudget`).

    Raises:
        ValueError: A budget of that name exists with another configuration.
    """
    with _registry_lock:
        budget = _registry.get(name)
        if budget is None:
            budget = _registry[name] = RetryBudget(
                config, name=name, storage=storage if config.shared else None
            )
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

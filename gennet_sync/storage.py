"""Where a circuit breaker's state lives: this process, or a whole fleet.

The breaker always runs its state machine locally (that is what keeps the
success path free of I/O).  A *storage* decides whether that local view is
shared with other processes:

- :class:`MemoryStorage` (the default): nothing is shared; the breaker never
  calls any other method of it.
- ``RedisStorage`` (extra ``[redis]``, :mod:`gennet_sync.redis_storage`): the
  fleet-wide failure count, OPEN state, HALF_OPEN trial slots and the calls of
  a time-based rate window live in Redis.

The breaker calls a shared storage at these points only, never holding its lock
while doing so:

=====================================  =========================================
breaker event                          storage call
=====================================  =========================================
admission, local view older than       :meth:`BreakerStorage.load`
``sync_interval``
the same, for a breaker with a time    :meth:`WindowStorage.sync_window`
window and a storage that has it       (instead of ``load``: the same single
                                       call also pushes this process's window
                                       outcomes and fetches the fleet's totals)
failure recorded in CLOSED (with a     :meth:`BreakerStorage.record_failure`
``failure_threshold``)
success in CLOSED while the local      :meth:`BreakerStorage.reset_failures`
view counts failures (so a healthy
service costs no round trip)
the breaker opens by its own decision  :meth:`BreakerStorage.set_open`
(trial failed, rate window,
``max_half_open_wait`` over, forced)
a trial success closes it, reset(),    :meth:`BreakerStorage.set_closed`
``max_half_open_wait`` over with
``on_half_open_timeout="close"``
admission in HALF_OPEN (mode NORMAL)   :meth:`BreakerStorage.acquire_trial`
a call that took a shared trial slot   :meth:`BreakerStorage.release_trial`
is recorded                            (after the ``set_open``/``set_closed``
                                       its outcome caused)
=====================================  =========================================

Every method of a shared storage must return quickly and never raise: when the
backend is unavailable it returns ``None`` (or does nothing) and the breaker
carries on with its local state (and its local rate window).  When it answers
again, the fleet's state wins at the next sync: a process that tripped on its
own during the outage adopts the fleet's CLOSED rather than pushing its OPEN,
since the outage may have been its own network's, and a fleet-wide OPEN would
then cut every process off a healthy service (the fleet's count trips it again
after ``failure_threshold`` more failures if the service is still down).

A fleet-wide rate window is optional: a storage that also has
:meth:`WindowStorage.sync_window` aggregates the failure-rate and slow-call-rate
window of ``window_type="time"`` breakers across the fleet.  Such a breaker
judges its rates on the fleet's totals as of its last sync plus the outcomes it
recorded since (so a fleet trip on rates lags by at most ``sync_interval``),
and ``minimum_calls`` counts the fleet's calls.  A count-based window (``"the
last N calls"``) has no fleet-wide order, so it always stays per process.

This module imports neither Flask nor requests and does no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

__all__ = [
    "BreakerStorage",
    "CircuitState",
    "MemoryStorage",
    "RetryBudgetStorage",
    "RetryTotals",
    "SharedState",
    "WindowStorage",
    "WindowTotals",
]


class CircuitState(enum.StrEnum):
    """The three states of a circuit breaker (a ``str``: ``"closed"``...).

    Example::

        if breaker.state is CircuitState.OPEN:
            log.warning("%s is cut off", breaker.name)
        assert CircuitState("half_open") is CircuitState.HALF_OPEN
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class WindowTotals:
    """The calls a rate window holds: a breaker's own, or the whole fleet's.

    Attributes:
        calls: Calls that succeeded or failed (ignored calls do not count).
        failures: Of those, the failures.
        slow_calls: Of those, the slow ones.
        closings: For the fleet's window, how many times the fleet has been
            closed: numbers the CLOSED period these totals belong to.  Passed
            back with the next :meth:`WindowStorage.sync_window`, so outcomes
            recorded in an earlier CLOSED period never join a later one.  0 for
            a window kept in one process.

    Example::

        totals = WindowTotals(calls=40, failures=22, slow_calls=3, closings=7)
        failure_rate = totals.failures / totals.calls  # 0.55
    """

    calls: int = 0
    failures: int = 0
    slow_calls: int = 0
    closings: int = 0


@dataclass(frozen=True)
class SharedState:
    """A breaker's fleet-wide state as a shared storage last saw it.

    Attributes:
        state: The shared state.  ``HALF_OPEN`` means the OPEN period has ended
            and trial calls may be attempted (each needs :meth:`acquire_trial`).
        failure_count: Consecutive failures counted across the fleet (CLOSED only).
        open_remaining: Seconds until the OPEN period ends; 0.0 unless OPEN;
            ``inf`` for an OPEN with no end (set by hand, until it is undone).
        window: The fleet's rate-window totals; set by
            :meth:`WindowStorage.sync_window` only.

    Example::

        shared = storage.load("payments")
        if shared is not None and shared.state is CircuitState.OPEN:
            print(f"the fleet retries in {shared.open_remaining:.1f} s")
    """

    state: CircuitState
    failure_count: int = 0
    open_remaining: float = 0.0
    window: WindowTotals | None = None


@runtime_checkable
class BreakerStorage(Protocol):
    """What a breaker needs from a storage backend.  See the module docstring.

    Example::

        storage: BreakerStorage = RedisStorage("redis://cache:6379/0")
        breaker = CircuitBreaker(name="payments", storage=storage)
        assert isinstance(MemoryStorage(), BreakerStorage)
    """

    #: False: state is per process and the breaker calls none of the methods below.
    shared: ClassVar[bool]
    #: Longest time (seconds) the breaker may act on its local view before ``load``.
    sync_interval: float

    def load(self, name: str) -> SharedState | None:
        """The shared state of breaker ``name``, or ``None`` when unavailable."""

    def record_failure(
        self, name: str, *, failure_threshold: int, open_for: float
    ) -> SharedState | None:
        """Atomically count one failure fleet-wide; open for ``open_for`` s at the threshold.

        Returns:
            The shared state after counting, or ``None`` when unavailable.
        """

    def reset_failures(self, name: str) -> None:
        """A success in CLOSED: the consecutive-failure count starts again at 0."""

    def set_open(self, name: str, open_for: float) -> None:
        """Open breaker ``name`` fleet-wide for ``open_for`` seconds.

        ``open_for`` is always finite.  A breaker forced open by hand
        (``CircuitBreaker.open()``) passes a year, and :meth:`set_closed` ends it
        when an operator calls ``reset()``.
        """

    def set_closed(self, name: str) -> None:
        """Close breaker ``name`` fleet-wide (a trial succeeded, or ``reset()``)."""

    def acquire_trial(self, name: str, *, max_calls: int, lease: float) -> bool | None:
        """Take one of ``max_calls`` fleet-wide HALF_OPEN trial slots for at most ``lease`` s.

        ``lease`` is how long the trial call can run, plus a margin: a slot whose
        process never releases it (the process died) is free again after it.

        Returns:
            True when a slot was taken, False when all are taken, ``None`` when
            unavailable (the breaker then decides with its local slots).
        """

    def release_trial(self, name: str) -> None:
        """Give back a trial slot taken by :meth:`acquire_trial`.

        Also right after a failed command (the trial's outcome write): a release
        that cannot be sent now should be sent again once the backend answers,
        or the fleet's trials wait for the lease to end.
        """


@runtime_checkable
class WindowStorage(BreakerStorage, Protocol):
    """A shared storage that also aggregates time-based rate windows fleet-wide.

    Example::

        shared = storage.sync_window(
            "payments", calls=12, failures=3, slow_calls=0, window_seconds=60, closings=4
        )
        if shared is not None and shared.window is not None:
            print(shared.window.failures / max(1, shared.window.calls))
    """

    def sync_window(
        self,
        name: str,
        *,
        calls: int,
        failures: int,
        slow_calls: int,
        window_seconds: int,
        closings: int | None = None,
    ) -> SharedState | None:
        """Add this process's new window outcomes; the shared state with the fleet's totals.

        One call does what :meth:`BreakerStorage.load` does and more: the
        outcomes this process recorded since its previous ``sync_window``
        (deltas, possibly all 0) join the fleet's window, unless the fleet is
        no longer in the CLOSED period they were recorded in (it is OPEN or
        HALF_OPEN, or its ``closings`` differs from ``closings``; ``None``
        means not known: they join), and the returned state's ``window`` holds
        the fleet's totals over the last ``window_seconds`` seconds.

        Returns:
            The shared state, or ``None`` when unavailable (the outcomes are
            then not counted fleet-wide: the breaker decides with its local
            window).
        """


@dataclass(frozen=True)
class RetryTotals:
    """The calls and retries a fleet-wide retry budget counts over its window.

    Attributes:
        calls: First attempts of calls to the service, every process's.
        retries: Retries sent to it, every process's.

    Example::

        totals = RetryTotals(calls=500, retries=60)
        spent = totals.retries >= totals.calls * 0.2  # False: 40 more fit
    """

    calls: int = 0
    retries: int = 0


@runtime_checkable
class RetryBudgetStorage(Protocol):
    """A shared storage that also counts retry budgets fleet-wide.

    A :class:`~gennet_sync.retry_budget.RetryBudget` given such a storage
    calls :meth:`sync_retry_budget` at most once per ``sync_interval``, and
    only when it decides on a retry (never on a call's success path).

    Example::

        totals = storage.sync_retry_budget("payments", calls=12, retries=2, window_seconds=10)
        if totals is not None:
            print(f"{totals.retries} retries for {totals.calls} calls fleet-wide")
    """

    #: False: per process; the budget never calls :meth:`sync_retry_budget`.
    shared: ClassVar[bool]
    #: Longest time (seconds) a budget decides on the fleet's totals before a sync.
    sync_interval: float

    def sync_retry_budget(
        self, name: str, *, calls: int, retries: int, window_seconds: int
    ) -> RetryTotals | None:
        """Add this process's calls and retries since its last sync; the fleet's totals.

        Returns:
            The fleet's calls and retries over the last ``window_seconds``
            seconds (these included), or ``None`` when unavailable (they are
            then not counted fleet-wide: the budget decides on its local counts).
        """


class MemoryStorage:
    """Per-process state: the breaker keeps everything in its own fields.

    The default.  No dependency, no I/O; the breaker never calls the methods
    below (``shared`` is False), which exist so the class satisfies
    :class:`BreakerStorage`.

    Example::

        breaker = CircuitBreaker(name="grn", storage=MemoryStorage())  # same as storage=None
    """

    shared: ClassVar[bool] = False
    sync_interval: float = float("inf")

    def load(self, name: str) -> SharedState | None:
        return None

    def record_failure(
        self, name: str, *, failure_threshold: int, open_for: float
    ) -> SharedState | None:
        return None

    def reset_failures(self, name: str) -> None:
        return None

    def set_open(self, name: str, open_for: float) -> None:
        return None

    def set_closed(self, name: str) -> None:
        return None

    def acquire_trial(self, name: str, *, max_calls: int, lease: float) -> bool | None:
        return None

    def release_trial(self, name: str) -> None:
        return None

"""Values the circuit breaker is built from: its config, policies, windows and events.

Everything here is a plain value or a small single-threaded helper: no locks, no
I/O, no clock reads.  :mod:`gennet_sync.circuit_breaker` owns the state machine
and calls into these under its lock.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field, fields
from typing import Final, Literal, Protocol, TypedDict

from gennet_sync.storage import CircuitState, WindowTotals
from gennet_sync.typing import ExceptionPredicate, OpenDurationPolicy, RandomSource, ResultPredicate

__all__ = [
    "TRANSITION_HISTORY",
    "BreakerConfig",
    "BreakerMetrics",
    "BreakerMode",
    "BreakerOptions",
    "BreakerStatus",
    "ExponentialOpenDuration",
    "FixedOpenDuration",
    "Outcome",
    "StateChangeEvent",
    "StateListener",
    "TransitionReason",
    "TransitionRecord",
]


class Outcome(enum.Enum):
    """How one call counts: as in resilience4j, a call is a failure, ignored, or a success.

    Example::

        permit = breaker.acquire()
        permit.record(Outcome.IGNORED)  # a cancelled call: frees its trial slot, counts nowhere
    """

    SUCCESS = "success"
    FAILURE = "failure"
    #: Counts neither way (and frees a HALF_OPEN trial slot).
    IGNORED = "ignored"


class BreakerMode(enum.StrEnum):
    """Operational mode, set by hand; ``NORMAL`` unless an operator changes it.

    Example::

        breaker.metrics_only()  # watch a new dependency's rates without ever rejecting
        assert breaker.mode is BreakerMode.METRICS_ONLY
        breaker.reset()  # back to NORMAL
    """

    #: The state machine runs as configured.
    NORMAL = "normal"
    #: OPEN until ``reset()``: isolate a service by hand.
    FORCED_OPEN = "forced_open"
    #: Always CLOSED, never rejects, never trips; only the call counters count.
    DISABLED = "disabled"
    #: Always CLOSED and never rejects, but records calls and failure rates.
    METRICS_ONLY = "metrics_only"


class TransitionReason(enum.StrEnum):
    """Why a breaker changed state (the ``reason`` of a :class:`StateChangeEvent`).

    Example::

        def on_change(event: StateChangeEvent) -> None:
            if event.reason is TransitionReason.SHARED_STATE:
                log.info("%s: another process decided %s", event.name, event.new_state)
    """

    FAILURE_THRESHOLD = "failure_threshold"
    FAILURE_RATE = "failure_rate"
    SLOW_CALL_RATE = "slow_call_rate"
    RECOVERY_TIMEOUT = "recovery_timeout"
    TRIAL_SUCCEEDED = "trial_succeeded"
    TRIAL_FAILED = "trial_failed"
    HALF_OPEN_WAIT_EXPIRED = "half_open_wait_expired"
    FORCED_OPEN = "forced_open"
    RESET = "reset"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"
    #: The shared storage reported another state (another process decided).
    SHARED_STATE = "shared_state"


@dataclass(frozen=True, slots=True)
class StateChangeEvent:
    """One state change of a breaker, as listeners receive it.

    Attributes:
        name: The breaker's name.
        old_state: The state before the change.
        new_state: The state after it.
        at: The breaker's clock when the change happened (monotonic seconds).
        reason: Why it changed.

    Example::

        def alert(event: StateChangeEvent) -> None:
            if event.new_state is CircuitState.OPEN:
                pager.send(f"{event.name} opened ({event.reason.value})")

        breaker.add_listener(alert)
    """

    name: str
    old_state: CircuitState
    new_state: CircuitState
    at: float
    reason: TransitionReason


class StateListener(Protocol):
    """Called with every state change of a breaker (outside its lock).

    Example::

        def log_change(event: StateChangeEvent, /) -> None:
            logger.info("%s: %s -> %s", event.name, event.old_state, event.new_state)

        breaker = CircuitBreaker(name="grn", listeners=[log_change])
    """

    def __call__(self, event: StateChangeEvent, /) -> None: ...


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """A snapshot of one breaker's counters, taken under its lock.

    Counters are cumulative since the breaker was created; the rates cover the
    sliding window (``None`` when no window is configured or it holds fewer than
    ``minimum_calls`` calls).  A time window shared through a storage that
    aggregates it (``RedisStorage``) reports the fleet's window: its totals at
    the last sync plus this process's calls since.

    Attributes:
        name: The breaker's name.
        state: Its state when the snapshot was taken.
        mode: Its operational mode.
        calls: Calls that reported an outcome (successes + failures + ignored).
        successes: Calls recorded as successes.
        failures: Calls recorded as failures.
        ignored: Calls that counted neither way.
        rejections: Calls refused without running.
        slow_calls: Calls that took at least ``slow_call_duration``.
        consecutive_failures: Failures since the last success in CLOSED.
        failure_rate: Failures / calls in the window, or ``None``.
        slow_call_rate: Slow calls / calls in the window, or ``None``.
        window_calls: Calls currently in the window.
        opened_at: Clock value when it last opened, ``None`` unless OPEN.
        retry_after: Seconds until the next trial call is let through (``None``
            when CLOSED, or forced open).

    Example::

        snapshot = breaker.metrics()
        gauge.set(snapshot.failure_rate or 0.0, labels={"service": snapshot.name})
    """

    name: str
    state: CircuitState
    mode: BreakerMode
    calls: int
    successes: int
    failures: int
    ignored: int
    rejections: int
    slow_calls: int
    consecutive_failures: int
    failure_rate: float | None
    slow_call_rate: float | None
    window_calls: int
    opened_at: float | None
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One state change in a breaker's history (see :class:`BreakerStatus`).

    Attributes:
        old_state: The state before the change.
        new_state: The state after it.
        reason: Why it changed.
        at: Wall-clock time (``time.time()``) when the breaker processed the
            change: unlike :attr:`StateChangeEvent.at`, comparable across processes.

    Example::

        for change in breaker.status().transitions:
            print(f"{change.old_state} -> {change.new_state} ({change.reason}) at {change.at}")
    """

    old_state: CircuitState
    new_state: CircuitState
    reason: TransitionReason
    at: float


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """What an operator wants to see of one breaker: its counters, its countdown, its fleet.

    Every time is wall-clock (``time.time()``), so a status read in one process
    can be shown or compared in another.

    Attributes:
        metrics: The counters and rates, as :meth:`CircuitBreaker.metrics` gives them.
        retry_at: When the next trial call is let through; ``None`` unless OPEN
            (and ``None`` when forced open, here or by another process through
            the shared storage: it stays OPEN until ``reset()``).
        fleet_state: The state the shared storage last reported; ``None``
            without a shared storage or before its first answer.
        fleet_checked_at: When that answer came (``None`` with ``fleet_state``).
        storage_up: ``None`` without a shared storage; else whether the storage
            answered last time it was asked (``RedisStorage.available``).
        transitions: The last :data:`TRANSITION_HISTORY` state changes, oldest first.

    Example::

        status = breaker.status()
        if status.retry_at is not None:
            print(f"{status.metrics.name}: next trial in {status.retry_at - time.time():.0f} s")
    """

    metrics: BreakerMetrics
    retry_at: float | None
    fleet_state: CircuitState | None
    fleet_checked_at: float | None
    storage_up: bool | None
    transitions: tuple[TransitionRecord, ...]


#: How many state changes :attr:`BreakerStatus.transitions` keeps.
TRANSITION_HISTORY: Final = 20


@dataclass(frozen=True)
class FixedOpenDuration:
    """Stay OPEN for ``recovery_timeout`` every time (the default policy).

    Example::

        CircuitBreaker(recovery_timeout=30, open_duration=FixedOpenDuration())
    """

    def __call__(self, recovery_timeout: float, openings: int, /) -> float:
        return recovery_timeout


@dataclass(frozen=True)
class ExponentialOpenDuration:
    """Stay OPEN longer after each failed trial: exponential backoff with jitter.

    The ``n``-th consecutive opening lasts ``recovery_timeout * multiplier**(n-1)``,
    capped at ``max_duration``, then scaled by a random factor in
    ``[1 - jitter, 1 + jitter)`` so a fleet of processes does not retry in step.
    A successful trial starts again at ``recovery_timeout``.

    Example::

        CircuitBreaker(recovery_timeout=5,
                       open_duration=ExponentialOpenDuration(multiplier=2, max_duration=300))

    Args:
        multiplier: Growth factor per reopening, >= 1 (1 gives a fixed duration).
        max_duration: Upper bound in seconds before jitter, > 0.
        jitter: Relative spread, in ``[0, 1)``; 0 turns jitter off.
        random: Uniform source in ``[0, 1)``; inject a constant in tests.
    """

    multiplier: float = 2.0
    max_duration: float = 600.0
    jitter: float = 0.1
    random: RandomSource = field(default=random.random)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"multiplier must be a finite number >= 1, not {self.multiplier!r}")
        if not (math.isfinite(self.max_duration) and self.max_duration > 0):
            raise ValueError(f"max_duration must be a finite number > 0, not {self.max_duration!r}")
        if not (0 <= self.jitter < 1):
            raise ValueError(f"jitter must be in [0, 1), not {self.jitter!r}")

    def __call__(self, recovery_timeout: float, openings: int, /) -> float:
        duration = min(recovery_timeout, self.max_duration)
        exponent = max(0, openings - 1)
        if duration > 0 and self.multiplier > 1 and exponent:
            # Compare in log space: multiplier**exponent overflows long before the cap.
            room = math.log(self.max_duration / duration) / math.log(self.multiplier)
            duration = (
                self.max_duration if exponent >= room else duration * self.multiplier**exponent
            )
        if self.jitter:
            duration *= 1 + self.jitter * (2 * self.random() - 1)
        return max(0.0, duration)


def _is_exception_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


@dataclass(frozen=True)
class BreakerConfig:
    """A breaker's settings: a frozen value, validated once at construction.

    Every bad value is a :class:`ValueError` that names the parameter.

    Example::

        config = BreakerConfig(failure_threshold=None, failure_rate_threshold=0.5,
                               window_size=50, minimum_calls=20)

    Attributes:
        failure_threshold: Consecutive failures in CLOSED that open the breaker
            (>= 1).  ``None`` turns this policy off (then a rate threshold must be set).
        recovery_timeout: Seconds OPEN before trial calls are let through (>= 0;
            0 makes the very next call a trial).  The base of ``open_duration``.
        half_open_max_calls: Trial calls allowed at the same time in HALF_OPEN (>= 1).
        success_threshold: Trial successes that close the breaker (>= 1).
        max_half_open_wait: Longest time (s, > 0) the breaker stays HALF_OPEN
            waiting for trial outcomes; a trial that hangs or whose thread died
            then stops blocking recovery.  ``None`` waits forever.
        trial_lease: Longest time (s, > 0) one trial call can run, for a shared
            storage: the fleet-wide trial slot a call takes is leased for this
            plus a margin (``circuit_breaker.TRIAL_LEASE_MARGIN``, 2 s), at most
            ``max_half_open_wait``, so
            a process that dies mid-trial blocks the fleet's trials that long at
            most.  ``CircuitBreaker.acquire(trial_lease=...)`` overrides it per
            call (``ServiceSession`` passes the call's timeout).  ``None``: the
            lease is ``max_half_open_wait`` (``recovery_timeout`` if that is
            ``None``).
        on_half_open_timeout: What happens when ``max_half_open_wait`` runs out:
            ``"open"`` (default: reopen, with the next open duration) or ``"close"``.
        open_duration: Policy giving each OPEN period's length; fixed
            ``recovery_timeout`` by default, see :class:`ExponentialOpenDuration`.
        failure_rate_threshold: Open when failures / calls in the window reach
            this fraction (in ``(0, 1]``).  ``None``: no failure-rate policy.
        slow_call_duration: A call taking at least this many seconds (> 0) is
            slow.  ``None``: calls are not timed.
        slow_call_rate_threshold: Open when slow calls / calls in the window
            reach this fraction (in ``(0, 1]``; needs ``slow_call_duration``).
            ``None``: no slow-call policy.
        window_type: ``"count"``: the window holds the last ``window_size``
            calls.  ``"time"``: the calls of the last ``window_size`` seconds.
            With a storage that aggregates windows (``RedisStorage``), a time
            window holds the whole fleet's calls (and ``minimum_calls`` counts
            them); a count window always holds this process's calls only.
        window_size: Calls or seconds in the window (>= 1).
        minimum_calls: Calls the window must hold before a rate can trip (>= 1,
            at most ``window_size`` for a count window).
        record_exceptions: Exception classes that may count as failures (default
            every ``Exception``).  ``BaseException``s that are not ``Exception``
            (KeyboardInterrupt, SystemExit...) are always ignored.
        record_exception_if: Narrows ``record_exceptions``: an exception is a
            failure only when this returns True.  ``None``: no narrowing.
        ignore_exceptions: Exception classes that count neither way (checked
            first).  An exception neither ignored nor recorded is a success.
        ignore_exception_if: Same as ``ignore_exceptions``, by predicate.
        record_result_if: A returned value for which this returns True is a
            failure (the HTTP session counts 5xx responses this way).
    """

    failure_threshold: int | None = 5
    recovery_timeout: float = 60.0
    half_open_max_calls: int = 1
    success_threshold: int = 1
    max_half_open_wait: float | None = 60.0
    trial_lease: float | None = None
    on_half_open_timeout: Literal["open", "close"] = "open"
    open_duration: OpenDurationPolicy = field(default_factory=FixedOpenDuration)
    failure_rate_threshold: float | None = None
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float | None = None
    window_type: Literal["count", "time"] = "count"
    window_size: int = 100
    minimum_calls: int = 10
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    record_exception_if: ExceptionPredicate | None = None
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    ignore_exception_if: ExceptionPredicate | None = None
    record_result_if: ResultPredicate | None = None

    def __post_init__(self) -> None:
        for name in ("record_exceptions", "ignore_exceptions"):
            value = getattr(self, name)
            if _is_exception_class(value):
                classes: tuple[object, ...] = (value,)
            elif isinstance(value, tuple | list | set | frozenset):
                classes = tuple(value)
            else:
                classes = (value,)
            if not all(_is_exception_class(cls) for cls in classes):
                raise ValueError(f"{name} must be exception classes, not {value!r}")
            object.__setattr__(self, name, classes)
        self._check_int("failure_threshold", 1, allow_none=True)
        self._check_number("recovery_timeout", 0, strict=False)
        self._check_int("half_open_max_calls", 1)
        self._check_int("success_threshold", 1)
        self._check_number("max_half_open_wait", 0, strict=True, allow_none=True)
        self._check_number("trial_lease", 0, strict=True, allow_none=True)
        if self.on_half_open_timeout not in ("open", "close"):
            raise ValueError(
                f"on_half_open_timeout must be 'open' or 'close', not {self.on_half_open_timeout!r}"
            )
        if not callable(self.open_duration):
            raise ValueError(f"open_duration must be callable, not {self.open_duration!r}")
        self._check_fraction("failure_rate_threshold")
        self._check_number("slow_call_duration", 0, strict=True, allow_none=True)
        self._check_fraction("slow_call_rate_threshold")
        if self.slow_call_rate_threshold is not None and self.slow_call_duration is None:
            raise ValueError("slow_call_rate_threshold needs slow_call_duration")
        if self.window_type not in ("count", "time"):
            raise ValueError(f"window_type must be 'count' or 'time', not {self.window_type!r}")
        self._check_int("window_size", 1)
        self._check_int("minimum_calls", 1)
        if self.window_type == "count" and self.minimum_calls > self.window_size:
            raise ValueError(
                f"minimum_calls ({self.minimum_calls}) cannot exceed window_size "
                f"({self.window_size}) for a count window: the rate could never trip"
            )
        if self.failure_threshold is None and not self.uses_window:
            raise ValueError(
                "failure_threshold=None needs failure_rate_threshold or "
                "slow_call_rate_threshold, or the breaker could never open"
            )
        for name in ("record_exception_if", "ignore_exception_if", "record_result_if"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ValueError(f"{name} must be callable or None, not {value!r}")

    @property
    def uses_window(self) -> bool:
        """True when a rate policy needs the sliding window."""
        return self.failure_rate_threshold is not None or self.slow_call_rate_threshold is not None

    def classify_exception(self, error: BaseException) -> Outcome:
        """How a call that raised ``error`` counts.

        Order: a non-``Exception`` is ignored; then ``ignore_*``; then
        ``record_*``; anything else is a success (the service answered).
        """
        if not isinstance(error, Exception):
            return Outcome.IGNORED
        if isinstance(error, self.ignore_exceptions) or (
            self.ignore_exception_if is not None and self.ignore_exception_if(error)
        ):
            return Outcome.IGNORED
        if isinstance(error, self.record_exceptions) and (
            self.record_exception_if is None or self.record_exception_if(error)
        ):
            return Outcome.FAILURE
        return Outcome.SUCCESS

    def classify_result(self, result: object) -> Outcome:
        """How a call that returned ``result`` counts."""
        if self.record_result_if is not None and self.record_result_if(result):
            return Outcome.FAILURE
        return Outcome.SUCCESS

    def differing_fields(self, other: BreakerConfig, names: frozenset[str]) -> list[str]:
        """The names among ``names`` whose values differ between two configs."""
        return [
            f.name
            for f in fields(self)
            if f.name in names and getattr(self, f.name) != getattr(other, f.name)
        ]

    def _check_int(self, name: str, minimum: int, *, allow_none: bool = False) -> None:
        value = getattr(self, name)
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            none = " or None" if allow_none else ""
            raise ValueError(f"{name} must be an integer >= {minimum}{none}, not {value!r}")

    def _check_number(
        self, name: str, minimum: float, *, strict: bool, allow_none: bool = False
    ) -> None:
        value = getattr(self, name)
        if value is None and allow_none:
            return
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > minimum if strict else value >= minimum)
        )
        if not ok:
            bound = f"> {minimum}" if strict else f">= {minimum}"
            none = " or None" if allow_none else ""
            raise ValueError(f"{name} must be a finite number {bound}{none}, not {value!r}")

    def _check_fraction(self, name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ValueError(f"{name} must be a fraction in (0, 1] or None, not {value!r}")


class BreakerOptions(TypedDict, total=False):
    """Keyword arguments accepted wherever a breaker is configured (see :class:`BreakerConfig`).

    Example::

        options: BreakerOptions = {"half_open_max_calls": 2, "max_half_open_wait": 10.0}
        breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=30, **options)
    """

    half_open_max_calls: int
    success_threshold: int
    max_half_open_wait: float | None
    trial_lease: float | None
    on_half_open_timeout: Literal["open", "close"]
    open_duration: OpenDurationPolicy
    failure_rate_threshold: float | None
    slow_call_duration: float | None
    slow_call_rate_threshold: float | None
    window_type: Literal["count", "time"]
    window_size: int
    minimum_calls: int
    record_exceptions: tuple[type[BaseException], ...]
    record_exception_if: ExceptionPredicate | None
    ignore_exceptions: tuple[type[BaseException], ...]
    ignore_exception_if: ExceptionPredicate | None
    record_result_if: ResultPredicate | None


class CountWindow:
    """The outcomes of the last ``size`` calls, with running totals (O(1) per call).

    Example::

        window = CountWindow(2)
        for failed in (True, False, False):
            window.record(failed, False, 0.0)
        assert window.totals(0.0) == WindowTotals(calls=2)  # the failure left the window
    """

    __slots__ = ("_failures", "_filled", "_index", "_ring", "_size", "_slow")

    _FAILED = 1
    _SLOW = 2

    def __init__(self, size: int) -> None:
        self._size = size
        self._ring = bytearray(size)
        self._index = 0
        self._filled = 0
        self._failures = 0
        self._slow = 0

    def record(self, failed: bool, slow: bool, now: float) -> None:
        """Add one call's outcome, pushing out the oldest when full."""
        old = self._ring[self._index]
        if self._filled == self._size:
            self._failures -= old & self._FAILED
            self._slow -= (old & self._SLOW) >> 1
        else:
            self._filled += 1
        self._ring[self._index] = (self._FAILED if failed else 0) | (self._SLOW if slow else 0)
        self._failures += failed
        self._slow += slow
        self._index = (self._index + 1) % self._size

    def totals(self, now: float) -> WindowTotals:
        """The calls, failures and slow calls in the window."""
        return WindowTotals(self._filled, self._failures, self._slow)

    def clear(self) -> None:
        """Forget every call."""
        self._index = self._filled = self._failures = self._slow = 0


class TimeWindow:
    """The calls of the last ``size`` seconds, in one-second buckets (amortised O(1)).

    Example::

        window = TimeWindow(10)
        window.record(True, False, 100.0)
        assert window.totals(105.0) == WindowTotals(calls=1, failures=1)
        assert window.totals(110.0) == WindowTotals()  # ten seconds later it has left
    """

    __slots__ = (
        "_calls",
        "_epochs",
        "_failures",
        "_latest",
        "_size",
        "_slow",
        "_total_calls",
        "_total_failures",
        "_total_slow",
    )

    def __init__(self, size: int) -> None:
        self._size = size
        self._epochs = [-1] * size
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self._total_calls = self._total_failures = self._total_slow = 0
        self._latest = -(2**62)

    def _advance(self, second: int) -> None:
        """Move the window's end to ``second``, evicting the buckets that left it."""
        if second <= self._latest:
            return
        oldest_kept = second - self._size + 1
        # The seconds in [latest - size + 1, oldest_kept) just left the window.  Each
        # maps to one slot, so looking at no more than ``size`` of them visits every
        # slot that can hold one; a slot whose epoch is older was emptied before.
        start = max(self._latest - self._size + 1, oldest_kept - self._size)
        for leaving in range(start, oldest_kept):
            slot = leaving % self._size
            if self._epochs[slot] < oldest_kept and self._calls[slot]:
                self._total_calls -= self._calls[slot]
                self._total_failures -= self._failures[slot]
                self._total_slow -= self._slow[slot]
                self._calls[slot] = self._failures[slot] = self._slow[slot] = 0
        self._latest = second

    def record(self, failed: bool, slow: bool, now: float) -> None:
        """Add one call's outcome at clock time ``now``."""
        second = math.floor(now)
        self._advance(second)
        if second <= self._latest - self._size:
            # Read before a slower thread took the lock: already outside the window.
            return
        slot = second % self._size
        # After _advance a slot holds this second's calls or nothing at all.
        self._epochs[slot] = second
        self._calls[slot] += 1
        self._failures[slot] += failed
        self._slow[slot] += slow
        self._total_calls += 1
        self._total_failures += failed
        self._total_slow += slow

    def totals(self, now: float) -> WindowTotals:
        """The calls, failures and slow calls in the ``size`` seconds up to ``now``."""
        self._advance(math.floor(now))
        return WindowTotals(self._total_calls, self._total_failures, self._total_slow)

    def clear(self) -> None:
        """Forget every call."""
        size = self._size
        self._epochs = [-1] * size
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size
        self._total_calls = self._total_failures = self._total_slow = 0


def make_window(config: BreakerConfig) -> CountWindow | TimeWindow | None:
    """The sliding window ``config`` needs, or ``None`` when no rate policy is set."""
    if not config.uses_window:
        return None
    if config.window_type == "count":
        return CountWindow(config.window_size)
    return TimeWindow(config.window_size)


def rate_trip_reason(config: BreakerConfig, totals: WindowTotals) -> TransitionReason | None:
    """Which rate policy, if any, says a window holding ``totals`` must open."""
    calls, failures, slow = totals.calls, totals.failures, totals.slow_calls
    if calls < config.minimum_calls:
        return None
    threshold = config.failure_rate_threshold
    if threshold is not None and failures >= threshold * calls:
        return TransitionReason.FAILURE_RATE
    threshold = config.slow_call_rate_threshold
    if threshold is not None and slow >= threshold * calls:
        return TransitionReason.SLOW_CALL_RATE
    return None

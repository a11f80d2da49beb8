"""A circuit breaker that is exact under threads and never serialises the calls it guards.

Its lock guards a few field writes (admitting a call, recording its outcome); the
protected function runs outside it, and listeners and the shared storage are called
after it is released.  Time comes from an injected clock; this module imports neither
Flask nor requests and never sleeps.  The state machine (``_StateMachine``, the base of
:class:`CircuitBreaker`: its fields and every transition, under the transition table)
does no I/O; a shared storage is reached through :class:`gennet_sync.fleet.FleetSync`.

Example::

    breaker = get_circuit_breaker("grn-store", failure_threshold=3, recovery_timeout=30)

    @breaker
    def load_network(network_id: str) -> dict[str, object]:
        return store.get(network_id)
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, TypeVar, Unpack, overload

from gennet_sync.breaker_policy import (
    TRANSITION_HISTORY,
    BreakerConfig,
    BreakerMetrics,
    BreakerMode,
    BreakerOptions,
    BreakerStatus,
    ExponentialOpenDuration,
    FixedOpenDuration,
    Outcome,
    StateChangeEvent,
    StateListener,
    TransitionReason,
    TransitionRecord,
    make_window,
    rate_trip_reason,
)
from gennet_sync.exceptions import MetadataField, ServiceUnavailableError
from gennet_sync.fleet import (
    FORCED_OPEN_SHARED_SECONDS,
    TRIAL_LEASE_MARGIN,
    FleetAction,
    FleetSync,
    QueuedAction,
)
from gennet_sync.storage import (
    BreakerStorage,
    CircuitState,
    MemoryStorage,
    SharedState,
    WindowTotals,
)
from gennet_sync.storage_url import storage_from_url
from gennet_sync.typing import Clock, P, R

__all__ = [
    "TRIAL_LEASE_MARGIN",
    "BreakerConfig",
    "BreakerMetrics",
    "BreakerMode",
    "BreakerOptions",
    "CallPermit",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitBreakerRegistry",
    "CircuitState",
    "ExponentialOpenDuration",
    "FixedOpenDuration",
    "Outcome",
    "StateChangeEvent",
    "StateListener",
    "TransitionReason",
    "all_circuit_breakers",
    "circuit_breaker",
    "circuit_breaker_metrics",
    "clear_circuit_breakers",
    "get_circuit_breaker",
    "register_config",
    "registry",
    "remove_circuit_breaker",
    "set_default_storage",
]

_logger = logging.getLogger(__name__)

_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN
_SUCCESS: Final = Outcome.SUCCESS
_FAILURE: Final = Outcome.FAILURE
_IGNORED: Final = Outcome.IGNORED
_NORMAL: Final = BreakerMode.NORMAL
_STATE_VALUES: Final = {state: state.value for state in CircuitState}

_anonymous_ids = itertools.count(1)
_NO_ACTIONS: Final[tuple[QueuedAction, ...]] = ()


_T = TypeVar("_T")


class _Unpacked(Generic[_T]):
    """An attribute of :class:`CircuitBreakerError` that a refusal sets when first read.

    A plain attribute otherwise: set (by ``__init__`` or anyone) it is stored in the
    instance's ``__dict__`` under its own name, and read from there.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, instance: None, owner: type) -> _Unpacked[_T]: ...

    @overload
    def __get__(self, instance: CircuitBreakerError, owner: type) -> _T: ...

    def __get__(self, instance: CircuitBreakerError | None, owner: type) -> _T | _Unpacked[_T]:
        if instance is None:
            return self
        try:
            value: _T = instance.__dict__[self._name]
        except KeyError:
            instance._unpack()
            try:
                value = instance.__dict__[self._name]
            except KeyError:
                raise AttributeError(self._name) from None
        return value

    def __set__(self, instance: CircuitBreakerError, value: _T) -> None:
        # Unpack first: a later read of another attribute must not overwrite this one.
        instance._unpack()
        instance.__dict__[self._name] = value


class CircuitBreakerError(ServiceUnavailableError):
    """Raised instead of calling the service while its breaker refuses calls (503).

    Its metadata names the breaker (``service``) and the seconds until a trial
    call will be let through (``retry_after``, also the ``Retry-After`` header),
    so a Flask service that lets it propagate answers 503 with ``Retry-After``.

    Example::

        try:
            breaker.call(fetch)
        except CircuitBreakerError as error:
            log.warning("%s unavailable for %.1f s", error.service, error.retry_after or 0)

    Args:
        message: Human-readable message; names the breaker and state by default.
        service: The breaker's name.
        retry_after: Seconds until the next trial call; ``None`` when unknown
            (forced open: until an operator resets it).
        state: The breaker's state when it refused the call.
        metadata: Extra envelope metadata.
        code: Overrides the error code.
    """

    # For the error catalogue: what a refusal's envelope says beyond a 503's.
    description = "The service's circuit breaker refuses calls to a failing dependency"
    metadata_fields: ClassVar[Mapping[str, MetadataField]] = {
        "state": MetadataField(str, "The breaker's state: open or half_open", True, "open"),
    }

    def __init__(
        self,
        message: str | None = None,
        *,
        service: str,
        retry_after: float | None,
        state: CircuitState = _OPEN,
        metadata: Mapping[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        self.state = state
        if message is None:
            message = f"Circuit breaker '{service}' is {state.value}; call not attempted"
        extra: dict[str, Any] = {"state": state.value}
        if metadata:
            extra.update(metadata)
        super().__init__(
            message,
            service=service,
            retry_after=None if retry_after is None else round(max(0.0, retry_after), 3),
            metadata=extra,
            code=code,
        )

    _unread: tuple[str, float | None, CircuitState]
    # Read through _Unpacked: a refusal sets them when first read (see _refusal).
    message = _Unpacked[str]()
    metadata = _Unpacked[dict[str, Any]]()
    service = _Unpacked[str | None]()
    retry_after = _Unpacked[float | None]()
    state = _Unpacked[CircuitState]()

    @staticmethod
    def _refusal(
        message: str, service: str, retry_after: float | None, state: CircuitState
    ) -> CircuitBreakerError:
        """What ``__init__`` builds, for the breaker's rejection path, built when read.

        A refused call must cost less than the call it saves: most refusals are
        caught and never read, and setting five attributes, rounding the delay
        and building the metadata cost more than the rest of a refusal.  So this
        keeps the raw values, and the first read of any of those attributes sets
        them all as ``__init__`` would (``str()`` and ``args`` need nothing).
        ``retry_after`` is the raw delay (infinite: forced open, so ``None``).
        The tests check that both ways read, pickle and render the same.

        A static method: the refusal paths call it as a plain function (bound
        once, below), without a class method's binding on every refusal.
        """
        # args == (message,), as Exception.__init__ sets them.
        error = _new_exception(CircuitBreakerError, message)
        error._unread = (service, retry_after, state)
        return error

    def _unpack(self) -> None:
        """Set the attributes a refusal left unset (by :meth:`_refusal`).

        Safe from several threads at once: each sets the same values, and none
        replaces a value already set; ``_unread`` goes only once all are set.
        """
        values = self.__dict__
        unread = values.get("_unread")
        if unread is None:
            return
        service, retry_after, state = unread
        metadata: dict[str, Any]
        if retry_after is None or retry_after == math.inf:  # forced open: no time known
            retry_after = None
            metadata = {"service": service, "state": _STATE_VALUES[state]}
        else:
            retry_after = round(retry_after if retry_after > 0.0 else 0.0, 3)
            metadata = {
                "service": service,
                "retry_after": retry_after,
                "state": _STATE_VALUES[state],
            }
        values.setdefault("message", self.args[0])
        values.setdefault("service", service)
        values.setdefault("state", state)
        values.setdefault("metadata", metadata)
        values.setdefault("retry_after", retry_after)
        values.pop("_unread", None)


_refusal: Final = CircuitBreakerError._refusal
_new_exception: Final = Exception.__new__


class CallPermit:
    """The right to make one call through a breaker; report its outcome exactly once.

    Returned by :meth:`CircuitBreaker.acquire`.  The first of :meth:`success`,
    :meth:`failure` or :meth:`ignore` counts; later ones do nothing.  Usable as a
    context manager: leaving the block without an exception is a success, with one
    the breaker's config classifies it.

    Example::

        permit = breaker.acquire()          # raises CircuitBreakerError when refused
        try:
            response = send(request)
        except ConnectionError as error:
            permit.failure(error)
            raise
        except BaseException:
            permit.ignore()
            raise
        permit.success()
    """

    __slots__ = ("_breaker", "_done", "_generation", "_shared_trial", "_started", "_trial")

    def __init__(
        self, breaker: CircuitBreaker, generation: int, started: float | None, trial: bool
    ) -> None:
        self._breaker = breaker
        self._generation = generation
        self._started = started
        self._trial = trial
        self._shared_trial = False
        self._done = False

    @property
    def is_trial(self) -> bool:
        """True when this call is a HALF_OPEN trial."""
        return self._trial

    @property
    def done(self) -> bool:
        """True once an outcome has been recorded."""
        return self._done

    def success(self) -> None:
        """Record a success (its duration feeds slow-call detection)."""
        self._breaker._record(self, _SUCCESS, None)

    def failure(self, error: BaseException | None = None) -> None:
        """Record a failure.

        Args:
            error: The exception, when there is one (for logging).
        """
        self._breaker._record(self, _FAILURE, error)

    def ignore(self) -> None:
        """Count this call neither way; frees its HALF_OPEN trial slot."""
        self._breaker._record(self, _IGNORED, None)

    def record(self, outcome: Outcome, error: BaseException | None = None) -> None:
        """Record ``outcome`` (one of the three above)."""
        self._breaker._record(self, outcome, error)

    def __enter__(self) -> CallPermit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.success()
        else:
            self._breaker._record_exception(self, exc)


class _StateMachine:
    """The state machine of a :class:`CircuitBreaker`: its fields and every transition.

    No lock, no I/O and no listeners here: the breaker calls these methods under its
    lock, and once the lock is released hands the queued events to its listeners
    and the queued storage calls (:class:`~gennet_sync.fleet.FleetAction`) to its
    fleet.
    """

    # CLOSED    -> OPEN       failure_threshold consecutive failures, or a failure or
    #                         slow-call rate over the window (_record_outcome); with a
    #                         shared storage, the fleet's count (_adopt_counted)
    # OPEN      -> HALF_OPEN  the open duration is over (_refresh)
    # HALF_OPEN -> CLOSED     success_threshold trial successes (_record_outcome), or
    #                         max_half_open_wait is over and on_half_open_timeout="close"
    # HALF_OPEN -> OPEN       a trial failed (_record_outcome), or max_half_open_wait is
    #                         over (_refresh)
    # any       -> any        the fleet's state, seen at a sync (_adopt); open(), reset(),
    #                         disable(), metrics_only() (_force_open, _enter_mode)
    #
    # Each goes through _to_open / _to_half_open / _to_closed and _set_state, which bumps
    # the generation (outcomes of older permits no longer drive the machine) and queues
    # the event, and the storage call (FleetAction), that the breaker hands on once its
    # lock is released.

    def __init__(
        self,
        config: BreakerConfig,
        name: str,
        clock: Clock,
        fleet: FleetSync | None,
        wall_clock: Clock = time.time,
    ) -> None:
        self.config: Final[BreakerConfig] = config
        self.name: Final[str] = name
        self._clock = clock
        self._wall_clock = wall_clock
        self._fleet = fleet
        self._failure_threshold = config.failure_threshold or 0
        self._slow_call_duration = config.slow_call_duration
        self._window = make_window(config)
        self._clock_on_record = config.slow_call_duration is not None or (
            config.uses_window and config.window_type == "time"
        )
        # True while a success needs nothing but a counter update (see _record);
        # with a shared storage, only while no failure is counted (else the fleet's
        # count must be reset).
        self._plain_success = self._window is None and not self._clock_on_record
        self._state = _CLOSED
        self._mode = _NORMAL
        self._generation = 0  # bumped by every transition: outcomes of older permits are stale
        self._consecutive_failures = 0
        self._openings = 0  # consecutive openings, for the open-duration policy
        self._opened_at: float | None = None
        self._open_until = 0.0
        self._half_open_at = 0.0
        self._trials = 0
        self._trial_successes = 0
        self._events: list[StateChangeEvent] = []
        # The last state changes for status(); appended on a transition only.
        self._history: deque[TransitionRecord] = deque(maxlen=TRANSITION_HISTORY)
        # Cumulative counters.
        self._successes = self._failures = self._ignored = 0
        self._rejections = self._slow_calls = 0

    def _refresh(self, now: float) -> None:
        """Apply the transitions that time alone causes."""
        if self._state is _OPEN and now >= self._open_until:
            self._to_half_open(now, TransitionReason.RECOVERY_TIMEOUT)
        wait = self.config.max_half_open_wait
        if self._state is _HALF_OPEN and wait is not None and now - self._half_open_at >= wait:
            if self.config.on_half_open_timeout == "close":
                self._to_closed(now, TransitionReason.HALF_OPEN_WAIT_EXPIRED)
            else:
                self._to_open(now, TransitionReason.HALF_OPEN_WAIT_EXPIRED)
                self._refresh(now)  # a zero open duration goes straight on to HALF_OPEN

    def _admit(self, now: float) -> tuple[bool, bool]:
        """``(admitted, is_trial)`` for a call arriving now."""
        self._refresh(now)
        if self._state is _CLOSED:
            return True, False
        if self._state is _HALF_OPEN and self._trials < self.config.half_open_max_calls:
            self._trials += 1
            return True, True
        self._rejections += 1
        return False, False

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _record_outcome(self, permit: CallPermit, outcome: Outcome, now: float | None) -> None:
        """Count an outcome and make the transitions it causes.

        ``now`` is ``None`` when the clock was not read for it (nothing is timed):
        a transition then reads it.  A reading of 0.0 is a time like any other.
        """
        if outcome is _SUCCESS:
            self._successes += 1
        # A permit has a start time only when calls are timed, and then now is read.
        slow = (
            permit._started is not None
            and self._slow_call_duration is not None
            and now is not None
            and now - permit._started >= self._slow_call_duration
        )
        self._slow_calls += slow
        if outcome is _FAILURE:
            self._failures += 1
        elif outcome is _IGNORED:
            self._ignored += 1
        if permit._generation != self._generation or self._mode is BreakerMode.DISABLED:
            return  # admitted before the last transition: too late to count
        if permit._trial:
            self._trials -= outcome is not _FAILURE
            if outcome is _FAILURE:
                self._to_open(self._now(now), TransitionReason.TRIAL_FAILED)
            elif outcome is _SUCCESS:
                self._trial_successes += 1
                if self._trial_successes >= self.config.success_threshold:
                    self._to_closed(self._now(now), TransitionReason.TRIAL_SUCCEEDED)
            return
        if outcome is _IGNORED:
            return
        failed = outcome is _FAILURE
        fleet = self._fleet
        # Only a time window reads the time, and with one the clock is always read.
        stamp = 0.0 if now is None else now
        if self._window is not None:
            self._window.record(failed, slow, stamp)
            if fleet is not None:
                fleet.record(failed, slow, stamp)
        if self._mode is not _NORMAL:
            return  # metrics only
        if not failed:
            if self._consecutive_failures and fleet is not None and self._failure_threshold:
                # Without a threshold the fleet keeps no count: nothing to reset.
                fleet.queue(FleetAction.RESET_FAILURES)
            self._consecutive_failures = 0
        else:
            self._consecutive_failures += 1
            if fleet is not None and self._failure_threshold:
                # The storage counts fleet-wide and opens at the threshold.
                fleet.queue(FleetAction.RECORD_FAILURE, self._next_open_duration())
            elif self._failure_threshold and self._consecutive_failures >= self._failure_threshold:
                self._to_open(self._now(now), TransitionReason.FAILURE_THRESHOLD)
                return
        if self._window is not None and (failed or slow):
            reason = rate_trip_reason(self.config, self._window_totals(stamp))
            if reason is not None:
                self._to_open(self._now(now), reason)

    def _adopt(self, shared: SharedState, now: float, reason: TransitionReason) -> None:
        """Make the local state machine agree with the shared one."""
        if shared.state is _OPEN:
            if self._state is _OPEN:
                self._open_until = now + shared.open_remaining
            else:
                self._to_open(now, reason, shared.open_remaining, share=False)
        elif shared.state is _HALF_OPEN:
            if self._state is not _HALF_OPEN:
                self._to_half_open(now, reason)
        elif self._state is not _CLOSED:
            self._to_closed(now, reason, share=False)
        else:
            self._consecutive_failures = shared.failure_count

    def _adopt_counted(self, permit: CallPermit, shared: SharedState | None) -> None:
        """The fleet's reply to ``permit``'s failure (``None``: the storage was unavailable)."""
        if permit._generation != self._generation or self._mode is not _NORMAL:
            return
        now = self._clock()
        if shared is None:
            # Decide with the local count.
            if self._consecutive_failures >= self._failure_threshold:
                self._to_open(now, TransitionReason.FAILURE_THRESHOLD, share=False)
        else:
            opened = shared.state is _OPEN
            reason = TransitionReason.FAILURE_THRESHOLD if opened else TransitionReason.SHARED_STATE
            self._adopt(shared, now, reason)

    def _adopt_synced(self, shared: SharedState | None, generation: int, now: float) -> None:
        """The fleet's reply to a sync asked at ``generation`` (``None``: unavailable).

        A reply is dropped when the machine moved on while it was on its way: it may
        predate that transition and would undo it; the next sync catches up.  With a
        fleet window, the fleet's rates are judged on its totals.
        """
        assert self._fleet is not None
        if shared is None:
            self._fleet.note_window(None, now, closed=False)  # the local window decides
            return
        if generation != self._generation:
            return
        if self._mode is _NORMAL:
            self._adopt(shared, now, TransitionReason.SHARED_STATE)
        judge = self._fleet.note_window(shared, now, closed=self._state is _CLOSED)
        if judge and self._mode is _NORMAL:
            reason = rate_trip_reason(self.config, self._window_totals(now))
            if reason is not None:
                self._to_open(now, reason)

    def _force_open(self) -> None:
        self._mode = BreakerMode.FORCED_OPEN
        self._plain_success = False
        self._to_open(self._clock(), TransitionReason.FORCED_OPEN, math.inf, share=False)
        if self._fleet is not None:
            self._fleet.queue(FleetAction.SET_OPEN, FORCED_OPEN_SHARED_SECONDS)

    def _enter_mode(self, mode: BreakerMode, reason: TransitionReason, *, share: bool) -> None:
        self._mode = mode
        self._plain_success = mode is _NORMAL and self._window is None and not self._clock_on_record
        self._to_closed(self._clock(), reason, share=share)

    def _to_open(
        self,
        now: float,
        reason: TransitionReason,
        duration: float | None = None,
        *,
        share: bool = True,
    ) -> None:
        self._openings += 1
        if duration is None:
            duration = self._next_open_duration(self._openings)
        self._set_state(_OPEN, now, reason)
        self._opened_at = now
        self._open_until = now + duration
        if share and self._fleet is not None:
            self._fleet.queue(FleetAction.SET_OPEN, duration)

    def _to_half_open(self, now: float, reason: TransitionReason) -> None:
        self._set_state(_HALF_OPEN, now, reason)
        self._half_open_at = now
        self._trials = self._trial_successes = 0

    def _to_closed(self, now: float, reason: TransitionReason, *, share: bool = True) -> None:
        self._set_state(_CLOSED, now, reason)
        self._openings = self._consecutive_failures = 0
        self._opened_at = None
        if self._window is not None:
            self._window.clear()
        if share and self._fleet is not None:
            self._fleet.queue(FleetAction.SET_CLOSED)

    def _set_state(self, new: CircuitState, now: float, reason: TransitionReason) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        if self._fleet is not None:
            self._fleet.restart_window()
        if old is not new:
            self._events.append(StateChangeEvent(self.name, old, new, now, reason))
            self._history.append(TransitionRecord(old, new, reason, self._wall_clock()))

    def _window_totals(self, now: float) -> WindowTotals:
        """What the rate policies judge: the fleet's window when known, else this process's."""
        assert self._window is not None
        fleet = None if self._fleet is None else self._fleet.window_totals(now)
        return fleet if fleet is not None else self._window.totals(now)

    def _next_open_duration(self, openings: int | None = None) -> float:
        if openings is None:
            openings = self._openings + 1
        return float(self.config.open_duration(self.config.recovery_timeout, openings))

    def _retry_after(self, now: float) -> float | None:
        if self._state is _OPEN:
            remaining = self._open_until - now
            return None if math.isinf(remaining) else remaining
        if self._state is _HALF_OPEN:
            wait = self.config.max_half_open_wait
            return self.config.recovery_timeout if wait is None else self._half_open_at + wait - now
        return None

    def _snapshot(self, now: float) -> BreakerMetrics:
        self._refresh(now)
        failure_rate = slow_rate = None
        window_calls = 0
        if self._window is not None:
            totals = self._window_totals(now)
            window_calls = totals.calls
            if window_calls >= self.config.minimum_calls:
                failure_rate = totals.failures / window_calls
                slow_rate = totals.slow_calls / window_calls
        return BreakerMetrics(
            name=self.name,
            state=self._state,
            mode=self._mode,
            calls=self._successes + self._failures + self._ignored,
            successes=self._successes,
            failures=self._failures,
            ignored=self._ignored,
            rejections=self._rejections,
            slow_calls=self._slow_calls,
            consecutive_failures=self._consecutive_failures,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            window_calls=window_calls,
            opened_at=self._opened_at if self._state is _OPEN else None,
            retry_after=self._retry_after(now),
        )


class CircuitBreaker(_StateMachine):
    """Stops calling a failing service for a while, then lets trial calls probe it.

    CLOSED: calls run; ``failure_threshold`` consecutive failures (or a failure or
    slow-call rate over the sliding window) open it.  OPEN: calls fail at once
    with :class:`CircuitBreakerError`.  After the open duration it is HALF_OPEN:
    exactly ``half_open_max_calls`` trial calls run at a time; ``success_threshold``
    successes close it, a failure reopens it.

    Example::

        breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=30, name="grn")

        result = breaker.call(requests.get, url, timeout=5)

        @breaker
        def fetch(url: str) -> bytes: ...

        with breaker:
            fetch(url)

    Args:
        failure_threshold: Consecutive failures that open it; ``None`` for rate only.
        recovery_timeout: Seconds OPEN before trial calls.
        name: Its name (in errors, events and the shared storage); generated
            when omitted.
        clock: Monotonic clock in seconds; inject a fake one in tests.
        wall_clock: Wall clock for the times :meth:`status` reports (``time.time``).
        storage: Where state is shared; ``None`` or a :class:`MemoryStorage`
            keeps it in this process and costs nothing.  With a storage that
            aggregates windows (``RedisStorage``), a time window's failure and
            slow-call rates are judged on the whole fleet's calls.
        listeners: Called with every :class:`StateChangeEvent`.
        **options: The rest of :class:`BreakerConfig`.

    Raises:
        ValueError: for a bad setting, naming the parameter.
    """

    def __init__(
        self,
        failure_threshold: int | None = 5,
        recovery_timeout: float = 60.0,
        name: str | None = None,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        storage: BreakerStorage | None = None,
        listeners: Iterable[StateListener] = (),
        **options: Unpack[BreakerOptions],
    ) -> None:
        config = BreakerConfig(
            failure_threshold=failure_threshold, recovery_timeout=recovery_timeout, **options
        )
        if storage is not None and storage.shared and name is None:
            raise ValueError("name is required with a shared storage (it is the shared key)")
        name = name if name is not None else f"breaker-{next(_anonymous_ids)}"
        self._storage: BreakerStorage = storage if storage is not None else MemoryStorage()
        # Everything that talks to a shared storage; None keeps the breaker in this process.
        fleet = (
            FleetSync(name, self._storage, config, wall_clock=wall_clock)
            if self._storage.shared
            else None
        )
        super().__init__(config, name, clock, fleet, wall_clock)
        self._listeners: tuple[StateListener, ...] = tuple(listeners)
        self._lock = threading.Lock()
        self._local = threading.local()
        # Copies of config read on hot paths.
        self._shared = fleet is not None
        # call() may take its inlined hot path (no timing, no result check); a
        # shared breaker only between syncs with its storage.
        self._plain_call = (
            config.record_result_if is None and self._window is None and not self._clock_on_record
        )
        self._refusal_messages = {
            state: f"Circuit breaker '{name}' is {state.value}; call not attempted"
            for state in CircuitState
        }
        _track(self)

    # -- public state ---------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (OPEN turns HALF_OPEN here once its time is up)."""
        if self._state is _CLOSED:
            return _CLOSED
        with self._lock:
            self._refresh(self._clock())
            state = self._state
            events, actions = self._take_events(), self._take_actions()
        self._run_actions(actions, None)
        self._finish(events)
        return state

    @property
    def mode(self) -> BreakerMode:
        """The operational mode (``NORMAL`` unless set by hand)."""
        return self._mode

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted in CLOSED."""
        return self._consecutive_failures

    @property
    def storage(self) -> BreakerStorage:
        """The storage this breaker shares its state through."""
        return self._storage

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener`` with every future state change."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``; no error when it was not registered."""
        with self._lock:
            self._listeners = tuple(item for item in self._listeners if item is not listener)

    # -- admission and outcomes ---------------------------------------------------

    def acquire(self, *, trial_lease: float | None = None) -> CallPermit:
        """Admit one call now, or refuse it at once.

        Args:
            trial_lease: Longest time (s, > 0) this call can run, when known
                (its timeout): with a shared storage, a HALF_OPEN trial leases
                its fleet-wide slot for this plus :data:`TRIAL_LEASE_MARGIN`
                (at most ``max_half_open_wait``), so a process that dies during
                the call holds the fleet's trials back that long at most.
                ``None``: the config's ``trial_lease``.  Unused otherwise.

        Returns:
            A :class:`CallPermit`; report the call's outcome on it.

        Raises:
            CircuitBreakerError: when the breaker refuses the call (it never
                waits for another thread's call).
            ValueError: for a ``trial_lease`` that is not a finite number > 0.

        Example::

            permit = breaker.acquire(trial_lease=connect_timeout + read_timeout)
        """
        if trial_lease is not None and not 0 < trial_lease < math.inf:
            raise ValueError(f"trial_lease must be a finite number > 0, not {trial_lease!r}")
        if self._shared:
            return self._acquire_shared(trial_lease)
        # CLOSED admits without the lock: it changes nothing, and reading the
        # generation before the state makes a permit that races a transition
        # stale (its outcome is not counted) rather than wrong.
        generation = self._generation
        if self._state is _CLOSED:
            return CallPermit(
                self,
                generation,
                self._clock() if self._slow_call_duration is not None else None,
                False,
            )
        admitted = self._admit_or_refuse(self._clock())
        if isinstance(admitted, CircuitBreakerError):
            try:
                raise admitted
            finally:
                del admitted  # no reference cycle through the traceback (see call())
        return admitted

    def _admit_or_refuse(self, now: float) -> CallPermit | CircuitBreakerError:
        """:meth:`acquire`'s answer for a breaker of this process that is not CLOSED.

        The refusal is returned rather than raised, so that :meth:`call` raises it
        itself: an exception unwinding fewer frames makes a cheaper refusal.
        """
        retry_after: float | None
        with self._lock:
            if self._state is _OPEN and now < self._open_until:
                self._rejections += 1
                state = _OPEN
                retry_after = self._open_until - now
                permit = None
                events = None
            else:
                admitted, trial = self._admit(now)
                started = now if self._slow_call_duration is not None else None
                permit = CallPermit(self, self._generation, started, trial) if admitted else None
                retry_after = None if admitted else self._retry_after(now)
                state = self._state
                events = self._take_events()
        if events:
            try:
                self._finish(events)
            except BaseException:
                # A listener's KeyboardInterrupt must not keep the trial slot taken:
                # the caller never gets the permit, so nobody would give it back.
                if permit is not None:
                    permit.ignore()
                raise
        if permit is None:
            return _refusal(self._refusal_messages[state], self.name, retry_after, state)
        return permit

    def call(self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``func(*args, **kwargs)`` through the breaker.

        Exceptions and results are classified by the config (failure, ignored,
        success); the exception always propagates unchanged.

        Raises:
            CircuitBreakerError: when the breaker refuses the call.
        """
        generation = self._generation
        if (
            self._state is not _CLOSED
            or not self._plain_call
            or (self._shared and self._sync_is_due())
        ):
            if self._state is _OPEN and not self._shared:
                # _admit_or_refuse's OPEN refusal, inlined and raised here rather
                # than two calls down: a refusal costs about 0.98 us instead of 1.9
                # (bench_breaker's OPEN figures; keep the two in step).
                now = self._clock()
                with self._lock:
                    open_for = self._open_until - now if self._state is _OPEN else 0.0
                    if open_for > 0.0:
                        self._rejections += 1
                if open_for > 0.0:
                    # Built by a call that has returned: a local of this frame
                    # holding the exception it raises would make a reference cycle
                    # for the garbage collector (the traceback holds the frame).
                    raise _refusal(self._refusal_messages[_OPEN], self.name, open_for, _OPEN)
                admitted = self._admit_or_refuse(now)
                if isinstance(admitted, CircuitBreakerError):
                    try:
                        raise admitted
                    finally:
                        del admitted
                return self._run(admitted, func, *args, **kwargs)
            return self._run(self.acquire(), func, *args, **kwargs)
        # _record's hot path, inlined (keep the two in step): CLOSED, nothing to
        # time, classify or sync.  It pays: a decorated call costs about 400 ns
        # instead of 670 ns through _record (CallPermit.success, under the
        # ServiceSession's I/O, does not inline it).
        try:
            result = func(*args, **kwargs)
        except BaseException as error:
            self._record_exception(CallPermit(self, generation, None, False), error)
            raise
        with self._lock:
            if (
                self._plain_success
                and generation == self._generation
                and not (self._shared and self._consecutive_failures)
            ):
                self._successes += 1
                self._consecutive_failures = 0
                return result
        self._record(CallPermit(self, generation, None, False), _SUCCESS, None)
        return result

    def _run(
        self, permit: CallPermit, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run ``func`` under ``permit`` and record its outcome."""
        try:
            result = func(*args, **kwargs)
        except BaseException as error:
            self._record_exception(permit, error)
            raise
        if self.config.record_result_if is None:
            self._record(permit, _SUCCESS, None)
            return result
        try:
            outcome = self.config.classify_result(result)
        except BaseException:
            self._record(permit, _IGNORED, None)
            raise
        self._record(permit, outcome, None)
        return result

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``func`` so every call runs through this breaker.

        A generator function's outcome is recorded when it returns its generator,
        not while the generator runs: guard the code that iterates it instead.
        """

        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return self.call(func, *args, **kwargs)

        return guarded

    def __enter__(self) -> CircuitBreaker:
        permits: list[CallPermit] = self._local.__dict__.setdefault("permits", [])
        permits.append(self.acquire())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit: CallPermit = self._local.permits.pop()
        if exc is None:
            self._record(permit, _SUCCESS, None)
        else:
            self._record_exception(permit, exc)

    def _record_exception(self, permit: CallPermit, error: BaseException) -> None:
        try:
            outcome = self.config.classify_exception(error)
        except Exception:
            _logger.exception("circuit breaker %r: classifying %r failed", self.name, error)
            outcome = _FAILURE
        except BaseException:
            # Interrupted while classifying (a predicate that waits): as for a result,
            # the call counts neither way, and its trial slot is given back.
            self._record(permit, _IGNORED, None)
            raise
        self._record(permit, outcome, error)

    def _record(self, permit: CallPermit, outcome: Outcome, error: BaseException | None) -> None:
        now = self._clock() if self._clock_on_record else None
        with self._lock:
            if permit._done:
                return
            permit._done = True
            if (
                outcome is _SUCCESS
                and self._plain_success
                and permit._generation == self._generation
                and not permit._trial
                and not (self._shared and self._consecutive_failures)
            ):
                # The hot path: a success in CLOSED with nothing else to track
                # (inlined in call(): change both).
                self._successes += 1
                self._consecutive_failures = 0
                return
            self._record_outcome(permit, outcome, now)
            events = self._take_events()
            actions = self._take_actions()
        if error is not None and outcome is _FAILURE:
            _logger.debug("circuit breaker %r: failure recorded: %r", self.name, error)
        try:
            self._finish(events)
        finally:
            # Even when a listener raised a KeyboardInterrupt: the fleet must learn the
            # transition, and the trial slot must not stay leased.
            self._run_actions(actions, permit)
            # Only now that the fleet knows the trial's outcome (set_open / set_closed)
            # may another process take the slot.
            if permit._shared_trial and self._fleet is not None:
                self._fleet.release_trial()

    # -- operational modes ----------------------------------------------------------

    def open(self) -> None:
        """Force it OPEN until :meth:`reset`: isolate the service by hand."""
        with self._lock:
            self._force_open()
            events, actions = self._take_events(), self._take_actions()
        self._run_actions(actions, None)
        self._finish(events)

    def reset(self) -> None:
        """Close it and clear its failure counts; back to ``NORMAL`` mode."""
        self._set_mode(BreakerMode.NORMAL, TransitionReason.RESET, share=True)

    def disable(self) -> None:
        """Always CLOSED, never trips, until :meth:`reset`; only the call counters count."""
        self._set_mode(BreakerMode.DISABLED, TransitionReason.DISABLED, share=False)

    def metrics_only(self) -> None:
        """Never rejects, but keeps recording calls and rates, until :meth:`reset`."""
        self._set_mode(BreakerMode.METRICS_ONLY, TransitionReason.METRICS_ONLY, share=False)

    def _set_mode(self, mode: BreakerMode, reason: TransitionReason, *, share: bool) -> None:
        with self._lock:
            self._enter_mode(mode, reason, share=share)
            events, actions = self._take_events(), self._take_actions()
        self._run_actions(actions, None)
        self._finish(events)

    # -- metrics --------------------------------------------------------------------

    def metrics(self) -> BreakerMetrics:
        """A consistent snapshot of this breaker's counters and rates."""
        with self._lock:
            snapshot = self._snapshot(self._clock())
            events, actions = self._take_events(), self._take_actions()
        self._run_actions(actions, None)
        self._finish(events)
        return snapshot

    def sync(self) -> bool:
        """Ask the shared storage for the fleet's state now, if a sync is due.

        Calls sync by themselves; an idle breaker does not, so a view of it (a
        console, a health probe) calls this first to show what the fleet decided.
        At most one round trip per ``sync_interval``; nothing without a shared storage.

        Returns:
            True when the storage was asked.

        Example::

            breaker.sync()
            print(breaker.status().fleet_state)
        """
        fleet = self._fleet
        if fleet is None:
            return False
        now = self._clock()
        if not fleet.claim_sync(now):
            return False
        self._sync(fleet, now)
        return True

    def status(self) -> BreakerStatus:
        """What an operator wants to see: counters, countdown, the fleet's view, history.

        Taken under the lock like :meth:`metrics`; the storage is not asked (its
        last answer is reported), so reading it costs no round trip.

        Example::

            status = breaker.status()
            for change in status.transitions:
                print(change.new_state, change.reason, change.at)
        """
        with self._lock:
            snapshot = self._snapshot(self._clock())
            wall = self._wall_clock()
            history = tuple(self._history)
            events, actions = self._take_events(), self._take_actions()
        self._run_actions(actions, None)
        self._finish(events)
        retry_after = snapshot.retry_after
        retry_at = (
            wall + retry_after if snapshot.state is _OPEN and retry_after is not None else None
        )
        if retry_after is not None and retry_after > FORCED_OPEN_SHARED_SECONDS / 2:
            # Forced open by another process: the storage holds it open "for a year",
            # until a reset; no trial is coming.
            retry_at = None
        fleet = self._fleet
        answer = None if fleet is None else fleet.last_answer
        return BreakerStatus(
            metrics=snapshot,
            retry_at=retry_at,
            fleet_state=None if answer is None else answer[0],
            fleet_checked_at=None if answer is None else answer[1],
            storage_up=None if fleet is None else fleet.storage_up,
            transitions=history,
        )

    # -- outside the lock: listeners and the shared storage -----------------------------

    def _take_events(self) -> list[StateChangeEvent]:
        events = self._events
        if events:
            self._events = []
        return events

    def _take_actions(self) -> Sequence[QueuedAction]:
        return _NO_ACTIONS if self._fleet is None else self._fleet.take()

    def _finish(self, events: list[StateChangeEvent]) -> None:
        for event in events:
            _logger.info(
                "circuit breaker %r: %s -> %s (%s)",
                event.name,
                event.old_state.value,
                event.new_state.value,
                event.reason.value,
            )
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception:
                    _logger.exception("circuit breaker %r: listener %r raised", self.name, listener)

    def _run_actions(self, actions: Sequence[QueuedAction], permit: CallPermit | None) -> None:
        """Make the storage calls the state machine queued (with no lock held)."""
        if not actions or self._fleet is None:
            return
        if permit is None:
            self._fleet.run(actions)
        else:
            self._fleet.run(actions, functools.partial(self._after_shared_failure, permit))

    def _after_shared_failure(self, permit: CallPermit, shared: SharedState | None) -> None:
        with self._lock:
            self._adopt_counted(permit, shared)
            events = self._take_events()
        self._finish(events)

    def _sync_is_due(self) -> bool:
        return self._fleet is not None and self._fleet.sync_due(self._clock())

    def _acquire_shared(self, trial_lease: float | None) -> CallPermit:
        """:meth:`acquire` with a shared storage: sync when due, then admit locally.

        A HALF_OPEN trial also needs one of the fleet's trial slots; without one the
        call is refused and its local slot given back.
        """
        fleet = self._fleet
        assert fleet is not None
        now = self._clock()
        if fleet.claim_sync(now):
            self._sync(fleet, now)
            now = self._clock()  # a slow round trip must not make the call look slow
        started = now if self._slow_call_duration is not None else None
        generation = self._generation
        if self._state is _CLOSED:
            return CallPermit(self, generation, started, False)
        with self._lock:
            admitted, trial = self._admit(now)
            permit = CallPermit(self, self._generation, started, trial) if admitted else None
            retry_after = None if admitted else self._retry_after(now)
            state = self._state
            events, actions = self._take_events(), fleet.take()
        taken: bool | None = None
        try:
            fleet.run(actions)
            self._finish(events)
            if permit is not None and trial and self._mode is _NORMAL:
                taken = fleet.acquire_trial(trial_lease)
        except BaseException:
            # An interrupt in a listener or in the storage call must not keep the
            # trial slot taken: the caller never gets the permit to give it back.
            if permit is not None:
                permit.ignore()
            raise
        if permit is not None and taken is False:  # every fleet-wide slot is taken
            with self._lock:
                if not permit._done and permit._generation == self._generation:
                    self._trials -= 1
                    self._rejections += 1
                permit._done = True
                retry_after = self._retry_after(now)
                state = self._state
            permit = None
        elif permit is not None and taken is True:
            permit._shared_trial = True
        if permit is not None and trial and started is not None:
            permit._started = self._clock()  # after the acquire_trial round trip
        if permit is None:
            raise _refusal(self._refusal_messages[state], self.name, retry_after, state)
        return permit

    def _sync(self, fleet: FleetSync, now: float) -> None:
        """Ask the fleet for its state (pushing this process's window outcomes) and adopt it."""
        with self._lock:
            generation = self._generation
            unsynced = fleet.take_unsynced(now)
        shared = fleet.load() if unsynced is None else fleet.sync_window(unsynced)
        with self._lock:
            self._adopt_synced(shared, generation, now)
            events, actions = self._take_events(), fleet.take()
        fleet.run(actions)
        self._finish(events)

    def _after_fork(self) -> None:
        """In a forked child: fresh lock, and no trial slot held by a parent's thread."""
        self._lock = threading.Lock()
        self._local = threading.local()
        self._events = []
        if self._fleet is not None:
            self._fleet.after_fork()
        if self._state is _HALF_OPEN:
            self._trials = 0
            self._generation += 1

    def __copy__(self) -> CircuitBreaker:
        # A breaker is what this process knows of one downstream: a copy with its own
        # counters (but the original's lock) would silently stop protecting it, so a
        # copied object (a copied ServiceSession...) keeps the same breaker.
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> CircuitBreaker:
        return self

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError(
            f"circuit breaker {self.name!r} cannot be pickled: it is this process's view "
            "of a service; in another process use get_circuit_breaker(name), or share "
            "state through GENNET_BREAKER_STORAGE"
        )

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value} mode={self._mode.value}>"


def circuit_breaker(
    failure_threshold: int | None = 5,
    recovery_timeout: float = 60.0,
    name: str | None = None,
    *,
    clock: Clock = time.monotonic,
    storage: BreakerStorage | None = None,
    listeners: Iterable[StateListener] = (),
    **options: Unpack[BreakerOptions],
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator factory: one new breaker per decorated function.

    The breaker is named after the function unless ``name`` is given, and is
    reachable as the wrapper's ``circuit_breaker`` attribute.  As with an instance
    used as a decorator, a generator function's outcome is recorded when it
    returns its generator, not while the generator runs.

    Example::

        @circuit_breaker(failure_threshold=5, recovery_timeout=60)
        def fetch_network(network_id: str) -> dict[str, object]: ...

    Raises:
        ValueError: for a bad setting, naming the parameter.
    """
    # Validate now, so a bad setting fails at import time, not at first decoration.
    BreakerConfig(failure_threshold=failure_threshold, recovery_timeout=recovery_timeout, **options)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        breaker = CircuitBreaker(
            failure_threshold,
            recovery_timeout,
            name if name is not None else f"{func.__module__}.{func.__qualname__}",
            clock=clock,
            storage=storage,
            listeners=listeners,
            **options,
        )
        guarded = breaker(func)
        guarded.circuit_breaker = breaker  # type: ignore[attr-defined]
        registry.track(breaker)  # the console and the readiness probe show it
        return guarded

    return decorate


# -- the registry ---------------------------------------------------------------------


class CircuitBreakerRegistry:
    """Named breakers, one per name per process, created on first use.

    Example::

        registry.register_config("default", failure_threshold=5, recovery_timeout=30)
        grn = registry.get("grn", config="default", failure_threshold=3)
        assert registry.get("grn") is grn

    Breakers are created with the registry's default storage: the one given to
    :meth:`set_default_storage`, else the ``GENNET_BREAKER_STORAGE`` environment
    variable (read when a breaker is created; one storage per URL per process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._default_storage: BreakerStorage | None = None
        self._storages: dict[str, BreakerStorage] = {}
        # Breakers built outside the registry that operators' views show; held
        # weakly, so a breaker nothing else uses is not kept alive by being shown.
        self._tracked: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()

    def register_config(self, config_name: str, **config: Any) -> None:
        """Name a set of settings that :meth:`get` can start from (``config=``).

        Raises:
            ValueError: for a bad setting, naming the parameter.
        """
        settings = dict(config)
        _build_config(settings)  # validate now
        with self._lock:
            self._configs[config_name] = settings

    def set_default_storage(self, storage: BreakerStorage | str | None) -> None:
        """The storage new breakers use: an instance, a URL, or ``None`` for the environment."""
        resolved = self._storage_for_url(storage) if isinstance(storage, str) else storage
        with self._lock:
            self._default_storage = resolved

    def adopt_default_storage(self, url: str) -> None:
        """Make the storage at ``url`` the default, unless another one is already.

        For a Flask app's ``GENNET_BREAKER_STORAGE``: breakers are per process, so
        two apps in one process that ask for different storages cannot both have
        theirs, and the second must not silently move the first one's breakers.

        Raises:
            RuntimeError: Another default storage is set (by another app, or by
                :meth:`set_default_storage`).
        """
        storage = self._storage_for_url(url)
        with self._lock:
            current = self._default_storage
            if current is None:
                self._default_storage = storage
                return
        if current is not storage:
            raise RuntimeError(
                f"GENNET_BREAKER_STORAGE={url!r}, but this process's breakers already use "
                f"{current!r}: breakers are shared by every app in a process, so its apps "
                "must name the same storage"
            )

    def get(
        self,
        name: str,
        *,
        config: str | None = None,
        clock: Clock | None = None,
        storage: BreakerStorage | None = None,
        listeners: Iterable[StateListener] = (),
        **settings: Any,
    ) -> CircuitBreaker:
        """The breaker named ``name``, created from the settings on first use.

        Args:
            name: The breaker's name (for a session: the service's name).
            config: A name given to :meth:`register_config`; ``settings`` override it.
            clock: Clock for a new breaker.
            storage: Storage for a new breaker; the registry's default otherwise.
            listeners: Given to a new breaker (an error for an existing one:
                call its ``add_listener``).
            **settings: :class:`BreakerConfig` fields.

        Raises:
            ValueError: when the breaker exists with different settings (naming
                them), for an unknown ``config`` name, or a bad setting.
        """
        with self._lock:
            if config is not None and config not in self._configs:
                raise ValueError(f"no circuit breaker config named {config!r}")
            requested = {**self._configs.get(config, {}), **settings} if config else settings
            existing = self._breakers.get(name)
        if existing is not None:
            _check_same(existing, requested, clock, storage)
            if listeners:
                raise ValueError(
                    f"circuit breaker {name!r} already exists: use add_listener() on it"
                )
            return existing
        _build_config(requested)  # unknown or bad settings: ValueError before creating anything
        if storage is None:
            storage = self._resolve_default_storage()
        breaker = CircuitBreaker(
            name=name,
            clock=clock or time.monotonic,
            storage=storage,
            listeners=listeners,
            **requested,
        )
        with self._lock:
            existing = self._breakers.setdefault(name, breaker)
        if existing is not breaker:  # another thread created it first
            _check_same(existing, requested, clock, storage)
        return existing

    def remove(self, name: str, *, breaker: CircuitBreaker | None = None) -> CircuitBreaker | None:
        """Forget the breaker named ``name``: the next :meth:`get` creates a new one.

        Code still holding the removed breaker keeps using it; only the registry
        lets go of it.

        Example::

            registry.remove("old-host:8000")

        Args:
            name: The breaker's name.
            breaker: Remove only if the registered breaker is this one, so a caller
                cannot remove a breaker someone created under the same name since.

        Returns:
            The removed breaker; ``None`` when none (or another one) was registered.
        """
        with self._lock:
            current = self._breakers.get(name)
            if current is None or (breaker is not None and current is not breaker):
                return None
            del self._breakers[name]
            return current

    def all(self) -> list[CircuitBreaker]:
        """Every registered breaker, sorted by name."""
        with self._lock:
            return [self._breakers[name] for name in sorted(self._breakers)]

    def track(self, breaker: CircuitBreaker) -> None:
        """Show ``breaker``, built outside the registry, in :meth:`observable`.

        ``@circuit_breaker`` tracks the breakers it builds; call this for a
        ``CircuitBreaker(...)`` of your own.  The breaker is held weakly: once
        nothing else uses it, it drops out.  It is not registered: :meth:`get`
        does not return it.

        Example::

            breaker = CircuitBreaker(name="grn")
            registry.track(breaker)  # in the breaker console and /health/ready
        """
        with self._lock:
            self._tracked.add(breaker)

    def observable(self) -> list[CircuitBreaker]:
        """Every breaker operators' views show by default, sorted by name.

        The registered breakers (:func:`get_circuit_breaker`, every
        ``ServiceSession``'s) and the tracked ones still alive (every
        ``@circuit_breaker``'s, see :meth:`track`).  The breaker console and the
        readiness probe show these unless given their own.
        """
        with self._lock:
            found = {id(breaker): breaker for breaker in self._breakers.values()}
            for breaker in list(self._tracked):
                found.setdefault(id(breaker), breaker)
        return sorted(found.values(), key=lambda breaker: breaker.name)

    def metrics(self) -> dict[str, BreakerMetrics]:
        """A metrics snapshot of every registered breaker, by name."""
        return {breaker.name: breaker.metrics() for breaker in self.all()}

    def clear(self) -> None:
        """Forget every breaker (registered or tracked), named config and default storage."""
        with self._lock:
            self._breakers.clear()
            self._tracked.clear()
            self._configs.clear()
            self._default_storage = None

    def _resolve_default_storage(self) -> BreakerStorage:
        with self._lock:
            storage = self._default_storage
        if storage is not None:
            return storage
        return self._storage_for_url(os.environ.get("GENNET_BREAKER_STORAGE") or "memory://")

    def _storage_for_url(self, url: str) -> BreakerStorage:
        with self._lock:
            cached = self._storages.get(url)
        if cached is not None:
            return cached
        created = storage_from_url(url)
        with self._lock:
            return self._storages.setdefault(url, created)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


def _build_config(settings: Mapping[str, Any]) -> BreakerConfig:
    try:
        return BreakerConfig(**settings)
    except TypeError as error:
        raise ValueError(f"unknown circuit breaker setting: {error}") from None


def _check_same(
    breaker: CircuitBreaker,
    requested: Mapping[str, Any],
    clock: Clock | None,
    storage: BreakerStorage | None,
) -> None:
    wanted = _build_config({**_config_settings(breaker.config), **requested})
    differing = breaker.config.differing_fields(wanted, frozenset(requested))
    if clock is not None and clock is not breaker._clock:
        differing.append("clock")
    if storage is not None and storage is not breaker.storage:
        differing.append("storage")
    if differing:
        raise ValueError(
            f"circuit breaker {breaker.name!r} already exists with different {', '.join(differing)}"
        )


def _config_settings(config: BreakerConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config)}


#: The process-wide registry behind :func:`get_circuit_breaker`.
registry: Final = CircuitBreakerRegistry()


def get_circuit_breaker(name: str, **config: Any) -> CircuitBreaker:
    """The process's one breaker named ``name`` (see :meth:`CircuitBreakerRegistry.get`).

    Example::

        breaker = get_circuit_breaker("qualitative-service", failure_threshold=5)

    Raises:
        ValueError: when it exists with different settings (naming them).
    """
    return registry.get(name, **config)


def register_config(config_name: str, **config: Any) -> None:
    """Name shared settings for :func:`get_circuit_breaker`'s ``config=``."""
    registry.register_config(config_name, **config)


def set_default_storage(storage: BreakerStorage | str | None) -> None:
    """The storage (or storage URL) the registry gives new breakers."""
    registry.set_default_storage(storage)


def remove_circuit_breaker(name: str) -> CircuitBreaker | None:
    """Forget the process registry's breaker ``name`` (:meth:`CircuitBreakerRegistry.remove`)."""
    return registry.remove(name)


def all_circuit_breakers() -> list[CircuitBreaker]:
    """Every breaker in the process registry, sorted by name."""
    return registry.all()


def circuit_breaker_metrics() -> dict[str, BreakerMetrics]:
    """A metrics snapshot of every breaker in the process registry."""
    return registry.metrics()


def clear_circuit_breakers() -> None:
    """Empty the process registry (for tests)."""
    registry.clear()


# -- fork safety ----------------------------------------------------------------------

_live_breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_live_lock = threading.Lock()


def _track(breaker: CircuitBreaker) -> None:
    with _live_lock:
        _live_breakers.add(breaker)


def _reinit_after_fork() -> None:
    # A thread of the parent may have held any of these locks at fork time; that
    # thread does not exist in the child, so the lock would never be released.
    global _live_lock  # noqa: PLW0603
    _live_lock = threading.Lock()
    registry._after_fork()
    for breaker in list(_live_breakers):
        breaker._after_fork()


if hasattr(os, "register_at_fork"):  # not on every platform (Windows)
    os.register_at_fork(after_in_child=_reinit_after_fork)

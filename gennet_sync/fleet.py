"""A circuit breaker's side of a shared storage: what it tells the fleet, and when it asks.

:class:`FleetSync` is the collaborator a :class:`~gennet_sync.circuit_breaker.CircuitBreaker`
with a shared storage (``RedisStorage``) delegates to.  It makes every storage call
(a backend that raises counts as unavailable), claims the periodic sync, keeps the
storage calls the state machine decided on (:class:`FleetAction`) until the breaker's
lock is released, and keeps the books of a fleet-wide rate window.  The state
machine stays in the breaker; which storage call each transition causes is listed
in :mod:`gennet_sync.storage`.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias, TypeVar, assert_never

from gennet_sync.breaker_policy import BreakerConfig
from gennet_sync.storage import BreakerStorage, CircuitState, SharedState, WindowTotals
from gennet_sync.typing import Clock

__all__ = [
    "FORCED_OPEN_SHARED_SECONDS",
    "TRIAL_LEASE_MARGIN",
    "FailureCounted",
    "FleetAction",
    "FleetSync",
    "QueuedAction",
]

# The breaker's own logger: an operator who watches the breaker sees its storage failing.
_logger = logging.getLogger("gennet_sync.circuit_breaker")

_T = TypeVar("_T")

#: How long a forced opening is announced to a shared storage: until ``reset()``.
FORCED_OPEN_SHARED_SECONDS: Final = 365 * 24 * 3600.0

#: Seconds a fleet-wide trial lease outlives the time its call can run
#: (``trial_lease``): the storage round trips that report the trial's outcome
#: come after the call, and a loaded host schedules late.
TRIAL_LEASE_MARGIN: Final = 2.0


class FleetAction(enum.Enum):
    """A storage call the state machine decides on under its lock and makes after it.

    Example::

        fleet.queue(FleetAction.SET_OPEN, 30.0)  # under the breaker's lock
        actions = fleet.take()
        ...                                      # the lock is released
        fleet.run(actions)
    """

    #: Count one failure fleet-wide; the fleet opens for ``seconds`` at the threshold.
    RECORD_FAILURE = enum.auto()
    #: A success in CLOSED: the fleet's consecutive-failure count starts again.
    RESET_FAILURES = enum.auto()
    #: Open the fleet for ``seconds``.
    SET_OPEN = enum.auto()
    #: Close the fleet.
    SET_CLOSED = enum.auto()


#: A queued storage call: the action and its seconds (0.0 when it takes none).
QueuedAction: TypeAlias = tuple[FleetAction, float]

#: Told the fleet's reply to a :attr:`FleetAction.RECORD_FAILURE` (``None``: unavailable).
FailureCounted: TypeAlias = Callable[[SharedState | None], None]


class FleetSync:
    """One breaker's link to a shared storage.

    The methods that change its books (:meth:`queue`, :meth:`take`, :meth:`record`,
    :meth:`restart_window`, :meth:`take_unsynced`, :meth:`note_window`,
    :meth:`window_totals`) are called under the breaker's lock; the storage calls
    (:meth:`run`, :meth:`load`, :meth:`sync_window`, :meth:`acquire_trial`,
    :meth:`release_trial`) only outside it.

    Example::

        fleet = FleetSync("payments", RedisStorage("redis://cache:6379/0"), config)
        if fleet.claim_sync(clock()):
            shared = fleet.load()

    Args:
        name: The breaker's name: its key in the storage.
        storage: A shared storage (``storage.shared`` is true).
        config: The breaker's settings.
        wall_clock: Wall clock stamping the storage's answers (:attr:`last_answer`).
    """

    def __init__(
        self,
        name: str,
        storage: BreakerStorage,
        config: BreakerConfig,
        *,
        wall_clock: Clock = time.time,
    ) -> None:
        self.name: Final = name
        self.storage: Final = storage
        self._config = config
        self._failure_threshold = config.failure_threshold or 0
        self.sync_interval: Final = float(storage.sync_interval)
        # When this process last asked the storage: claimed before asking and without
        # a lock, so two threads that both find a sync due cost one more round trip,
        # never a wrong state (the breaker drops a reply that a newer transition made
        # stale).
        self._synced_at = -math.inf
        self._queued: list[QueuedAction] = []
        # A time window is judged on the fleet's totals when the storage keeps them
        # (a count window has no fleet-wide order: it stays per process).
        sync_window = getattr(storage, "sync_window", None)
        self._sync_window: Callable[..., SharedState | None] | None = (
            sync_window
            if config.uses_window and config.window_type == "time" and callable(sync_window)
            else None
        )
        # Outcomes recorded since the last sync_window, and when the newest was.
        self._calls = self._failures = self._slow_calls = 0
        self._recorded_at = -math.inf
        # The fleet's totals as of the last sync (None: not known, or unavailable).
        self._totals: WindowTotals | None = None
        self._totals_at = -math.inf
        # The fleet's CLOSED period (WindowTotals.closings) the unsynced outcomes
        # belong to; None right after a transition of our own (not known yet).
        self._closings: int | None = None
        self._wall_clock = wall_clock
        #: The state the storage last reported and when (wall clock); ``None``
        #: before its first answer.  One tuple, replaced whole: read without a lock.
        self.last_answer: tuple[CircuitState, float] | None = None
        #: Whether the storage answered the last call that expects an answer.
        self.answered = True

    @property
    def storage_up(self) -> bool:
        """Whether the storage answers: its own ``available`` when it has one."""
        available = getattr(self.storage, "available", None)
        return available if isinstance(available, bool) else self.answered

    def sync_due(self, now: float) -> bool:
        """True when the breaker's view is older than ``sync_interval``."""
        return now - self._synced_at >= self.sync_interval

    def claim_sync(self, now: float) -> bool:
        """True when a sync is due; the caller then makes it (the next one is not due)."""
        if now - self._synced_at < self.sync_interval:
            return False
        self._synced_at = now
        return True

    # -- under the breaker's lock ---------------------------------------------------

    def queue(self, action: FleetAction, seconds: float = 0.0) -> None:
        """Queue a storage call for :meth:`run`."""
        self._queued.append((action, seconds))

    def take(self) -> list[QueuedAction]:
        """The queued storage calls, in order; the queue is empty afterwards."""
        queued = self._queued
        if queued:
            self._queued = []
        return queued

    def record(self, failed: bool, slow: bool, now: float) -> None:
        """Count one outcome recorded in the window towards the next sync."""
        if self._sync_window is not None:
            self._calls += 1
            self._failures += failed
            self._slow_calls += slow
            self._recorded_at = now

    def restart_window(self) -> None:
        """A transition: the fleet's window starts again too (``set_open``/``set_closed``)."""
        if self._sync_window is not None:
            self._calls = self._failures = self._slow_calls = 0
            self._totals = None
            self._closings = None

    def take_unsynced(self, now: float) -> tuple[WindowTotals, int | None] | None:
        """What the next :meth:`sync_window` pushes; ``None`` when there is no fleet window.

        Returns:
            The outcomes recorded since the last sync, and the fleet's CLOSED
            period (``closings``) they belong to (``None``: not known).
        """
        if self._sync_window is None:
            return None
        unsynced = WindowTotals(self._calls, self._failures, self._slow_calls)
        if now - self._recorded_at >= self._config.window_size:
            unsynced = WindowTotals()  # quiet for longer than the window: they all left it
        self._calls = self._failures = self._slow_calls = 0
        return unsynced, self._closings

    def note_window(self, shared: SharedState | None, now: float, closed: bool) -> bool:
        """Keep what a sync returned; True when the fleet's window is there to judge.

        Args:
            shared: The reply; ``None`` when the storage was unavailable (the local
                window decides until the next sync that succeeds).
            now: When the sync was made.
            closed: Whether the breaker is CLOSED after adopting the reply: only a
                CLOSED period has a window.
        """
        if shared is None:
            self._totals = None
            return False
        window = shared.window
        if window is None:
            return False
        self._closings = window.closings
        if not closed:
            return False
        self._totals = window
        self._totals_at = now
        return True

    def window_totals(self, now: float) -> WindowTotals | None:
        """The fleet's totals plus the outcomes since; ``None`` when not known."""
        totals = self._totals
        if totals is None or now - self._totals_at >= self._config.window_size:
            # No shared window, storage unavailable, or a sync too old to say anything.
            return None
        return WindowTotals(
            totals.calls + self._calls,
            totals.failures + self._failures,
            totals.slow_calls + self._slow_calls,
            totals.closings,
        )

    def after_fork(self) -> None:
        """In a forked child: the parent pushes its own outcomes; the child starts afresh."""
        self._queued = []
        self._calls = self._failures = self._slow_calls = 0
        self._totals = None

    # -- outside the breaker's lock: the storage calls --------------------------------

    def run(self, actions: Sequence[QueuedAction], counted: FailureCounted | None = None) -> None:
        """Make the queued storage calls in order.

        Args:
            actions: What :meth:`take` returned.
            counted: Told the fleet's reply to a ``RECORD_FAILURE``.
        """
        storage = self.storage
        for action, seconds in actions:
            if action is FleetAction.RECORD_FAILURE:
                shared = self._noted(
                    self._ask(
                        storage.record_failure,
                        failure_threshold=self._failure_threshold,
                        open_for=seconds,
                    )
                )
                if counted is not None:
                    counted(shared)
            elif action is FleetAction.RESET_FAILURES:
                self._ask(storage.reset_failures)
            elif action is FleetAction.SET_OPEN:
                self._ask(storage.set_open, seconds)
            elif action is FleetAction.SET_CLOSED:
                self._ask(storage.set_closed)
            else:
                assert_never(action)

    def load(self) -> SharedState | None:
        """The fleet's state, or ``None`` when unavailable."""
        return self._noted(self._ask(self.storage.load))

    def sync_window(self, unsynced: tuple[WindowTotals, int | None]) -> SharedState | None:
        """Push what :meth:`take_unsynced` took; the fleet's state with its totals."""
        assert self._sync_window is not None
        outcomes, closings = unsynced
        return self._noted(
            self._ask(
                self._sync_window,
                calls=outcomes.calls,
                failures=outcomes.failures,
                slow_calls=outcomes.slow_calls,
                window_seconds=self._config.window_size,
                closings=closings,
            )
        )

    def acquire_trial(self, trial_lease: float | None) -> bool | None:
        """Take a fleet-wide trial slot (see :meth:`BreakerStorage.acquire_trial`).

        Args:
            trial_lease: How long the call can run, when known; the config's
                ``trial_lease`` otherwise.
        """
        return self._ask(
            self.storage.acquire_trial,
            max_calls=self._config.half_open_max_calls,
            lease=self.trial_lease(trial_lease),
        )

    def release_trial(self) -> None:
        """Give back the slot :meth:`acquire_trial` took."""
        self._ask(self.storage.release_trial)

    def trial_lease(self, trial_lease: float | None) -> float:
        """Seconds the fleet keeps a trial's slot if its process never gives it back."""
        config = self._config
        wait = config.max_half_open_wait
        runs_for = trial_lease if trial_lease is not None else config.trial_lease
        if runs_for is None:
            # Nothing says how long a call can run: the longest the breaker waits
            # for a trial's outcome anyway.
            return wait or config.recovery_timeout
        lease = runs_for + TRIAL_LEASE_MARGIN
        # Past max_half_open_wait the breaker gives up on the trial (and reopens
        # the fleet, which drops every lease): a longer lease would change nothing.
        return lease if wait is None else min(lease, wait)

    def _noted(self, shared: SharedState | None) -> SharedState | None:
        """Keep what a storage answered for :attr:`last_answer` (a round trip's cost only)."""
        if shared is None:
            self.answered = False
        else:
            self.answered = True
            self.last_answer = (shared.state, self._wall_clock())
        return shared

    def _ask(self, method: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
        try:
            return method(self.name, *args, **kwargs)
        except Exception:
            # The protocol says "never raise"; a backend that does is treated as unavailable.
            called = getattr(method, "__name__", method)
            _logger.exception("circuit breaker %r: storage.%s raised", self.name, called)
            return None

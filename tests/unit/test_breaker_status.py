"""CircuitBreaker.status() on fake clocks: the countdown, the transition history (bounded,
appended on transitions only, consistent under threads) and the fleet's last answer.
``tests/integration/test_breaker_status_redis.py`` reads it with a real Redis."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest

from gennet_sync.breaker_policy import TRANSITION_HISTORY, BreakerStatus, TransitionRecord
from gennet_sync.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    TransitionReason,
)
from gennet_sync.fleet import FORCED_OPEN_SHARED_SECONDS
from gennet_sync.storage import SharedState
from tests.support.breakers import ok, trip
from tests.support.clock import FakeClock
from tests.support.storages import RecordingStorage

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
EPOCH = 1_700_000_000.0


class Clocks:
    """A monotonic and a wall clock that move together, as real ones do."""

    def __init__(self) -> None:
        self.monotonic = FakeClock(1000.0)
        self.wall = FakeClock(EPOCH)

    def advance(self, seconds: float) -> None:
        self.monotonic.advance(seconds)
        self.wall.advance(seconds)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def make(clocks: Clocks) -> Callable[..., CircuitBreaker]:
    def build(**options: Any) -> CircuitBreaker:
        options.setdefault("failure_threshold", 2)
        options.setdefault("recovery_timeout", 30.0)
        return CircuitBreaker(clock=clocks.monotonic, wall_clock=clocks.wall, **options)

    return build


def test_a_fresh_breaker_has_no_history_no_countdown_and_no_fleet(
    make: Callable[..., CircuitBreaker],
) -> None:
    breaker = make(name="fresh")
    status = breaker.status()
    assert isinstance(status, BreakerStatus)
    assert status.metrics == breaker.metrics()
    assert (status.retry_at, status.fleet_state, status.fleet_checked_at) == (None, None, None)
    assert status.storage_up is None
    assert status.transitions == ()


def test_an_open_breaker_counts_down_to_a_fixed_wall_clock_time(
    make: Callable[..., CircuitBreaker], clocks: Clocks
) -> None:
    breaker = make()
    clocks.advance(5)
    trip(breaker)
    status = breaker.status()
    assert status.retry_at == EPOCH + 5 + 30
    assert status.transitions == (
        TransitionRecord(CLOSED, OPEN, TransitionReason.FAILURE_THRESHOLD, EPOCH + 5),
    )
    # Idle, the countdown's end stays put: nothing but the clocks moved.
    clocks.advance(20)
    assert breaker.status().retry_at == EPOCH + 35
    assert breaker.status().metrics.retry_after == 10


def test_half_open_closed_and_forced_open_have_no_retry_at(
    make: Callable[..., CircuitBreaker], clocks: Clocks
) -> None:
    breaker = make()
    trip(breaker)
    clocks.advance(30)
    status = breaker.status()
    assert status.metrics.state is HALF_OPEN
    assert status.retry_at is None
    breaker.call(ok)
    assert breaker.status().retry_at is None
    breaker.open()
    status = breaker.status()
    assert status.metrics.state is OPEN
    assert status.retry_at is None
    assert [(t.new_state, t.reason) for t in status.transitions] == [
        (OPEN, TransitionReason.FAILURE_THRESHOLD),
        (HALF_OPEN, TransitionReason.RECOVERY_TIMEOUT),
        (CLOSED, TransitionReason.TRIAL_SUCCEEDED),
        (OPEN, TransitionReason.FORCED_OPEN),
    ]
    assert [t.at for t in status.transitions] == [EPOCH, EPOCH + 30, EPOCH + 30, EPOCH + 30]


def test_calls_without_a_transition_add_nothing_to_the_history(
    make: Callable[..., CircuitBreaker], clocks: Clocks
) -> None:
    breaker = make(failure_threshold=3)
    for _ in range(1000):
        breaker.call(ok)
        breaker.acquire().failure()
        clocks.advance(1)
    assert breaker.status().transitions == ()
    # A mode change that leaves the state CLOSED is no state change either.
    breaker.disable()
    breaker.reset()
    assert breaker.status().transitions == ()


def test_the_history_keeps_the_last_twenty_oldest_first(
    make: Callable[..., CircuitBreaker], clocks: Clocks
) -> None:
    breaker = make()
    for _ in range(15):
        breaker.open()
        clocks.advance(1)
        breaker.reset()
        clocks.advance(1)
    transitions = breaker.status().transitions
    assert len(transitions) == TRANSITION_HISTORY == 20
    assert transitions[0].at == EPOCH + 10  # the 11th change (of 30)
    assert transitions[-1] == TransitionRecord(OPEN, CLOSED, TransitionReason.RESET, EPOCH + 29)
    assert [t.at for t in transitions] == sorted(t.at for t in transitions)


def test_the_history_is_one_consistent_chain_under_threads(
    make: Callable[..., CircuitBreaker],
) -> None:
    breaker = make()
    stop = threading.Event()
    seen: list[BreakerStatus] = []
    errors: list[BaseException] = []

    def flip() -> None:
        try:
            for _ in range(300):
                breaker.open()
                breaker.reset()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def read() -> None:
        while not stop.is_set():
            seen.append(breaker.status())

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=flip) for _ in range(4)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=60)
    stop.set()
    for thread in readers:
        thread.join(timeout=60)
    assert not errors
    for status in [*seen, breaker.status()]:
        history = status.transitions
        assert len(history) <= TRANSITION_HISTORY
        # Appended under the lock: each change starts where the one before ended.
        assert all(a.new_state is b.old_state for a, b in itertools.pairwise(history))
        if history:
            assert history[-1].new_state is status.metrics.state
    assert len(breaker.status().transitions) == TRANSITION_HISTORY


# -- a shared storage -------------------------------------------------------------------------


def test_status_reports_the_storages_last_answer_without_asking_it(
    make: Callable[..., CircuitBreaker], clocks: Clocks
) -> None:
    storage = RecordingStorage(sync_interval=0.0)
    breaker = make(name="svc", storage=storage)
    storage.breaker = breaker
    status = breaker.status()
    assert (status.fleet_state, status.fleet_checked_at, status.storage_up) == (None, None, True)
    assert storage.calls == []  # status() makes no round trip

    clocks.advance(3)
    breaker.call(ok)  # a sync: the storage answers CLOSED
    status = breaker.status()
    assert (status.fleet_state, status.fleet_checked_at, status.storage_up) == (
        CLOSED,
        EPOCH + 3,
        True,
    )

    storage.state = SharedState(OPEN, open_remaining=12.0)
    clocks.advance(1)
    with pytest.raises(Exception, match="open"):
        breaker.call(ok)
    status = breaker.status()
    assert (status.fleet_state, status.fleet_checked_at) == (OPEN, EPOCH + 4)
    assert status.metrics.state is OPEN
    assert status.retry_at == EPOCH + 4 + 12
    assert status.transitions[-1].reason is TransitionReason.SHARED_STATE


@pytest.mark.parametrize("failure", ["raises", "answers None"])
def test_a_storage_that_stops_answering_is_down_and_its_last_answer_stays(
    make: Callable[..., CircuitBreaker], clocks: Clocks, failure: str
) -> None:
    storage = RecordingStorage(sync_interval=0.0)
    breaker = make(name="svc", storage=storage)
    storage.breaker = breaker
    breaker.call(ok)
    if failure == "raises":
        storage.raise_on = {"load"}
    else:
        storage.state = None
    clocks.advance(2)
    breaker.call(ok)
    status = breaker.status()
    assert status.storage_up is False
    assert (status.fleet_state, status.fleet_checked_at) == (CLOSED, EPOCH)
    storage.raise_on = set()
    storage.state = SharedState(CLOSED)
    breaker.call(ok)
    assert breaker.status().storage_up is True


def test_a_storage_with_available_is_believed(make: Callable[..., CircuitBreaker]) -> None:
    class Flaky(RecordingStorage):
        available = False

    storage = Flaky(sync_interval=0.0)
    breaker = make(name="svc", storage=storage)
    storage.breaker = breaker
    breaker.call(ok)  # answered, but the storage says it is down since
    assert breaker.status().storage_up is False


def test_a_breaker_forced_open_by_another_process_has_no_retry_at(
    make: Callable[..., CircuitBreaker],
) -> None:
    storage = RecordingStorage(sync_interval=0.0)
    breaker = make(name="svc", storage=storage)
    storage.breaker = breaker
    storage.state = SharedState(OPEN, open_remaining=FORCED_OPEN_SHARED_SECONDS - 5)
    with pytest.raises(CircuitBreakerError):
        breaker.call(ok)
    status = breaker.status()
    assert (status.metrics.state, status.fleet_state) == (OPEN, OPEN)
    assert status.retry_at is None


def test_sync_asks_the_storage_once_per_interval_and_never_without_one(
    make: Callable[..., CircuitBreaker], clocks: Clocks
) -> None:
    assert make().sync() is False
    storage = RecordingStorage(sync_interval=5.0)
    breaker = make(name="svc", storage=storage)
    storage.breaker = breaker
    storage.state = SharedState(OPEN, open_remaining=12.0)
    assert breaker.sync() is True
    assert breaker.sync() is False
    assert [call[0] for call in storage.calls] == ["load"]
    status = breaker.status()
    assert (status.metrics.state, status.fleet_state) == (OPEN, OPEN)
    assert status.retry_at == EPOCH + 12
    clocks.advance(5)
    assert breaker.sync() is True

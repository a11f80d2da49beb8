"""The circuit breaker in a fleet, on a fake clock: what it asks of a shared
storage (recording fakes stand in for Redis) and when, trial leases, syncs, and
a fleet-wide time window.  ``tests/unit/test_fleet.py`` tests FleetSync on its
own; ``tests/integration/test_redis_storage.py`` the real thing."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import responses

from gennet_sync.circuit_breaker import (
    TRIAL_LEASE_MARGIN,
    CircuitBreaker,
    CircuitState,
    StateChangeEvent,
    TransitionReason,
)
from gennet_sync.http_client import ServiceSession
from gennet_sync.storage import MemoryStorage, SharedState, WindowTotals
from tests.support.breakers import ok, rejected, trip
from tests.support.clock import FakeClock
from tests.support.storages import RecordingStorage

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


# -- shared storage ------------------------------------------------------------------------------


@pytest.fixture
def shared(clock: FakeClock) -> Callable[..., tuple[CircuitBreaker, RecordingStorage]]:
    def make(sync_interval: float = 0.0, **options: Any) -> tuple[CircuitBreaker, RecordingStorage]:
        storage = RecordingStorage(sync_interval)
        options.setdefault("failure_threshold", 2)
        options.setdefault("recovery_timeout", 10.0)
        breaker = CircuitBreaker(name="svc", clock=clock, storage=storage, **options)
        storage.breaker = breaker
        return breaker, storage

    return make


def names(storage: RecordingStorage) -> list[str]:
    return [call[0] for call in storage.calls]


def test_a_memory_storage_is_never_called(clock: FakeClock) -> None:
    calls: list[str] = []

    class Spy(MemoryStorage):
        def __getattribute__(self, name: str) -> Any:
            if name in {"load", "record_failure", "reset_failures", "set_open"} | {
                "set_closed",
                "acquire_trial",
                "release_trial",
            }:
                calls.append(name)
            return super().__getattribute__(name)

    breaker = CircuitBreaker(failure_threshold=2, name="m", clock=clock, storage=Spy())
    for _ in range(3):
        trip(breaker)
        clock.advance(60)
        breaker.call(ok)
        breaker.open()
        breaker.reset()
    assert calls == []


def test_a_shared_storage_is_called_at_the_documented_points(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    breaker, storage = shared()
    breaker.call(ok)  # healthy: one load, no write
    assert names(storage) == ["load"]
    storage.calls.clear()
    storage.failure_answer = storage.state = SharedState(CLOSED, failure_count=1)
    breaker.acquire().failure()
    assert storage.calls[-1] == ("record_failure", "svc", 2, 10.0)
    breaker.acquire().success()  # the count was 1: reset it fleet-wide
    assert names(storage) == ["load", "record_failure", "load", "reset_failures"]
    storage.calls.clear()
    storage.state = SharedState(CLOSED)  # what the reset left in the fleet
    breaker.acquire().success()  # nothing to reset
    assert names(storage) == ["load"]


def test_a_rate_only_shared_breaker_sends_no_reset_after_a_failure(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]],
) -> None:
    breaker, storage = shared(
        sync_interval=1000.0,
        failure_threshold=None,
        failure_rate_threshold=0.9,
        window_size=10,
        minimum_calls=10,
    )
    breaker.call(ok)
    storage.calls.clear()
    breaker.acquire().failure()
    breaker.acquire().success()
    # The fleet keeps no failure count without a threshold: nothing to send either time.
    assert storage.calls == []


def test_the_fleet_count_opens_it(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]],
) -> None:
    breaker, storage = shared(failure_threshold=5)
    storage.failure_answer = SharedState(OPEN, open_remaining=7.0)
    breaker.acquire().failure()  # one local failure, but the fleet reached 5
    assert breaker.state is OPEN
    storage.state = SharedState(OPEN, open_remaining=7.0)
    assert rejected(breaker).retry_after == pytest.approx(7.0)
    assert "set_open" not in names(storage)  # the storage opened it already


def test_a_trial_takes_and_gives_back_a_shared_slot_and_closes_the_fleet(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    breaker, storage = shared(sync_interval=1000.0, max_half_open_wait=5.0)
    storage.failure_answer = None  # unavailable: the local count decides
    breaker.acquire().failure()
    breaker.acquire().failure()
    assert breaker.state is OPEN
    clock.advance(10)
    storage.calls.clear()
    breaker.call(ok)
    # The slot is given back only after the fleet is closed: released first, another
    # process could take a second trial while the fleet still looks half-open.
    assert storage.calls == [
        ("acquire_trial", "svc", 1, 5.0),
        ("set_closed", "svc"),
        ("release_trial", "svc"),
    ]


def test_a_failed_trial_reopens_the_fleet(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    breaker, storage = shared(sync_interval=1000.0)
    breaker.call(ok)
    storage.failure_answer = None
    trip(breaker)
    clock.advance(10)
    storage.calls.clear()
    breaker.acquire().failure()
    # Reopened before the slot is given back, so no process gets a trial in between.
    assert storage.calls == [
        ("acquire_trial", "svc", 1, 60.0),
        ("set_open", "svc", 10.0),
        ("release_trial", "svc"),
    ]


def tripped_shared(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]],
    clock: FakeClock,
    **options: Any,
) -> tuple[CircuitBreaker, RecordingStorage]:
    """A shared breaker whose open period is over: its next call is a trial."""
    breaker, storage = shared(sync_interval=1000.0, **options)
    breaker.call(ok)
    storage.failure_answer = None
    trip(breaker)
    clock.advance(10)
    storage.calls.clear()
    return breaker, storage


def leases_asked(storage: RecordingStorage) -> list[float]:
    return [call[3] for call in storage.calls if call[0] == "acquire_trial"]


@pytest.mark.parametrize(
    ("options", "trial_lease", "lease"),
    [
        # The call says how long it can run: that plus the margin, not a minute.
        ({}, 3.0, 3.0 + TRIAL_LEASE_MARGIN),
        # The config's trial_lease when the call says nothing; the call's wins.
        ({"trial_lease": 8.0}, None, 8.0 + TRIAL_LEASE_MARGIN),
        ({"trial_lease": 8.0}, 1.5, 1.5 + TRIAL_LEASE_MARGIN),
        # Never past max_half_open_wait: the breaker gives up on the trial then.
        ({"max_half_open_wait": 4.0}, 30.0, 4.0),
        ({"max_half_open_wait": None}, 30.0, 30.0 + TRIAL_LEASE_MARGIN),
        # Nothing known about the call: as before, max_half_open_wait or recovery_timeout.
        ({}, None, 60.0),
        ({"max_half_open_wait": None}, None, 10.0),
    ],
)
def test_a_trial_leases_its_fleet_slot_for_as_long_as_the_call_can_run(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]],
    clock: FakeClock,
    options: dict[str, Any],
    trial_lease: float | None,
    lease: float,
) -> None:
    breaker, storage = tripped_shared(shared, clock, **options)
    breaker.acquire(trial_lease=trial_lease).success()
    assert leases_asked(storage) == [pytest.approx(lease)]
    assert breaker.state is CLOSED


def test_trial_lease_is_not_sent_for_a_call_that_is_no_trial(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]],
) -> None:
    breaker, storage = shared(sync_interval=1000.0)
    breaker.acquire(trial_lease=2.0).success()
    assert leases_asked(storage) == []


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_a_trial_lease_that_is_no_duration_is_a_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match="trial_lease"):
        CircuitBreaker(name="lease-local").acquire(trial_lease=bad)
    with pytest.raises(ValueError, match="trial_lease"):
        CircuitBreaker(trial_lease=bad)


def test_a_service_session_leases_a_trial_for_its_timeout_plus_the_margin(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    breaker, storage = tripped_shared(shared, clock)
    session = ServiceSession(
        "http://grn.test", circuit_breaker=breaker, timeout=(1.0, 4.0), total_timeout=None
    )
    with responses.RequestsMock() as mock:
        mock.get("http://grn.test/a", body="ok")
        mock.get("http://grn.test/b", body="ok")
        assert session.get("http://grn.test/a").text == "ok"
        trip(breaker)
        clock.advance(10)
        # One number is both the connect and the read timeout.
        assert session.get("http://grn.test/b", timeout=2.5).text == "ok"
    assert leases_asked(storage) == [
        pytest.approx(5.0 + TRIAL_LEASE_MARGIN),
        pytest.approx(5.0 + TRIAL_LEASE_MARGIN),
    ]


def test_a_service_session_with_a_total_time_limit_leases_a_trial_for_that_limit(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    # The total limit bounds retries and Retry-After waits too, which the per-read
    # timeouts do not: it is how long the trial can really run.
    breaker, storage = tripped_shared(shared, clock)
    session = ServiceSession(
        "http://grn.test", circuit_breaker=breaker, timeout=(1.0, 4.0), total_timeout=3.0
    )
    with responses.RequestsMock() as mock:
        mock.get("http://grn.test/a", body="ok")
        assert session.get("http://grn.test/a").text == "ok"
    assert leases_asked(storage) == [pytest.approx(3.0 + TRIAL_LEASE_MARGIN, abs=0.05)]


def test_a_listener_interrupted_by_a_trial_outcome_still_closes_the_fleet_and_frees_the_slot(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    breaker, storage = shared(sync_interval=1000.0, max_half_open_wait=5.0)
    storage.failure_answer = None
    trip(breaker)
    clock.advance(10)
    permit = breaker.acquire()  # OPEN -> HALF_OPEN is told before the listener is added

    def interrupting(event: StateChangeEvent) -> None:
        raise KeyboardInterrupt

    breaker.add_listener(interrupting)
    storage.calls.clear()
    with pytest.raises(KeyboardInterrupt):
        permit.success()
    assert breaker.state is CLOSED
    assert storage.calls == [("set_closed", "svc"), ("release_trial", "svc")]


def test_all_shared_slots_taken_means_rejected_and_the_local_slot_freed(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    breaker, storage = shared(sync_interval=1000.0)
    breaker.call(ok)
    storage.failure_answer = None
    trip(breaker)
    clock.advance(10)
    storage.trial_answer = False
    assert rejected(breaker).state is HALF_OPEN
    storage.trial_answer = None  # unavailable: the local slot decides
    permit = breaker.acquire()
    assert permit.is_trial
    permit.success()
    assert breaker.state is CLOSED
    assert "release_trial" not in names(storage)  # no shared slot was taken


def test_an_interrupt_while_taking_a_shared_slot_frees_the_local_slot(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    breaker, storage = shared(sync_interval=1000.0)
    breaker.call(ok)
    storage.failure_answer = None
    trip(breaker)
    clock.advance(10)

    def interrupted(name: str, *, max_calls: int, lease: float) -> bool | None:
        raise KeyboardInterrupt

    storage.acquire_trial = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        breaker.call(ok)
    del storage.acquire_trial
    assert breaker.call(ok) == "ok"  # the interrupted call's trial slot was given back
    assert breaker.state is CLOSED


def test_a_slow_storage_round_trip_does_not_make_the_call_slow(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    breaker, storage = shared(slow_call_duration=0.5)

    def slow_load(name: str) -> SharedState | None:
        clock.advance(1.0)  # Redis answering at its socket timeout
        return SharedState(CLOSED)

    def slow_acquire_trial(name: str, *, max_calls: int, lease: float) -> bool | None:
        clock.advance(1.0)
        return True

    storage.load = slow_load  # type: ignore[method-assign]
    storage.acquire_trial = slow_acquire_trial  # type: ignore[method-assign]
    assert breaker.call(ok) == "ok"  # synced first: the sync is not the call's time
    storage.load = lambda name: None  # type: ignore[method-assign]
    storage.failure_answer = None  # unavailable: the local count trips it
    trip(breaker)
    clock.advance(10)
    permit = breaker.acquire()
    assert permit.is_trial
    permit.success()
    assert breaker.metrics().slow_calls == 0


def test_another_process_opening_it_is_seen_at_the_next_sync(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    events: list[StateChangeEvent] = []
    breaker, storage = shared(sync_interval=2.0, listeners=[events.append])
    breaker.call(ok)
    storage.state = SharedState(OPEN, open_remaining=25.0)
    clock.advance(1.0)
    breaker.call(ok)  # local view still fresh enough
    clock.advance(1.0)
    assert rejected(breaker).retry_after == pytest.approx(25.0)
    assert events[-1].reason is TransitionReason.SHARED_STATE
    storage.state = SharedState(CLOSED)
    clock.advance(2.0)
    assert breaker.call(ok) == "ok"
    assert breaker.state is CLOSED


def test_when_the_storage_answers_again_the_fleet_state_wins_over_a_local_trip(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    events: list[StateChangeEvent] = []
    breaker, storage = shared(sync_interval=1.0, listeners=[events.append])
    storage.state = storage.failure_answer = None  # Redis down: the local count decides
    trip(breaker)
    assert breaker.state is OPEN
    storage.state = SharedState(CLOSED)  # back, and the fleet never saw that trip
    storage.calls.clear()
    clock.advance(1.0)
    assert breaker.call(ok) == "ok"
    assert events[-1].reason is TransitionReason.SHARED_STATE
    # The local trip is not pushed to the fleet: it may be this host's network that
    # failed, and a fleet-wide OPEN would then cut every process off a healthy service.
    assert names(storage) == ["load"]


def test_a_sync_reply_older_than_a_transition_made_meanwhile_does_not_undo_it(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    breaker, storage = shared(sync_interval=1.0)
    storage.state = storage.failure_answer = None  # unavailable: the local count trips it
    trip(breaker)
    clock.advance(10)
    trial = breaker.acquire()
    assert trial.is_trial
    clock.advance(1.0)

    def load_while_the_trial_fails(name: str) -> SharedState | None:
        # Redis answers HALF_OPEN; before the reply arrives, another thread's trial
        # fails and reopens the breaker (and the fleet) for 10 s.
        trial.failure()
        return SharedState(HALF_OPEN)

    storage.load = load_while_the_trial_fails  # type: ignore[method-assign]
    refused = rejected(breaker)
    assert refused.state is OPEN
    assert refused.retry_after == pytest.approx(10.0)


def test_a_fleet_in_half_open_makes_the_next_call_a_shared_trial(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]],
) -> None:
    breaker, storage = shared()
    storage.state = SharedState(HALF_OPEN)  # another process's open period ended
    storage.trial_answer = False  # and its trial holds the only slot
    assert rejected(breaker).state is HALF_OPEN
    storage.trial_answer = True
    permit = breaker.acquire()
    assert permit.is_trial
    permit.success()
    assert breaker.state is CLOSED
    assert names(storage)[-3:] == ["acquire_trial", "set_closed", "release_trial"]


def test_rate_trips_forced_open_and_reset_are_shared(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]],
) -> None:
    breaker, storage = shared(
        failure_threshold=None, failure_rate_threshold=0.5, window_size=2, minimum_calls=2
    )
    breaker.call(ok)
    breaker.acquire().failure()
    assert breaker.state is OPEN
    assert storage.calls[-1] == ("set_open", "svc", 10.0)
    assert "record_failure" not in names(storage)  # no consecutive policy to count for
    breaker.reset()
    assert names(storage)[-1] == "set_closed"
    breaker.open()
    assert storage.calls[-1][:2] == ("set_open", "svc")
    assert storage.calls[-1][2] > 30 * 24 * 3600


def test_a_storage_that_raises_is_treated_as_unavailable(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker, storage = shared()
    storage.raise_on = {"load", "record_failure"}
    with caplog.at_level(logging.ERROR, logger="gennet_sync.circuit_breaker"):
        breaker.acquire().failure()
        breaker.acquire().failure()
    assert breaker.state is OPEN  # decided locally
    assert "storage.record_failure raised" in caplog.text


def test_a_shared_storage_needs_a_name() -> None:
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker(storage=RecordingStorage())


def test_a_healthy_shared_breaker_calls_no_storage_between_syncs(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]],
) -> None:
    breaker, storage = shared(sync_interval=1000.0)
    breaker.acquire().success()  # first admission syncs once
    storage.calls.clear()
    for _ in range(50):
        breaker.acquire().success()
        breaker.call(ok)
    assert storage.calls == []
    breaker.acquire().failure()
    storage.calls.clear()
    breaker.acquire().success()  # the fleet's count must start again
    assert names(storage) == ["reset_failures"]


def test_reading_state_sends_the_reopen_that_a_hung_trial_caused_at_once(
    shared: Callable[..., tuple[CircuitBreaker, RecordingStorage]], clock: FakeClock
) -> None:
    breaker, storage = shared(sync_interval=1000.0, max_half_open_wait=5.0)
    storage.failure_answer = None
    trip(breaker)
    clock.advance(10)
    hung = breaker.acquire()
    assert hung.is_trial
    clock.advance(6)  # the trial never reports back
    storage.calls.clear()
    assert breaker.state is OPEN
    # Sent now, not on some later unrelated call (when the fleet may have closed).
    assert names(storage) == ["set_open"]
    storage.calls.clear()
    breaker.metrics()
    assert storage.calls == []


# -- a fleet-wide time window ---------------------------------------------------------------------


class Fleet:
    """What a shared storage keeps of one breaker: its state and per-second window buckets."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.open_until: float | None = None
        self.buckets: dict[int, list[int]] = {}
        self.closings = 0
        self.available = True

    def state(self) -> SharedState:
        if self.open_until is None:
            return SharedState(CLOSED)
        if self.clock() < self.open_until:
            return SharedState(OPEN, open_remaining=self.open_until - self.clock())
        return SharedState(HALF_OPEN)

    def sync(
        self, deltas: tuple[int, int, int], window_seconds: int, closings: int | None
    ) -> SharedState | None:
        if not self.available:
            return None
        second = math.floor(self.clock())
        same_period = closings is None or closings == self.closings
        if self.open_until is None and same_period and deltas[0]:
            bucket = self.buckets.setdefault(second, [0, 0, 0])
            for kind, delta in enumerate(deltas):
                bucket[kind] += delta
        inside = [b for at, b in self.buckets.items() if at > second - window_seconds]
        calls, failures, slow = (sum(b[kind] for b in inside) for kind in range(3))
        totals = WindowTotals(calls, failures, slow, self.closings)
        return dataclasses.replace(self.state(), window=totals)

    def set_open(self, open_for: float) -> None:
        self.open_until = self.clock() + open_for
        self.buckets.clear()

    def set_closed(self) -> None:
        self.open_until = None
        self.buckets.clear()
        self.closings += 1


class FleetStorage(RecordingStorage):
    """One process's view of a :class:`Fleet`: a storage that aggregates windows like Redis."""

    def __init__(self, fleet: Fleet, sync_interval: float) -> None:
        super().__init__(sync_interval)
        self.fleet = fleet

    def load(self, name: str) -> SharedState | None:
        self._note("load", name)
        return self.fleet.state() if self.fleet.available else None

    def set_open(self, name: str, open_for: float) -> None:
        super().set_open(name, open_for)
        self.fleet.set_open(open_for)

    def set_closed(self, name: str) -> None:
        super().set_closed(name)
        self.fleet.set_closed()

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
        self._note("sync_window", name, calls, failures, slow_calls, closings)
        return self.fleet.sync((calls, failures, slow_calls), window_seconds, closings)


@pytest.fixture
def fleet(clock: FakeClock) -> Fleet:
    return Fleet(clock)


@pytest.fixture
def process(fleet: Fleet, clock: FakeClock) -> Callable[..., tuple[CircuitBreaker, FleetStorage]]:
    """A breaker of one more process of the fleet (rate policies only, a time window)."""

    def make(**options: Any) -> tuple[CircuitBreaker, FleetStorage]:
        storage = FleetStorage(fleet, options.pop("sync_interval", 1.0))
        settings: dict[str, Any] = {
            "failure_threshold": None,
            "recovery_timeout": 30.0,
            "failure_rate_threshold": 0.5,
            "window_type": "time",
            "window_size": 60,
            "minimum_calls": 6,
        }
        breaker = CircuitBreaker(name="svc", clock=clock, storage=storage, **settings | options)
        storage.breaker = breaker
        return breaker, storage

    return make


def test_a_window_sync_reply_older_than_a_transition_made_meanwhile_does_not_undo_it(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]], clock: FakeClock
) -> None:
    breaker, storage = process()
    trip(breaker)
    clock.advance(30)
    trial = breaker.acquire()
    assert trial.is_trial
    clock.advance(1.0)
    answer = storage.fleet.sync

    def sync_while_the_trial_fails(
        deltas: tuple[int, int, int], window_seconds: int, closings: int | None
    ) -> SharedState | None:
        reply = answer(deltas, window_seconds, closings)  # HALF_OPEN, as Redis saw it
        trial.failure()  # before the reply arrives: reopened here and fleet-wide
        return reply

    storage.fleet.sync = sync_while_the_trial_fails  # type: ignore[method-assign]
    refused = rejected(breaker)
    assert refused.state is OPEN
    assert refused.retry_after == pytest.approx(30.0)


def test_two_processes_each_below_minimum_calls_trip_on_their_fleet_window(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]], clock: FakeClock
) -> None:
    a_events: list[StateChangeEvent] = []
    b_events: list[StateChangeEvent] = []
    a, _ = process(listeners=[a_events.append])
    b, b_storage = process(listeners=[b_events.append])
    for _ in range(3):
        a.acquire().failure()
    clock.advance(1.0)
    a.acquire().ignore()  # a's next sync sends its three failures to the fleet
    assert a.state is CLOSED  # 3 calls: below minimum_calls, for a and for the fleet
    b.acquire().failure()
    b.acquire().failure()
    assert b.state is CLOSED
    assert b.metrics().window_calls == 5  # the fleet's 3 and b's own 2
    b.acquire().failure()  # alone b has 3 calls; the fleet has 6, all failed
    assert b.state is OPEN
    assert b_events[-1].reason is TransitionReason.FAILURE_RATE
    assert b_storage.calls[-1] == ("set_open", "svc", 30.0)
    clock.advance(1.0)
    assert rejected(a).retry_after == pytest.approx(29.0)
    assert a_events[-1].reason is TransitionReason.SHARED_STATE


def test_the_same_calls_without_a_shared_window_trip_nobody(clock: FakeClock) -> None:
    a, b = (
        CircuitBreaker(
            None,
            30.0,
            name=name,
            clock=clock,
            failure_rate_threshold=0.5,
            window_type="time",
            window_size=60,
            minimum_calls=6,
        )
        for name in ("a", "b")
    )
    for _ in range(3):
        a.acquire().failure()
        b.acquire().failure()
    assert (a.state, b.state) == (CLOSED, CLOSED)


def test_a_sync_that_brings_the_fleet_over_the_slow_call_rate_trips_it(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]], clock: FakeClock
) -> None:
    events: list[StateChangeEvent] = []
    options = {
        "failure_rate_threshold": None,
        "slow_call_duration": 2.0,
        "slow_call_rate_threshold": 0.5,
        "minimum_calls": 4,
    }
    a, _ = process(**options)
    b, b_storage = process(**options, listeners=[events.append])

    def slow() -> str:
        clock.advance(3.0)
        return "slow"

    # Each call's admission syncs (3 s passed), sending the previous call's outcome.
    a.call(slow)
    a.call(slow)
    b.call(slow)
    b.call(slow)
    a.acquire().ignore()  # the fleet now holds 3 slow calls: not yet minimum_calls
    assert (a.state, b.state) == (CLOSED, CLOSED)
    assert rejected(b).state is OPEN  # b's sync sends its last one: 4 slow out of 4
    assert events[-1].reason is TransitionReason.SLOW_CALL_RATE
    assert b_storage.calls[-2][:5] == ("sync_window", "svc", 1, 0, 1)
    assert b_storage.calls[-1][0] == "set_open"


def test_outcomes_since_the_last_sync_are_sent_once(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]], clock: FakeClock
) -> None:
    breaker, storage = process(sync_interval=30.0, minimum_calls=50)
    breaker.acquire().success()
    for _ in range(40):  # a healthy breaker between syncs: no storage call at all
        breaker.acquire().success()
    breaker.acquire().failure()
    breaker.acquire().ignore()  # counts neither way
    assert names(storage) == ["sync_window"]
    clock.advance(30.0)
    breaker.acquire().success()
    clock.advance(30.0)
    breaker.acquire().success()
    syncs = [call[2:5] for call in storage.calls]
    assert syncs == [(0, 0, 0), (42, 1, 0), (1, 0, 0)]


def test_outcomes_older_than_the_window_are_not_sent(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]], clock: FakeClock
) -> None:
    breaker, storage = process(sync_interval=1.0)
    breaker.acquire().failure()
    breaker.acquire().failure()
    clock.advance(59.0)  # a quiet process: its next sync comes late, still in the window
    breaker.acquire().failure()
    assert storage.calls[-1][:5] == ("sync_window", "svc", 2, 2, 0)
    clock.advance(60.0)  # quieter still: the failure has left the 60 s window
    breaker.acquire().ignore()
    assert storage.calls[-1][:5] == ("sync_window", "svc", 0, 0, 0)


def test_with_the_shared_window_unavailable_the_local_window_trips(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]], fleet: Fleet
) -> None:
    fleet.available = False
    breaker, storage = process(sync_interval=0.0, minimum_calls=3)
    breaker.acquire().success()
    breaker.acquire().failure()
    assert breaker.state is CLOSED
    breaker.acquire().failure()  # 2 of 3 local calls failed
    assert breaker.state is OPEN
    assert names(storage).count("sync_window") == 3
    assert breaker.metrics().window_calls == 3


def test_a_fleet_window_that_went_unavailable_is_no_longer_trusted(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]], fleet: Fleet, clock: FakeClock
) -> None:
    a, _ = process()
    b, _ = process()
    for _ in range(5):
        a.acquire().success()
    clock.advance(1.0)
    a.acquire().ignore()
    b.acquire().ignore()
    assert b.metrics().window_calls == 5  # the fleet's
    fleet.available = False
    clock.advance(1.0)
    b.acquire().ignore()
    assert b.metrics().window_calls == 0  # only b's own calls count now


def test_reopening_and_closing_start_the_fleet_window_again(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]], clock: FakeClock
) -> None:
    breaker, storage = process(sync_interval=0.0)
    for _ in range(6):
        breaker.acquire().failure()
    assert breaker.state is OPEN
    clock.advance(30.0)
    breaker.call(ok)  # the trial closes the fleet
    assert breaker.state is CLOSED
    assert [n for n in names(storage) if n.startswith("set_")] == ["set_open", "set_closed"]
    for _ in range(5):
        breaker.acquire().failure()
    assert breaker.state is CLOSED  # the failures before the trip are gone
    assert breaker.metrics().window_calls == 5


def test_outcomes_from_before_a_trip_never_join_the_next_closed_period(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]], clock: FakeClock
) -> None:
    a, _ = process()
    b, b_storage = process()
    b.acquire().failure()
    b.acquire().failure()  # then b goes quiet, its two failures not yet sent
    for _ in range(6):
        clock.advance(1.0)
        a.acquire().failure()
    assert a.state is OPEN
    clock.advance(30.0)
    a.call(ok)  # a's trial closes the fleet: a new CLOSED period
    clock.advance(1.0)
    b.acquire().ignore()
    assert b_storage.calls[-1] == ("sync_window", "svc", 2, 2, 0, 0)
    assert b.metrics().window_calls == 0, "refused: they belong to the period before the trip"
    b.acquire().failure()
    clock.advance(1.0)
    b.acquire().ignore()
    assert b_storage.calls[-1] == ("sync_window", "svc", 1, 1, 0, 1)
    assert b.metrics().window_calls == 1


def test_a_count_window_stays_per_process_even_with_a_window_storage(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]],
) -> None:
    breaker, storage = process(window_type="count", window_size=10, sync_interval=0.0)
    for _ in range(5):
        breaker.acquire().failure()
    assert breaker.state is CLOSED
    assert set(names(storage)) == {"load"}
    breaker.acquire().failure()
    assert breaker.state is OPEN


def test_a_forked_child_does_not_send_the_parents_window_outcomes(
    process: Callable[..., tuple[CircuitBreaker, FleetStorage]], clock: FakeClock
) -> None:
    breaker, storage = process(sync_interval=10.0)
    breaker.acquire().failure()
    breaker.acquire().failure()
    breaker._after_fork()  # what os.register_at_fork runs in the child
    clock.advance(10.0)
    breaker.acquire().ignore()
    # The parent sends its two failures itself; the child must not send them again.
    assert storage.calls[-1][:5] == ("sync_window", "svc", 0, 0, 0)

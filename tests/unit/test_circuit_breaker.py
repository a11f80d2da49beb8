"""The circuit breaker on a fake clock: transitions, classification, policies,
operational modes, listeners, the registry, threads, a hypothesis model, and
shared storage through recording fakes (the fleet window included)."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

import gennet_sync
from gennet_sync import storage as storage_module
from gennet_sync.breaker_policy import CountWindow, TimeWindow
from gennet_sync.circuit_breaker import (
    BreakerConfig,
    BreakerMode,
    CallPermit,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitBreakerRegistry,
    CircuitState,
    ExponentialOpenDuration,
    FixedOpenDuration,
    Outcome,
    StateChangeEvent,
    TransitionReason,
    all_circuit_breakers,
    circuit_breaker,
    circuit_breaker_metrics,
    clear_circuit_breakers,
    get_circuit_breaker,
    register_config,
    remove_circuit_breaker,
    set_default_storage,
)
from gennet_sync.circuit_breaker import registry as process_registry
from gennet_sync.exceptions import ServiceUnavailableError
from gennet_sync.redis_storage import RedisStorage
from gennet_sync.storage import MemoryStorage, WindowTotals
from tests.support.breakers import ok, rejected, trip
from tests.support.clock import FakeClock

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom("down")


@pytest.fixture
def make_breaker(clock: FakeClock) -> Callable[..., CircuitBreaker]:
    def make(**options: Any) -> CircuitBreaker:
        options.setdefault("name", "svc")
        options.setdefault("failure_threshold", 3)
        options.setdefault("recovery_timeout", 10.0)
        return CircuitBreaker(clock=clock, **options)

    return make


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", -1),
        ("failure_threshold", 2.5),
        ("failure_threshold", True),
        ("recovery_timeout", -1),
        ("recovery_timeout", float("nan")),
        ("recovery_timeout", float("inf")),
        ("half_open_max_calls", 0),
        ("success_threshold", 0),
        ("max_half_open_wait", 0),
        ("max_half_open_wait", -5),
        ("on_half_open_timeout", "wait"),
        ("failure_rate_threshold", 0),
        ("failure_rate_threshold", 1.5),
        ("slow_call_duration", 0),
        ("window_type", "sliding"),
        ("window_size", 0),
        ("minimum_calls", 0),
        ("record_exceptions", (ValueError, "oops")),
        ("ignore_exceptions", 42),
        ("record_result_if", "not callable"),
        ("open_duration", 3),
    ],
)
def test_a_bad_setting_is_a_value_error_naming_it(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        CircuitBreaker(**{name: value})


def test_rate_settings_that_could_never_trip_are_rejected() -> None:
    with pytest.raises(ValueError, match="failure_threshold=None"):
        BreakerConfig(failure_threshold=None)
    with pytest.raises(ValueError, match="minimum_calls"):
        BreakerConfig(failure_rate_threshold=0.5, window_size=5, minimum_calls=6)
    with pytest.raises(ValueError, match="slow_call_duration"):
        BreakerConfig(slow_call_rate_threshold=0.5)


def test_config_is_a_frozen_value() -> None:
    breaker = CircuitBreaker(failure_threshold=4, record_exceptions=(OSError,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        breaker.config.failure_threshold = 9  # type: ignore[misc]
    assert breaker.config == BreakerConfig(failure_threshold=4, record_exceptions=(OSError,))
    assert breaker.config.record_exceptions == (OSError,)


def test_state_is_a_string_enum_shared_with_the_storage_seam() -> None:
    assert gennet_sync.CircuitState is storage_module.CircuitState
    assert [state.value for state in CircuitState] == ["closed", "open", "half_open"]
    assert json.dumps({"state": CircuitState.HALF_OPEN}) == '{"state": "half_open"}'


# -- CLOSED -> OPEN -> HALF_OPEN -> CLOSED ---------------------------------------------------


def test_consecutive_failures_open_it(make_breaker: Callable[..., CircuitBreaker]) -> None:
    breaker = make_breaker(failure_threshold=3)
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is CLOSED
    assert breaker.failure_count == 2
    with pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is OPEN


def test_a_success_restarts_the_consecutive_count(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(failure_threshold=3)
    for _ in range(5):
        breaker.acquire().failure()
        breaker.acquire().failure()
        assert breaker.call(ok) == "ok"
    assert breaker.state is CLOSED
    assert breaker.failure_count == 0


def test_open_fails_fast_without_calling_and_says_when_to_retry(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(recovery_timeout=30.0)
    trip(breaker)
    calls: list[int] = []
    clock.advance(12.5)
    with pytest.raises(CircuitBreakerError) as info:
        breaker.call(calls.append, 1)
    assert calls == []
    error = info.value
    assert isinstance(error, ServiceUnavailableError)
    assert error.status_code == 503
    assert error.service == "svc"
    assert error.retry_after == pytest.approx(17.5)
    assert error.state is OPEN
    assert error.headers == {"Retry-After": "18"}
    envelope = error.to_dict()["error"]
    assert envelope["code"] == "SERVICE_UNAVAILABLE"
    assert envelope["type"] == "CircuitBreakerError"
    assert envelope["metadata"]["service"] == "svc"
    assert envelope["metadata"]["retry_after"] == pytest.approx(17.5)


@pytest.mark.parametrize("retry_after", [None, 12.3456, -0.5])
def test_the_rejection_fast_path_builds_the_same_error_as_the_constructor(
    retry_after: float | None,
) -> None:
    def looks(error: CircuitBreakerError) -> tuple[object, ...]:
        return (
            error.to_dict(),
            error.headers,
            error.service,
            error.retry_after,
            error.state,
            error.status_code,
            error.code,
            error.message,
            error.args,
            repr(error),
        )

    built = CircuitBreakerError("refused", service="s", retry_after=retry_after, state=HALF_OPEN)
    fast = CircuitBreakerError._refusal("refused", "s", retry_after, HALF_OPEN)
    assert looks(fast) == looks(built)


def test_after_the_recovery_timeout_a_trial_success_closes_it(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(recovery_timeout=10.0)
    trip(breaker)
    clock.advance(9.999)
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN
    assert breaker.call(ok) == "ok"
    assert breaker.state is CLOSED
    assert breaker.failure_count == 0


def test_a_trial_failure_reopens_it_for_another_recovery_timeout(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(recovery_timeout=10.0)
    trip(breaker)
    clock.advance(10)
    with pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is OPEN
    assert rejected(breaker).retry_after == pytest.approx(10.0)
    clock.advance(10)
    assert breaker.state is HALF_OPEN


def test_half_open_admits_only_max_calls_trials_and_the_rest_fail_fast(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(half_open_max_calls=2, max_half_open_wait=30.0)
    trip(breaker)
    clock.advance(10)
    first, second = breaker.acquire(), breaker.acquire()
    assert first.is_trial and second.is_trial
    clock.advance(4)
    error = rejected(breaker)
    assert error.state is HALF_OPEN
    assert error.retry_after == pytest.approx(26.0)  # until max_half_open_wait decides
    first.ignore()  # frees its slot
    third = breaker.acquire()
    assert third.is_trial
    second.success()
    assert breaker.state is CLOSED
    third.success()  # stale: the breaker already moved on
    assert breaker.state is CLOSED


def test_success_threshold_needs_that_many_trial_successes(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(success_threshold=3)
    trip(breaker)
    clock.advance(10)
    for _ in range(2):
        breaker.call(ok)
        assert breaker.state is HALF_OPEN
    breaker.call(ok)
    assert breaker.state is CLOSED


def test_an_outcome_reported_after_a_transition_does_not_count(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(failure_threshold=2)
    slow_success = breaker.acquire()  # admitted while CLOSED
    trip(breaker)
    clock.advance(10)
    assert breaker.state is HALF_OPEN
    slow_success.success()  # not a trial: must not close the breaker
    assert breaker.state is HALF_OPEN
    breaker.acquire()  # the real trial takes the only slot
    rejected(breaker)


def test_recording_twice_keeps_the_first_outcome(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(failure_threshold=2)
    permit = breaker.acquire()
    permit.failure()
    permit.success()
    permit.failure()
    assert permit.done
    assert breaker.failure_count == 1
    assert breaker.metrics().calls == 1


def test_the_permit_is_a_context_manager(make_breaker: Callable[..., CircuitBreaker]) -> None:
    breaker = make_breaker(failure_threshold=2)
    with pytest.raises(Boom), breaker.acquire():
        fail()
    with breaker.acquire() as permit:
        assert isinstance(permit, CallPermit)
    assert breaker.metrics().successes == 1
    assert breaker.metrics().failures == 1


# -- a trial that never reports back -----------------------------------------------------


def test_a_hung_trial_reopens_it_after_max_half_open_wait(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    events: list[StateChangeEvent] = []
    breaker = make_breaker(max_half_open_wait=5.0, listeners=[events.append])
    trip(breaker)
    clock.advance(10)
    hung = breaker.acquire()  # its thread never reports
    clock.advance(4.9)
    rejected(breaker)
    clock.advance(0.1)
    error = rejected(breaker)
    assert error.state is OPEN
    assert error.retry_after == pytest.approx(10.0)
    assert events[-1].reason is TransitionReason.HALF_OPEN_WAIT_EXPIRED
    hung.success()  # far too late: cannot close it
    assert breaker.state is OPEN
    clock.advance(10)
    assert breaker.acquire().is_trial


def test_a_hung_trial_can_be_configured_to_close_it(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(max_half_open_wait=5.0, on_half_open_timeout="close")
    trip(breaker)
    clock.advance(10)
    breaker.acquire()
    clock.advance(5)
    assert breaker.state is CLOSED
    assert not breaker.acquire().is_trial


def test_without_max_half_open_wait_a_hung_trial_blocks_recovery(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(max_half_open_wait=None)
    trip(breaker)
    clock.advance(10)
    breaker.acquire()
    clock.advance(10_000)
    assert rejected(breaker).retry_after == pytest.approx(10.0)


# -- what counts as a failure ----------------------------------------------------------------


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3), GeneratorExit()])
def test_a_base_exception_is_never_a_failure_and_frees_the_trial_slot(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock, error: BaseException
) -> None:
    breaker = make_breaker(failure_threshold=1)

    def interrupted() -> None:
        raise error

    with pytest.raises(type(error)):
        breaker.call(interrupted)
    assert breaker.state is CLOSED
    trip(breaker)
    clock.advance(10)
    with pytest.raises(type(error)):
        breaker.call(interrupted)
    assert breaker.state is HALF_OPEN
    assert breaker.acquire().is_trial  # the slot came back


def test_a_listener_interrupted_on_the_way_to_half_open_frees_the_trial_slot(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(failure_threshold=1)
    trip(breaker)
    clock.advance(10)

    def interrupting(event: StateChangeEvent) -> None:
        raise KeyboardInterrupt

    breaker.add_listener(interrupting)
    with pytest.raises(KeyboardInterrupt):
        breaker.call(ok)  # its admission moves OPEN -> HALF_OPEN and tells the listener
    breaker.remove_listener(interrupting)
    assert breaker.call(ok) == "ok"  # the interrupted call's trial slot was given back
    assert breaker.state is CLOSED


def test_a_predicate_interrupted_while_classifying_a_trial_frees_its_slot(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    interrupt = [False]

    def ignore_if(error: BaseException) -> bool:
        if interrupt[0]:
            raise KeyboardInterrupt
        return False

    breaker = make_breaker(failure_threshold=1, ignore_exception_if=ignore_if)
    trip(breaker)
    clock.advance(10)
    interrupt[0] = True
    with pytest.raises(KeyboardInterrupt):
        breaker.call(fail)
    interrupt[0] = False
    assert breaker.state is HALF_OPEN
    assert breaker.acquire().is_trial  # the interrupted trial's slot came back


def test_exceptions_are_classified_by_class_and_predicate(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    class NotFound(Exception):
        pass

    breaker = make_breaker(
        failure_threshold=2,
        record_exceptions=(OSError, ValueError),
        record_exception_if=lambda error: "transient" in str(error),
        ignore_exceptions=(TimeoutError,),
        ignore_exception_if=lambda error: "skip" in str(error),
    )
    config = breaker.config
    assert config.classify_exception(OSError("transient")) is Outcome.FAILURE
    assert config.classify_exception(OSError("permanent")) is Outcome.SUCCESS
    assert config.classify_exception(TimeoutError("transient")) is Outcome.IGNORED
    assert config.classify_exception(ValueError("transient skip")) is Outcome.IGNORED
    assert config.classify_exception(NotFound("transient")) is Outcome.SUCCESS

    def raise_(error: Exception) -> None:
        raise error

    with pytest.raises(OSError):
        breaker.call(raise_, OSError("transient"))
    assert breaker.failure_count == 1
    with pytest.raises(NotFound):
        breaker.call(raise_, NotFound("x"))  # the service answered: a success
    assert breaker.failure_count == 0
    with pytest.raises(TimeoutError):
        breaker.call(raise_, TimeoutError("transient"))
    metrics = breaker.metrics()
    assert (metrics.failures, metrics.successes, metrics.ignored) == (1, 1, 1)


def test_results_are_classified_by_predicate(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(failure_threshold=2, record_result_if=lambda status: status >= 500)
    assert breaker.call(lambda: 503) == 503
    assert breaker.call(lambda: 404) == 404
    assert breaker.failure_count == 0
    breaker.call(lambda: 500)
    breaker.call(lambda: 502)
    assert breaker.state is OPEN


def test_a_raising_result_predicate_counts_neither_way(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    def broken(result: object) -> bool:
        raise RuntimeError("predicate bug")

    breaker = make_breaker(failure_threshold=1, record_result_if=broken)
    trip(breaker)
    clock.advance(10)
    with pytest.raises(RuntimeError, match="predicate bug"):
        breaker.call(ok)
    assert breaker.acquire().is_trial  # the trial slot was given back


# -- open duration ---------------------------------------------------------------------------


def test_exponential_open_duration_grows_with_each_failed_trial_and_resets_on_close(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    policy = ExponentialOpenDuration(multiplier=2, max_duration=35, jitter=0.0)
    breaker = make_breaker(recovery_timeout=10.0, open_duration=policy)
    trip(breaker)
    seen = []
    for _ in range(4):
        seen.append(rejected(breaker).retry_after)
        clock.advance(100)
        breaker.acquire().failure()
    assert seen == [10.0, 20.0, 35.0, 35.0]
    clock.advance(100)
    breaker.call(ok)
    trip(breaker)
    assert rejected(breaker).retry_after == pytest.approx(10.0)


def test_exponential_open_duration_jitter_uses_the_injected_source() -> None:
    low = ExponentialOpenDuration(multiplier=3, jitter=0.2, random=lambda: 0.0)
    high = ExponentialOpenDuration(multiplier=3, jitter=0.2, random=lambda: 0.99)
    assert low(10.0, 1) == pytest.approx(8.0)
    assert low(10.0, 2) == pytest.approx(24.0)
    assert high(10.0, 1) == pytest.approx(11.96)
    assert low(10.0, 10_000) == pytest.approx(600 * 0.8)  # capped, no overflow
    assert FixedOpenDuration()(7.0, 99) == 7.0
    with pytest.raises(ValueError, match="multiplier"):
        ExponentialOpenDuration(multiplier=0.5)
    with pytest.raises(ValueError, match="jitter"):
        ExponentialOpenDuration(jitter=1.0)


def test_retry_after_is_the_real_remaining_time_with_jitter(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    policy = ExponentialOpenDuration(jitter=0.5, random=lambda: 0.25)
    breaker = make_breaker(recovery_timeout=8.0, open_duration=policy)
    trip(breaker)
    assert rejected(breaker).retry_after == pytest.approx(6.0)
    clock.advance(5.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN


def test_zero_recovery_timeout_makes_the_next_call_a_trial(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(recovery_timeout=0.0, failure_threshold=1)
    breaker.acquire().failure()
    assert breaker.state is HALF_OPEN
    assert breaker.acquire().is_trial


# -- operational modes -------------------------------------------------------------------------


def test_forced_open_stays_open_until_reset(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker()
    breaker.open()
    assert breaker.mode is BreakerMode.FORCED_OPEN
    clock.advance(1_000_000)
    error = rejected(breaker)
    assert error.retry_after is None
    assert "Retry-After" not in error.headers
    breaker.reset()
    assert breaker.state is CLOSED
    assert breaker.metrics().mode is BreakerMode.NORMAL
    assert breaker.call(ok) == "ok"


def test_reset_closes_an_open_breaker_and_clears_its_count(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(failure_threshold=2)
    trip(breaker)
    breaker.reset()
    assert breaker.state is CLOSED
    breaker.acquire().failure()
    assert breaker.state is CLOSED


def test_disabled_never_trips(make_breaker: Callable[..., CircuitBreaker]) -> None:
    breaker = make_breaker(failure_threshold=1)
    breaker.disable()
    for _ in range(50):
        with pytest.raises(Boom):
            breaker.call(fail)
    assert breaker.state is CLOSED
    assert breaker.mode is BreakerMode.DISABLED


def test_metrics_only_records_rates_but_never_rejects(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(
        failure_threshold=1, failure_rate_threshold=0.5, window_size=10, minimum_calls=4
    )
    trip(breaker)
    breaker.metrics_only()
    assert breaker.state is CLOSED
    for _ in range(6):
        breaker.acquire().failure()
    for _ in range(2):
        breaker.acquire().success()
    metrics = breaker.metrics()
    assert metrics.state is CLOSED
    assert metrics.mode is BreakerMode.METRICS_ONLY
    assert metrics.failure_rate == pytest.approx(0.75)
    assert metrics.window_calls == 8


# -- rate policies -------------------------------------------------------------------------------


def test_failure_rate_over_a_count_window_opens_it(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    events: list[StateChangeEvent] = []
    breaker = make_breaker(
        failure_threshold=None,
        failure_rate_threshold=0.5,
        window_size=10,
        minimum_calls=6,
        listeners=[events.append],
    )
    for _ in range(4):  # alternate: never 3 in a row, rate stays 50% only at the end
        breaker.acquire().success()
        breaker.acquire().failure()
        if breaker.state is OPEN:
            break
    assert breaker.state is OPEN
    assert breaker.metrics().calls == 6  # tripped as soon as minimum_calls was reached
    assert events[-1].reason is TransitionReason.FAILURE_RATE


def test_the_count_window_forgets_the_oldest_calls(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(
        failure_threshold=None, failure_rate_threshold=0.5, window_size=4, minimum_calls=4
    )
    breaker.acquire().failure()
    for _ in range(3):
        breaker.acquire().success()
    for _ in range(10):  # one failure in every window of 4: 25%
        breaker.acquire().failure()
        for _ in range(3):
            breaker.acquire().success()
    assert breaker.state is CLOSED
    assert breaker.metrics().failure_rate == pytest.approx(0.25)


def test_the_time_window_forgets_calls_older_than_its_size(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(
        failure_threshold=None,
        failure_rate_threshold=0.5,
        window_type="time",
        window_size=10,
        minimum_calls=3,
    )
    breaker.acquire().failure()
    breaker.acquire().failure()
    clock.advance(10)  # those two fall out of the window
    breaker.acquire().success()
    breaker.acquire().success()
    breaker.acquire().failure()
    assert breaker.state is CLOSED
    assert breaker.metrics().window_calls == 3
    clock.advance(5)
    breaker.acquire().failure()
    assert breaker.state is OPEN


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 12),
    steps=st.lists(
        st.tuples(st.floats(-4, 7, allow_nan=False), st.booleans(), st.booleans()), max_size=60
    ),
)
def test_the_time_window_counts_exactly_the_calls_of_its_last_seconds(
    size: int, steps: list[tuple[float, bool, bool]]
) -> None:
    # A negative gap is a thread that read the clock before a faster one recorded.
    window = TimeWindow(size)
    latest = -math.inf
    seen: list[tuple[int, bool, bool]] = []
    for gap, failed, slow in steps:
        at = max(latest, 100.0) + gap
        latest = max(latest, at)
        window.record(failed, slow, at)
        end = math.floor(latest)
        if math.floor(at) > end - size:
            seen.append((math.floor(at), failed, slow))
        inside = [call for call in seen if call[0] > end - size]
        expected = (len(inside), sum(c[1] for c in inside), sum(c[2] for c in inside))
        assert window.totals(at) == WindowTotals(*expected)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 8), steps=st.lists(st.tuples(st.booleans(), st.booleans())))
def test_the_count_window_counts_exactly_its_last_calls(
    size: int, steps: list[tuple[bool, bool]]
) -> None:
    window = CountWindow(size)
    for index, (failed, slow) in enumerate(steps):
        window.record(failed, slow, 0.0)
        inside = steps[max(0, index + 1 - size) : index + 1]
        expected = (len(inside), sum(c[0] for c in inside), sum(c[1] for c in inside))
        assert window.totals(0.0) == WindowTotals(*expected)


def test_slow_call_rate_opens_it(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    events: list[StateChangeEvent] = []
    breaker = make_breaker(
        slow_call_duration=2.0,
        slow_call_rate_threshold=0.5,
        window_size=4,
        minimum_calls=4,
        listeners=[events.append],
    )

    def takes(seconds: float) -> str:
        clock.advance(seconds)
        return "done"

    breaker.call(takes, 0.1)
    breaker.call(takes, 0.1)
    breaker.call(takes, 2.0)
    assert breaker.state is CLOSED
    breaker.call(takes, 5.0)
    assert breaker.state is OPEN
    assert events[-1].reason is TransitionReason.SLOW_CALL_RATE
    assert breaker.metrics().slow_calls == 2


# -- listeners and metrics --------------------------------------------------------------------


def test_listeners_receive_a_frozen_event_for_every_transition(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    events: list[StateChangeEvent] = []
    breaker = make_breaker(failure_threshold=1, listeners=[events.append])
    breaker.acquire().failure()
    clock.advance(10)
    breaker.call(ok)
    breaker.open()
    breaker.reset()
    assert [(e.old_state, e.new_state, e.reason) for e in events] == [
        (CLOSED, OPEN, TransitionReason.FAILURE_THRESHOLD),
        (OPEN, HALF_OPEN, TransitionReason.RECOVERY_TIMEOUT),
        (HALF_OPEN, CLOSED, TransitionReason.TRIAL_SUCCEEDED),
        (CLOSED, OPEN, TransitionReason.FORCED_OPEN),
        (OPEN, CLOSED, TransitionReason.RESET),
    ]
    assert events[0].name == "svc"
    assert events[0].at == 1000.0
    assert events[1].at == 1010.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].reason = TransitionReason.RESET  # type: ignore[misc]


def test_listeners_run_outside_the_lock(make_breaker: Callable[..., CircuitBreaker]) -> None:
    seen: list[CircuitState] = []
    breaker = make_breaker(failure_threshold=1)
    # Calling back into the breaker would deadlock if the lock were held.
    breaker.add_listener(lambda event: seen.append(breaker.metrics().state))
    worker = threading.Thread(target=lambda: breaker.acquire().failure(), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert seen == [OPEN]


def test_a_raising_listener_is_logged_and_breaks_nothing(
    make_breaker: Callable[..., CircuitBreaker], caplog: pytest.LogCaptureFixture
) -> None:
    after: list[StateChangeEvent] = []

    def broken(event: StateChangeEvent) -> None:
        raise RuntimeError("listener bug")

    breaker = make_breaker(failure_threshold=1, listeners=[broken, after.append])
    with caplog.at_level(logging.ERROR, logger="gennet_sync.circuit_breaker"):
        breaker.acquire().failure()
    assert breaker.state is OPEN
    assert len(after) == 1
    assert "listener" in caplog.text
    assert "listener bug" in caplog.text
    breaker.remove_listener(broken)
    breaker.reset()
    assert len(after) == 2


def test_metrics_snapshot_counts_everything(
    make_breaker: Callable[..., CircuitBreaker], clock: FakeClock
) -> None:
    breaker = make_breaker(failure_threshold=2)
    breaker.call(ok)
    breaker.acquire().ignore()
    trip(breaker)
    rejected(breaker)
    rejected(breaker)
    clock.advance(3)
    metrics = breaker.metrics()
    assert metrics.name == "svc"
    assert metrics.state is OPEN
    assert (metrics.calls, metrics.successes, metrics.failures, metrics.ignored) == (4, 1, 2, 1)
    assert metrics.rejections == 2
    assert metrics.consecutive_failures == 2
    assert metrics.opened_at == 1000.0
    assert metrics.retry_after == pytest.approx(7.0)
    assert metrics.failure_rate is None


# -- decorator and context manager -------------------------------------------------------------


def test_the_instance_is_a_decorator_that_keeps_the_signature(
    make_breaker: Callable[..., CircuitBreaker],
) -> None:
    breaker = make_breaker(failure_threshold=1)

    @breaker
    def double(value: int, *, times: int = 2) -> int:
        """Multiply."""
        return value * times

    assert double(4, times=3) == 12
    assert double.__name__ == "double"
    assert double.__doc__ == "Multiply."
    assert double.__wrapped__(1) == 2  # type: ignore[attr-defined]
    breaker.open()
    with pytest.raises(CircuitBreakerError):
        double(1)


def test_the_decorator_factory_makes_one_breaker_per_function(clock: FakeClock) -> None:
    @circuit_breaker(failure_threshold=1, recovery_timeout=5, clock=clock)
    def flaky() -> None:
        raise Boom

    @circuit_breaker(failure_threshold=1, recovery_timeout=5, name="steady", clock=clock)
    def steady() -> str:
        return "fine"

    with pytest.raises(Boom):
        flaky()
    with pytest.raises(CircuitBreakerError) as info:
        flaky()
    assert info.value.service.endswith("flaky")  # type: ignore[union-attr]
    assert steady() == "fine"
    assert steady.circuit_breaker.name == "steady"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="recovery_timeout"):
        circuit_breaker(recovery_timeout=-1)


def test_the_instance_is_a_context_manager(make_breaker: Callable[..., CircuitBreaker]) -> None:
    breaker = make_breaker(failure_threshold=2)
    with breaker:
        pass
    with pytest.raises(Boom), breaker:
        with breaker:  # nested blocks each hold their own permit
            pass
        fail()
    with pytest.raises(KeyboardInterrupt), breaker:
        raise KeyboardInterrupt
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures, metrics.ignored) == (2, 1, 1)
    with pytest.raises(Boom), breaker:
        fail()
    with pytest.raises(CircuitBreakerError), breaker:
        pytest.fail("the body must not run while OPEN")


# -- the registry ------------------------------------------------------------------------------


def test_the_registry_returns_one_breaker_per_name() -> None:
    grn = get_circuit_breaker("grn", failure_threshold=3)
    assert get_circuit_breaker("grn") is grn
    assert get_circuit_breaker("grn", failure_threshold=3) is grn
    assert get_circuit_breaker("other") is not grn
    assert grn.name == "grn"
    assert grn.config.failure_threshold == 3


def test_asking_again_with_different_settings_names_them() -> None:
    get_circuit_breaker("grn", failure_threshold=3, recovery_timeout=30.0)
    with pytest.raises(ValueError, match=r"failure_threshold, recovery_timeout"):
        get_circuit_breaker("grn", failure_threshold=4, recovery_timeout=31.0)
    with pytest.raises(ValueError, match="storage"):
        get_circuit_breaker("grn", storage=MemoryStorage())
    with pytest.raises(ValueError, match="no_such_setting"):
        get_circuit_breaker("new", no_such_setting=1)
    with pytest.raises(ValueError, match="add_listener"):
        get_circuit_breaker("grn", listeners=[print])


def test_named_configs_with_per_service_overrides() -> None:
    register_config("default", failure_threshold=5, recovery_timeout=30.0, half_open_max_calls=2)
    grn = get_circuit_breaker("grn", config="default", failure_threshold=3)
    assert (grn.config.failure_threshold, grn.config.recovery_timeout) == (3, 30.0)
    assert grn.config.half_open_max_calls == 2
    assert get_circuit_breaker("grn", config="default", failure_threshold=3) is grn
    with pytest.raises(ValueError, match="failure_threshold"):
        get_circuit_breaker("grn", config="default")
    with pytest.raises(ValueError, match="nope"):
        get_circuit_breaker("x", config="nope")
    with pytest.raises(ValueError, match="failure_threshold"):
        register_config("bad", failure_threshold=0)


def test_the_registry_lists_every_breaker_with_its_metrics() -> None:
    get_circuit_breaker("b").call(ok)
    get_circuit_breaker("a").open()
    assert [breaker.name for breaker in all_circuit_breakers()] == ["a", "b"]
    metrics = circuit_breaker_metrics()
    assert metrics["a"].state is OPEN
    assert metrics["b"].successes == 1
    clear_circuit_breakers()
    assert all_circuit_breakers() == []


def test_operators_views_see_decorated_and_tracked_breakers_while_they_live() -> None:
    registry = CircuitBreakerRegistry()
    registered = registry.get("b-registered")
    mine = CircuitBreaker(name="a-mine")
    registry.track(mine)
    registry.track(registered)  # tracking a registered one shows it once
    assert registry.observable() == [mine, registered]
    assert registry.all() == [registered]  # tracked is not registered
    del mine
    gc.collect()
    assert registry.observable() == [registered]  # held weakly: nothing kept alive
    registry.clear()
    assert registry.observable() == []


def test_a_decorated_function_s_breaker_is_in_the_process_s_observable_breakers() -> None:
    @circuit_breaker(name="payments")
    def pay() -> None: ...

    assert [breaker.name for breaker in process_registry.observable()] == ["payments"]
    assert all_circuit_breakers() == []  # get_circuit_breaker("payments") would make another
    del pay
    gc.collect()
    assert process_registry.observable() == []


def test_the_registry_removes_one_breaker_by_name() -> None:
    kept = get_circuit_breaker("kept")
    gone = get_circuit_breaker("gone", failure_threshold=2)
    assert remove_circuit_breaker("gone") is gone
    assert all_circuit_breakers() == [kept]
    assert remove_circuit_breaker("gone") is None  # already gone: nothing to remove
    # A new breaker under the old name starts fresh, with its own settings.
    again = get_circuit_breaker("gone", failure_threshold=7)
    assert again is not gone and again.config.failure_threshold == 7


def test_the_registry_removes_only_the_breaker_it_was_asked_to() -> None:
    registry = CircuitBreakerRegistry()
    old = registry.get("host:1")
    registry.remove("host:1")
    new = registry.get("host:1")
    # A caller still holding the old breaker cannot remove its successor.
    assert registry.remove("host:1", breaker=old) is None
    assert registry.get("host:1") is new
    assert registry.remove("host:1", breaker=new) is new
    assert registry.all() == []


def test_registry_storage_comes_from_the_default_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENNET_BREAKER_STORAGE", "redis://127.0.0.1:1/0?prefix=t")
    registry = CircuitBreakerRegistry()
    first = registry.get("one").storage
    assert isinstance(first, RedisStorage)
    assert first.prefix == "t"
    assert registry.get("two").storage is first  # one storage per URL per process
    try:
        custom = MemoryStorage()
        registry.set_default_storage(custom)
        assert registry.get("three").storage is custom
        registry.set_default_storage("memory://")
        assert isinstance(registry.get("four").storage, MemoryStorage)
        monkeypatch.delenv("GENNET_BREAKER_STORAGE")
        set_default_storage(None)
        assert type(get_circuit_breaker("five").storage) is MemoryStorage
    finally:
        first.close()


def test_concurrent_first_use_creates_one_breaker() -> None:
    barrier = threading.Barrier(16)
    found: list[CircuitBreaker] = []

    def use() -> None:
        barrier.wait()
        found.append(get_circuit_breaker("racy", failure_threshold=2))

    threads = [threading.Thread(target=use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(found) == 16
    assert len({id(breaker) for breaker in found}) == 1


# -- threads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_calls", [1, 3])
def test_64_threads_into_half_open_let_exactly_max_calls_trials_through(
    clock: FakeClock, max_calls: int
) -> None:
    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=10, half_open_max_calls=max_calls, clock=clock
    )
    threads_count, rounds = 64, 30
    barrier = threading.Barrier(threads_count + 1)
    admitted: list[list[CallPermit]] = [[] for _ in range(rounds)]
    rejections = [0] * rounds
    count_lock = threading.Lock()

    def worker() -> None:
        for round_ in range(rounds):
            barrier.wait()
            try:
                permit = breaker.acquire()
            except CircuitBreakerError:
                with count_lock:
                    rejections[round_] += 1
            else:
                with count_lock:
                    admitted[round_].append(permit)
            barrier.wait()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    breaker.acquire().failure()
    for round_ in range(rounds):
        clock.advance(10)
        barrier.wait()  # release all 64 together into HALF_OPEN
        barrier.wait()  # all have been admitted or refused
        assert len(admitted[round_]) == max_calls
        assert rejections[round_] == threads_count - max_calls
        assert all(permit.is_trial for permit in admitted[round_])
        admitted[round_][0].failure()  # reopen for the next round
        assert breaker.state is OPEN
    for thread in threads:
        thread.join(timeout=10)
    assert breaker.metrics().rejections == rounds * (threads_count - max_calls)


def test_8_threads_hammering_closed_lose_no_counts() -> None:
    breaker = CircuitBreaker(
        failure_threshold=10**9, failure_rate_threshold=1.0, window_size=10**6, minimum_calls=10**6
    )
    per_thread = 3000
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for index in range(per_thread):
            permit = breaker.acquire()
            if index % 3 == 0:
                permit.failure()
            elif index % 3 == 1:
                permit.success()
            else:
                permit.ignore()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    metrics = breaker.metrics()
    assert metrics.calls == 8 * per_thread
    assert metrics.failures == metrics.successes == metrics.ignored == 8 * per_thread // 3
    assert metrics.window_calls == 2 * 8 * per_thread // 3


def test_8_threads_hammering_the_hot_path_lose_no_successes() -> None:
    breaker = CircuitBreaker()
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(5000):
            breaker.call(ok)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert breaker.metrics().successes == 40_000


def test_a_slow_call_does_not_block_other_threads() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(timeout=30)
        return "slow"

    results: list[str] = []
    slow_thread = threading.Thread(target=lambda: results.append(breaker.call(slow)))
    slow_thread.start()
    try:
        assert entered.wait(timeout=5)
        fast_thread = threading.Thread(target=lambda: results.append(breaker.call(ok)))
        fast_thread.start()
        fast_thread.join(timeout=5)
        assert not fast_thread.is_alive()
        assert results == ["ok"]  # finished while the slow call is still running
        assert slow_thread.is_alive()
    finally:
        release.set()
        slow_thread.join(timeout=5)
    assert results == ["ok", "slow"]


def test_a_rejected_call_never_waits_for_the_running_trial(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, clock=clock)
    breaker.acquire().failure()
    clock.advance(1)
    entered, release = threading.Event(), threading.Event()

    def hanging_trial() -> None:
        entered.set()
        release.wait(timeout=30)

    trial = threading.Thread(target=breaker.call, args=(hanging_trial,))
    trial.start()
    try:
        assert entered.wait(timeout=5)
        refused: list[CircuitBreakerError] = []

        def refused_call() -> None:
            try:
                breaker.call(ok)
            except CircuitBreakerError as error:
                refused.append(error)

        other = threading.Thread(target=refused_call)
        other.start()
        other.join(timeout=1)
        assert not other.is_alive()
        assert len(refused) == 1
        assert refused[0].state is HALF_OPEN
    finally:
        release.set()
        trial.join(timeout=5)
    assert breaker.state is CLOSED


# -- the model: hypothesis drives the breaker and a plain model side by side ---------------------


class Model:
    """The breaker's contract, written as plainly as possible."""

    def __init__(
        self, threshold: int, max_calls: int, successes_needed: int, wait: float | None
    ) -> None:
        self.threshold, self.max_calls, self.successes_needed = (
            threshold,
            max_calls,
            successes_needed,
        )
        self.wait = wait
        self.half_open_at = 0.0
        self.state = CLOSED
        self.failures = 0
        self.open_until = 0.0
        self.trials = 0
        self.trial_successes = 0
        self.epoch = 0

    def move(self, state: CircuitState) -> None:
        self.state, self.epoch = state, self.epoch + 1
        self.trials = self.trial_successes = 0
        if state is CLOSED:
            self.failures = 0

    def refresh(self, now: float) -> None:
        if self.state is OPEN and now >= self.open_until:
            self.move(HALF_OPEN)
            self.half_open_at = now
        if (
            self.state is HALF_OPEN
            and self.wait is not None
            and now - self.half_open_at >= self.wait
        ):
            self.move(OPEN)  # the trials never reported back
            self.open_until = now + 10

    def admit(self, now: float) -> tuple[int, bool] | None:
        self.refresh(now)
        if self.state is CLOSED:
            return self.epoch, False
        if self.state is HALF_OPEN and self.trials < self.max_calls:
            self.trials += 1
            return self.epoch, True
        return None

    def record(self, epoch: int, trial: bool, outcome: Outcome, now: float) -> None:
        if epoch != self.epoch:
            return
        if trial:
            if outcome is Outcome.FAILURE:
                self.move(OPEN)
                self.open_until = now + 10
                return
            self.trials -= 1
            if outcome is Outcome.SUCCESS:
                self.trial_successes += 1
                if self.trial_successes >= self.successes_needed:
                    self.move(CLOSED)
            return
        if outcome is Outcome.SUCCESS:
            self.failures = 0
        elif outcome is Outcome.FAILURE:
            self.failures += 1
            if self.failures >= self.threshold:
                self.move(OPEN)
                self.open_until = now + 10


class BreakerMatchesModel(RuleBasedStateMachine):
    permits = Bundle("permits")

    @initialize(
        threshold=st.integers(1, 4),
        max_calls=st.integers(1, 3),
        needed=st.integers(1, 3),
        wait=st.sampled_from([None, 15.0]),
    )
    def build(self, threshold: int, max_calls: int, needed: int, wait: float | None) -> None:
        self.clock = FakeClock(0.0)
        self.breaker = CircuitBreaker(
            failure_threshold=threshold,
            recovery_timeout=10,
            half_open_max_calls=max_calls,
            success_threshold=needed,
            max_half_open_wait=wait,
            clock=self.clock,
        )
        self.model = Model(threshold, max_calls, needed, wait)

    @rule(target=permits)
    def acquire(self) -> tuple[CallPermit, int, bool] | None:
        expected = self.model.admit(self.clock.now)
        try:
            permit = self.breaker.acquire()
        except CircuitBreakerError:
            assert expected is None
            return None
        assert expected is not None
        assert permit.is_trial == expected[1]
        return permit, expected[0], expected[1]

    @rule(
        held=consumes(permits),
        outcome=st.sampled_from([Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED]),
    )
    def report(self, held: tuple[CallPermit, int, bool] | None, outcome: Outcome) -> None:
        if held is None:
            return
        permit, epoch, trial = held
        permit.record(outcome)
        self.model.record(epoch, trial, outcome, self.clock.now)

    @rule(outcomes=st.lists(st.sampled_from([Outcome.SUCCESS, Outcome.FAILURE]), max_size=4))
    def calls_in_a_row(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            held = self.acquire()
            self.report(held, outcome)

    @rule(seconds=st.sampled_from([0.5, 5.0, 10.0, 15.0, 25.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.move(CLOSED)

    @invariant()
    def same_state(self) -> None:
        if not hasattr(self, "model"):
            return
        self.model.refresh(self.clock.now)
        assert self.breaker.state is self.model.state
        assert self.breaker.failure_count == self.model.failures


BreakerMatchesModel.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, database=None
)
test_breaker_matches_the_model = BreakerMatchesModel.TestCase


def test_a_copy_is_the_same_breaker_and_pickling_says_why_not(clock: FakeClock) -> None:
    import copy
    import pickle

    breaker = CircuitBreaker(failure_threshold=1, name="copied", clock=clock)
    assert copy.copy(breaker) is breaker
    assert copy.deepcopy({"b": breaker})["b"] is breaker
    breaker.acquire().failure()
    assert copy.copy(breaker).state is OPEN
    with pytest.raises(TypeError, match="get_circuit_breaker"):
        pickle.dumps(breaker)

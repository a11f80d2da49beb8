"""gennet_sync.retry_budget: the budget's arithmetic on a fake clock, under threads,
and the sessions that share it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from gennet_sync.http_client import ServiceSession
from gennet_sync.retry_budget import (
    DEFAULT_RETRY_BUDGET,
    RetryBudget,
    RetryBudgetConfig,
    get_retry_budget,
    remove_retry_budget,
)
from tests.support.clock import FakeClock

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")


def _spend(budget: RetryBudget) -> int:
    """Retries the budget grants now, taken until it refuses one."""
    granted = 0
    while budget.try_retry():
        granted += 1
        assert granted < 10_000
    return granted


def test_retries_are_a_share_of_the_calls_in_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_per_second=0), clock)
    assert not budget.try_retry()  # no calls: no retries
    for _ in range(100):
        budget.record_call()
    assert _spend(budget) == 20
    assert budget.retries_refused == 2
    for _ in range(10):
        budget.record_call()
    assert _spend(budget) == 2  # 110 calls: 22 retries in all


def test_the_minimum_per_second_lets_a_quiet_service_retry() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, window=10, min_per_second=0.5), clock)
    assert _spend(budget) == 5  # 0.5 a second over 10 s, with no calls at all


def test_calls_and_retries_leave_the_window_as_time_passes() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(RetryBudgetConfig(ratio=1, window=10, min_per_second=0, buckets=10), clock)
    for _ in range(10):
        budget.record_call()
    assert _spend(budget) == 10
    clock.advance(5)
    for _ in range(4):
        budget.record_call()
    assert _spend(budget) == 4  # 14 calls, 14 retries in the window
    clock.advance(5)  # the first 10 calls and 10 retries leave it
    assert (budget.calls, budget.retries) == (4, 4)
    assert not budget.try_retry()
    clock.advance(10)
    assert (budget.calls, budget.retries) == (0, 0)
    clock.advance(10_000)  # a long idle gap empties everything at once
    budget.record_call()
    assert (budget.calls, budget.retries) == (1, 0)


def test_a_refunded_retry_is_as_if_it_had_never_been_taken() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0.0, min_per_second=0.1, window=10), clock=clock)
    assert budget.try_retry()  # the one retry the window allows
    assert not budget.try_retry()
    clock.advance(5)  # given back from the older bucket it was taken in
    budget.refund()
    assert budget.retries == 0
    assert budget.try_retry()
    budget.refund()
    budget.refund()  # nothing left to give back: no negative count
    assert budget.retries == 0 and budget.try_retry()


def test_threads_take_exactly_the_retries_the_budget_has() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0.25, min_per_second=0), clock)
    for _ in range(4000):
        budget.record_call()
    granted: list[int] = []
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        granted.append(sum(budget.try_retry() for _ in range(500)))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(granted) == 1000
    assert budget.retries_refused == 16 * 500 - 1000


@pytest.mark.parametrize(
    "settings",
    [
        {"ratio": -0.1},
        {"ratio": float("nan")},
        {"window": 0},
        {"window": float("inf")},
        {"min_per_second": -1},
        {"buckets": 0},
        {"buckets": True},
    ],
)
def test_bad_settings_fail_at_construction(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryBudgetConfig(**settings)


def test_sessions_for_one_service_share_its_budget_and_others_have_their_own() -> None:
    try:
        first = ServiceSession(base_url="http://grn.test", service_name="budget-shared")
        second = ServiceSession(base_url="http://grn.test", service_name="budget-shared")
        assert first._retry_budget is second._retry_budget
        assert first._retry_budget is get_retry_budget("budget-shared")
        assert first.retry_budget == DEFAULT_RETRY_BUDGET
        with pytest.raises(ValueError, match="budget-shared"):
            ServiceSession(
                base_url="http://grn.test",
                service_name="budget-shared",
                retry_budget=RetryBudgetConfig(ratio=0.5),
            )
        hosts = ServiceSession(), ServiceSession()
        assert hosts[0]._retry_budget is not hosts[1]._retry_budget
        assert ServiceSession(retry_budget=None)._retry_budget is None
    finally:
        remove_retry_budget("budget-shared")

"""gennet_sync.retry_budget shared fleet-wide: on a fake clock with an in-memory
stand-in for a shared storage (several budgets, one "fleet")."""

from __future__ import annotations

from typing import ClassVar

import pytest

from gennet_sync.http_client import ServiceSession
from gennet_sync.retry_budget import RetryBudget, RetryBudgetConfig, get_retry_budget
from gennet_sync.storage import MemoryStorage, RetryBudgetStorage, RetryTotals
from tests.support.clock import FakeClock
from tests.unit.test_retry_budget import _spend

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

NO_FLOOR = RetryBudgetConfig(ratio=0.2, min_per_second=0, window=10)


class FleetStorage:
    """Sums the counts of every budget that syncs with it (no window: tests stay within one)."""

    shared: ClassVar[bool] = True

    def __init__(self, sync_interval: float = 1.0) -> None:
        self.sync_interval = sync_interval
        self.totals: dict[str, RetryTotals] = {}
        self.syncs = 0
        self.down = False

    def sync_retry_budget(
        self, name: str, *, calls: int, retries: int, window_seconds: int
    ) -> RetryTotals | None:
        self.syncs += 1
        if self.down:
            return None
        old = self.totals.get(name, RetryTotals())
        new = RetryTotals(old.calls + calls, old.retries + retries)
        self.totals[name] = new
        return new


def _record(budget: RetryBudget, calls: int) -> None:
    for _ in range(calls):
        budget.record_call()


def _fleet(
    sync_interval: float, count: int = 2
) -> tuple[FakeClock, FleetStorage, list[RetryBudget]]:
    """``count`` budgets of service "svc" (processes with counts of their own), one fleet."""
    clock, storage = FakeClock(), FleetStorage(sync_interval)
    budgets = [RetryBudget(NO_FLOOR, clock, name="svc", storage=storage) for _ in range(count)]
    return clock, storage, budgets


def test_the_fleet_storage_satisfies_the_protocol_and_memory_storage_does_not() -> None:
    assert isinstance(FleetStorage(), RetryBudgetStorage)
    assert not isinstance(MemoryStorage(), RetryBudgetStorage)
    budget = RetryBudget(NO_FLOOR, name="svc", storage=MemoryStorage())
    assert not budget.shared  # a per-process storage leaves the budget local


def test_a_shared_budget_needs_a_name() -> None:
    with pytest.raises(ValueError, match="name"):
        RetryBudget(NO_FLOOR, storage=FleetStorage())


def test_calls_never_reach_the_storage_only_retry_decisions_do() -> None:
    clock, storage = FakeClock(), FleetStorage()
    budget = RetryBudget(NO_FLOOR, clock, name="svc", storage=storage)
    _record(budget, 1000)
    assert storage.syncs == 0  # the success path costs no storage call
    assert budget.try_retry()
    assert storage.syncs == 1
    assert storage.totals["svc"] == RetryTotals(calls=1000, retries=0)


def test_the_ratio_is_judged_on_the_whole_fleets_calls_and_retries() -> None:
    _, storage, (first, second) = _fleet(0)
    _record(first, 50)
    _record(second, 50)
    # The first knows of its own 50 calls only (the second has not synced yet).
    assert _spend(first) == 10
    # The second pushes its 50: 100 fleet calls, 10 retries taken, 10 left.
    assert _spend(second) == 10
    _record(second, 100)
    # Calls reach the fleet with their process's next retry decision.
    assert second.try_retry()
    # 200 fleet calls: 40 retries fleet-wide; the first (none of the new calls
    # its own) takes the 20 the second's calls added.  The second's own retry
    # reaches the fleet with its next sync: the fleet is over by that one, the
    # lag of a sync (the retries other processes took since their last sync).
    assert _spend(first) == 20
    assert not second.try_retry()
    assert storage.totals["svc"] == RetryTotals(calls=200, retries=41)


def test_a_process_with_no_calls_of_its_own_retries_on_the_fleets_calls() -> None:
    _, _, (busy, quiet) = _fleet(0)
    _record(busy, 100)
    assert busy.try_retry()  # pushes the busy process's calls
    assert quiet.try_retry()  # the fleet's 100 calls allow it


def test_between_syncs_decisions_use_the_last_totals_plus_local_counts() -> None:
    clock, storage, (first, second) = _fleet(5)
    _record(second, 50)
    assert second.try_retry()  # pushes 50 calls (its retry goes with its next sync)
    _record(first, 50)
    # first syncs now (fleet: 100 calls, 0 retries) and not again for 5 s.
    assert _spend(first) == 20
    assert storage.syncs == 2
    _record(first, 10)
    assert _spend(first) == 2  # 110 calls: its own new calls count at once
    assert storage.syncs == 2
    clock.advance(5)
    assert not first.try_retry()  # pushes 10 calls, 22 retries: 110 calls, 22 retries
    assert storage.syncs == 3
    assert storage.totals["svc"] == RetryTotals(calls=110, retries=22)
    _record(second, 10)
    # second pushes 10 calls and its 1 retry: 120 calls, 23 retries, 1 left.
    assert _spend(second) == 1
    assert storage.totals["svc"] == RetryTotals(calls=120, retries=23)


def test_with_the_storage_unanswering_the_budget_is_local_at_once() -> None:
    _, storage, (budget, other) = _fleet(0)
    _record(other, 500)
    other.try_retry()
    _record(budget, 10)
    assert budget.try_retry()  # the fleet's 510 calls
    assert budget.fleet_totals is not None
    storage.down = True
    granted = _spend(budget)
    assert budget.fleet_totals is None
    assert budget.retries == 2  # local: 10 calls, 20% -> 2 retries (one taken before)
    assert granted == 1
    storage.down = False
    assert budget.try_retry()  # the fleet answers again: its totals count again
    assert budget.fleet_totals is not None


class RaisingStorage(FleetStorage):
    def sync_retry_budget(
        self, name: str, *, calls: int, retries: int, window_seconds: int
    ) -> RetryTotals | None:
        raise RuntimeError("a storage that breaks its promise")


def test_a_storage_that_raises_leaves_the_budget_local() -> None:
    budget = RetryBudget(NO_FLOOR, FakeClock(), name="svc", storage=RaisingStorage(0))
    _record(budget, 10)
    assert _spend(budget) == 2


def test_a_refunded_retry_is_not_pushed_to_the_fleet() -> None:
    clock, storage = FakeClock(), FleetStorage(sync_interval=5)
    budget = RetryBudget(NO_FLOOR, clock, name="svc", storage=storage)
    _record(budget, 100)
    assert budget.try_retry()
    budget.refund()
    clock.advance(5)
    assert budget.try_retry()
    assert storage.totals["svc"] == RetryTotals(calls=100, retries=0)


def test_the_window_sent_is_the_budgets_window_in_whole_seconds() -> None:
    seen: list[int] = []

    class Recording(FleetStorage):
        def sync_retry_budget(
            self, name: str, *, calls: int, retries: int, window_seconds: int
        ) -> RetryTotals | None:
            seen.append(window_seconds)
            return None

    budget = RetryBudget(
        RetryBudgetConfig(window=2.5), FakeClock(), name="svc", storage=Recording(0)
    )
    budget.try_retry()
    assert seen == [3]


def test_a_session_with_shared_budget_uses_the_registrys_default_storage() -> None:
    from gennet_sync.circuit_breaker import set_default_storage

    storage = FleetStorage(sync_interval=0)
    set_default_storage(storage)  # type: ignore[arg-type]  # a budget-only stand-in
    session = ServiceSession(
        base_url="http://svc.invalid", retry_budget=RetryBudgetConfig(shared=True)
    )
    budget = get_retry_budget("svc.invalid", RetryBudgetConfig(shared=True))
    assert session._retry_budget is budget
    assert budget.shared and budget.name == "svc.invalid"
    plain = ServiceSession(base_url="http://other.invalid")
    assert plain._retry_budget is not None and not plain._retry_budget.shared

"""FleetSync on its own: the breaker's side of a shared storage (no sockets, no clock)."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import pytest

import gennet_sync
from gennet_sync.breaker_policy import BreakerConfig
from gennet_sync.fleet import FleetAction, FleetSync
from gennet_sync.storage import CircuitState, MemoryStorage, SharedState, WindowTotals
from tests.support.storages import RecordingStorage

NAME = "svc"
TIME_WINDOW = BreakerConfig(
    failure_threshold=3, failure_rate_threshold=0.5, window_type="time", window_size=10
)


class FleetStorage(RecordingStorage):
    """A recording storage with a fleet window that answers every call with one state."""

    checks_lock = False  # FleetSync on its own: no breaker, no lock

    def __init__(self, *, broken: bool = False) -> None:
        super().__init__(sync_interval=5.0)
        self.answer: SharedState | None = SharedState(CircuitState.CLOSED, failure_count=2)
        self.state = self.failure_answer = self.answer
        if broken:
            self.raise_on = {"load", "record_failure", "acquire_trial", "release_trial"}
            self.raise_on |= {"reset_failures", "set_open", "set_closed", "sync_window"}

    def sync_window(self, name: str, **counts: int | None) -> SharedState | None:
        self._note("sync_window", name, counts)
        return self.answer


def test_queued_actions_reach_the_storage_in_order_and_a_counted_failure_is_answered() -> None:
    storage = FleetStorage()
    fleet = FleetSync(NAME, storage, TIME_WINDOW)
    fleet.queue(FleetAction.RECORD_FAILURE, 30.0)
    fleet.queue(FleetAction.SET_OPEN, 60.0)
    fleet.queue(FleetAction.RESET_FAILURES)
    fleet.queue(FleetAction.SET_CLOSED)
    actions = fleet.take()
    assert fleet.take() == [], "taking empties the queue"
    replies: list[SharedState | None] = []
    fleet.run(actions, replies.append)
    assert storage.calls == [
        ("record_failure", NAME, 3, 30.0),
        ("set_open", NAME, 60.0),
        ("reset_failures", NAME),
        ("set_closed", NAME),
    ]
    assert replies == [storage.answer]


def test_a_storage_that_raises_counts_as_unavailable_and_is_logged_on_the_breaker_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = FleetSync(NAME, FleetStorage(broken=True), TIME_WINDOW)
    replies: list[SharedState | None] = []
    with caplog.at_level(logging.ERROR, logger="gennet_sync.circuit_breaker"):
        assert fleet.load() is None
        assert fleet.acquire_trial(None) is None
        fleet.run([(FleetAction.RECORD_FAILURE, 30.0)], replies.append)
        fleet.release_trial()
    assert replies == [None]
    logged = [r.getMessage() for r in caplog.records if r.name == "gennet_sync.circuit_breaker"]
    assert logged == [
        f"circuit breaker {NAME!r}: storage.{method} raised"
        for method in ("load", "acquire_trial", "record_failure", "release_trial")
    ]


def test_a_sync_is_claimed_once_per_interval() -> None:
    fleet = FleetSync(NAME, FleetStorage(), TIME_WINDOW)
    assert fleet.claim_sync(100.0)
    assert not fleet.sync_due(104.9)
    assert not fleet.claim_sync(104.9), "a second thread does not ask again"
    assert fleet.sync_due(105.0)
    assert fleet.claim_sync(105.0)


def test_outcomes_are_pushed_once_and_not_after_they_left_the_window() -> None:
    storage = FleetStorage()
    fleet = FleetSync(NAME, storage, TIME_WINDOW)
    fleet.record(True, False, 100.0)
    fleet.record(False, True, 101.0)
    unsynced = fleet.take_unsynced(105.0)
    assert unsynced == (WindowTotals(calls=2, failures=1, slow_calls=1), None)
    assert fleet.take_unsynced(105.0) == (WindowTotals(), None), "each outcome is pushed once"
    fleet.record(True, False, 100.0)
    assert fleet.take_unsynced(111.0) == (WindowTotals(), None), "quiet for longer than 10 s"
    fleet.sync_window(unsynced)
    assert storage.calls == [
        (
            "sync_window",
            NAME,
            {"calls": 2, "failures": 1, "slow_calls": 1, "window_seconds": 10, "closings": None},
        )
    ]


def test_the_fleet_totals_count_until_they_are_older_than_the_window() -> None:
    fleet = FleetSync(NAME, FleetStorage(), TIME_WINDOW)
    reply = SharedState(CircuitState.CLOSED, window=WindowTotals(10, 4, 1, closings=3))
    assert fleet.note_window(reply, 100.0, closed=True)
    fleet.record(True, False, 101.0)
    assert fleet.window_totals(105.0) == WindowTotals(11, 5, 1, closings=3)
    assert fleet.window_totals(110.0) is None, "a sync older than the window says nothing"
    assert fleet.take_unsynced(101.0) == (WindowTotals(1, 1, 0), 3), "the CLOSED period it joins"

    assert fleet.note_window(reply, 120.0, closed=True)
    fleet.restart_window()  # a transition: the fleet's window starts again too
    assert fleet.window_totals(120.0) is None
    assert fleet.take_unsynced(120.0) == (WindowTotals(), None)

    assert not fleet.note_window(reply, 130.0, closed=False), "only a CLOSED breaker judges"
    assert fleet.window_totals(130.0) is None
    assert fleet.note_window(reply, 140.0, closed=True)
    assert not fleet.note_window(None, 141.0, closed=True), "unavailable"
    assert fleet.window_totals(141.0) is None, "the local window decides"


@pytest.mark.parametrize(
    ("config", "storage"),
    [
        pytest.param(
            BreakerConfig(failure_rate_threshold=0.5, window_type="count"),
            FleetStorage(),
            id="count-window",
        ),
        pytest.param(BreakerConfig(), FleetStorage(), id="no-window"),
        pytest.param(TIME_WINDOW, MemoryStorage(), id="no-sync_window"),
    ],
)
def test_a_window_the_fleet_cannot_keep_stays_in_the_process(
    config: BreakerConfig, storage: Any
) -> None:
    fleet = FleetSync(NAME, storage, config)
    fleet.record(True, False, 100.0)
    assert fleet.take_unsynced(100.0) is None, "the breaker loads the state instead"
    assert fleet.window_totals(100.0) is None


def test_public_classes_live_in_public_modules() -> None:
    exported = {name: getattr(gennet_sync, name) for name in gennet_sync.__all__}
    # (gennet_sync.circuit_breaker is the decorator factory: it shadows the module.)
    module = importlib.import_module("gennet_sync.circuit_breaker")
    exported |= {name: getattr(module, name) for name in module.__all__}
    private = {
        name: obj.__module__
        for name, obj in exported.items()
        if isinstance(obj, type) and any(p.startswith("_") for p in obj.__module__.split("."))
    }
    assert private == {}
    assert gennet_sync.BreakerConfig.__module__ == "gennet_sync.breaker_policy"

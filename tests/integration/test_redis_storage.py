"""RedisStorage against a real redis-server: fleet-wide counts, OPEN periods,
trial leases, round trips, and what happens when Redis dies, hangs or forgets.

Several ``RedisStorage`` instances on one server stand for several processes'
views of the fleet; the multi-process tests at the end use real processes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis

from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError
from gennet_sync.redis_storage import RedisStorage
from gennet_sync.storage import (
    BreakerStorage,
    CircuitState,
    SharedState,
    WindowStorage,
    WindowTotals,
)
from gennet_sync.storage_url import storage_from_url
from tests.support.clock import FakeClock
from tests.support.redis_server import RedisServer
from tests.support.redis_workers import (
    closed_port,
    dead_service_worker,
    healthy_until_rejected_worker,
    rate_window_worker,
    recovering_service_worker,
    run_workers,
    shared_url,
)

pytestmark = pytest.mark.integration

LOGGER = "gennet_sync.redis_storage"


class CountingConnection(redis.Connection):
    """A redis-py connection that counts commands sent and connection attempts."""

    commands = 0
    connects = 0

    def connect(self) -> None:
        if self._sock is None:
            type(self).connects += 1
        super().connect()  # type: ignore[no-untyped-call]

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        type(self).commands += 1
        super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]


def counting_client(port: int) -> tuple[redis.Redis, type[CountingConnection]]:
    """A client with short timeouts and no retries whose connections count their I/O."""
    counter = type("Counter", (CountingConnection,), {"commands": 0, "connects": 0})
    pool = redis.ConnectionPool(
        connection_class=counter,
        host="127.0.0.1",
        port=port,
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    return redis.Redis(connection_pool=pool), counter


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll ``predicate`` (for Redis-side expiry, which no fake clock can move)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def make_storage(redis_server: RedisServer) -> Iterator[Callable[..., RedisStorage]]:
    """RedisStorage instances (one per simulated process) under a prefix of this test's own."""
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    made: list[RedisStorage] = []

    def make(**options: Any) -> RedisStorage:
        options.setdefault("prefix", prefix)
        options.setdefault("sync_interval", 0.1)
        storage = RedisStorage(redis_server.url, **options)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        storage.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def closed(count: int = 0) -> SharedState:
    return SharedState(CircuitState.CLOSED, failure_count=count)


def assert_open(state: SharedState | None, open_for: float) -> None:
    """OPEN, with at most ``open_for`` s left, and not a second less."""
    assert state is not None
    assert state.state is CircuitState.OPEN
    assert open_for - min(1.0, open_for) <= state.open_remaining <= open_for


def is_half_open(storage: RedisStorage, name: str) -> bool:
    return storage.load(name) == SharedState(CircuitState.HALF_OPEN)


# -- the protocol ---------------------------------------------------------------


def test_is_a_shared_breaker_storage(make_storage: Callable[..., RedisStorage]) -> None:
    storage: BreakerStorage = make_storage(sync_interval=0.25)
    assert isinstance(storage, BreakerStorage)
    assert isinstance(storage, WindowStorage)
    assert storage.shared is True
    assert storage.sync_interval == 0.25


def test_storage_from_url_reads_storage_options_from_the_query(
    redis_server: RedisServer,
) -> None:
    url = f"{redis_server.url}?prefix=orders&sync_interval=0.3&socket_timeout=0.1"
    chosen = storage_from_url(url)
    assert isinstance(chosen, RedisStorage)
    storage = chosen
    try:
        assert storage.prefix == "orders"
        assert storage.sync_interval == 0.3
        assert storage.client.get_connection_kwargs()["socket_timeout"] == 0.1
        assert storage.load("svc") == closed()
    finally:
        storage.close()


def test_repr_names_the_server_but_not_the_password(redis_server: RedisServer) -> None:
    storage = RedisStorage(f"redis://:s3cret@127.0.0.1:{redis_server.port}/0")
    try:
        text = repr(storage)
        assert f"127.0.0.1:{redis_server.port}" in text
        assert "s3cret" not in text
    finally:
        storage.close()


# -- counting and tripping across processes --------------------------------------


def test_an_unknown_breaker_is_closed(make_storage: Callable[..., RedisStorage]) -> None:
    assert make_storage().load("never-seen") == closed()


def test_failures_from_every_process_add_up_and_trip_at_the_threshold(
    make_storage: Callable[..., RedisStorage],
) -> None:
    a, b, c = make_storage(), make_storage(), make_storage()
    assert a.record_failure("svc", failure_threshold=4, open_for=30) == closed(1)
    assert b.record_failure("svc", failure_threshold=4, open_for=30) == closed(2)
    assert a.record_failure("svc", failure_threshold=4, open_for=30) == closed(3)
    assert c.load("svc") == closed(3)

    tripped = b.record_failure("svc", failure_threshold=4, open_for=30)
    assert tripped is not None
    assert tripped.state is CircuitState.OPEN
    assert 29.0 < tripped.open_remaining <= 30.0

    seen = c.load("svc")
    assert seen is not None
    assert seen.state is CircuitState.OPEN
    assert 29.0 < seen.open_remaining <= 30.0


def test_concurrent_failures_trip_exactly_once(make_storage: Callable[..., RedisStorage]) -> None:
    storages = [make_storage() for _ in range(4)]
    results: list[SharedState | None] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def fail(storage: RedisStorage) -> None:
        start.wait()
        for _ in range(5):
            state = storage.record_failure("svc", failure_threshold=10, open_for=30)
            with lock:
                results.append(state)

    threads = [threading.Thread(target=fail, args=(storages[i % 4],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    counts = sorted(r.failure_count for r in results if r and r.state is CircuitState.CLOSED)
    assert counts == list(range(1, 10)), "each failure before the trip counted exactly once"
    assert sum(1 for r in results if r and r.state is CircuitState.OPEN) == 40 - 9


def test_a_failure_reported_after_the_trip_is_not_counted(
    make_storage: Callable[..., RedisStorage],
) -> None:
    a, b = make_storage(), make_storage()
    a.set_open("svc", 30)
    late = b.record_failure("svc", failure_threshold=1, open_for=5)
    assert late is not None
    assert late.state is CircuitState.OPEN
    assert late.open_remaining > 5.0, "the running OPEN period is kept, not restarted"
    a.set_closed("svc")
    assert b.load("svc") == closed(0)


def test_a_success_resets_the_fleet_count(make_storage: Callable[..., RedisStorage]) -> None:
    a, b = make_storage(), make_storage()
    a.record_failure("svc", failure_threshold=3, open_for=30)
    a.record_failure("svc", failure_threshold=3, open_for=30)
    b.reset_failures("svc")
    assert a.load("svc") == closed(0)
    assert a.record_failure("svc", failure_threshold=3, open_for=30) == closed(1)


def test_open_period_ends_in_half_open_for_everyone(
    make_storage: Callable[..., RedisStorage],
) -> None:
    a, b = make_storage(), make_storage()
    b.set_open("svc", 30)
    assert_open(a.load("svc"), 30)
    b.set_open("svc", 0.05)  # opening again sets a new period, shorter here
    wait_until(lambda: a.load("svc") == SharedState(CircuitState.HALF_OPEN))
    # A failure of a call admitted on an old view does not count in HALF_OPEN:
    # the trial decides.
    assert a.record_failure("svc", failure_threshold=1, open_for=30) == SharedState(
        CircuitState.HALF_OPEN
    )
    b.set_closed("svc")
    assert a.load("svc") == closed()


def test_names_and_prefixes_do_not_share_state(
    make_storage: Callable[..., RedisStorage],
) -> None:
    a = make_storage()
    other_app = make_storage(prefix=f"{a.prefix}-other")
    a.set_open("payments", 30)
    assert a.load("search") == closed()
    assert other_app.load("payments") == closed()


# -- the fleet's time window -----------------------------------------------------


def window_of(
    storage: RedisStorage, *outcomes: int, seconds: int = 60, closings: int | None = None
) -> WindowTotals | None:
    """Send ``(calls, failures, slow_calls)`` (none by default); the fleet's totals."""
    calls, failures, slow_calls = outcomes or (0, 0, 0)
    state = storage.sync_window(
        "svc",
        calls=calls,
        failures=failures,
        slow_calls=slow_calls,
        window_seconds=seconds,
        closings=closings,
    )
    return None if state is None else state.window


def test_window_outcomes_from_every_process_add_up(
    make_storage: Callable[..., RedisStorage],
) -> None:
    a, b, c = make_storage(), make_storage(), make_storage()
    assert window_of(a, 3, 2, 1) == WindowTotals(3, 2, 1)
    assert window_of(b, 4, 0, 2) == WindowTotals(7, 2, 3)
    assert window_of(c) == WindowTotals(7, 2, 3)
    a.record_failure("svc", failure_threshold=5, open_for=30)
    synced = c.sync_window("svc", calls=0, failures=0, slow_calls=0, window_seconds=60)
    assert synced == SharedState(CircuitState.CLOSED, 1, 0.0, WindowTotals(7, 2, 3))


def test_window_outcomes_leave_after_the_window(
    make_storage: Callable[..., RedisStorage], raw: redis.Redis
) -> None:
    a, b = make_storage(), make_storage()
    assert window_of(a, 5, 5, 0, seconds=1) == WindowTotals(5, 5, 0)
    # Buckets are whole seconds of the server's clock: gone by the next second.
    wait_until(lambda: window_of(b, seconds=1) == WindowTotals())
    assert raw.hlen(f"{a.prefix}:{{svc}}:window") == 0, "the old buckets are dropped"


def test_the_window_slides_second_by_second(
    make_storage: Callable[..., RedisStorage], raw: redis.Redis
) -> None:
    a, b = make_storage(), make_storage()
    started = raw.time()[0]
    assert window_of(a, 1, 1, 0, seconds=3) == WindowTotals(1, 1, 0)
    wait_until(lambda: raw.time()[0] > started)
    assert window_of(b, 2, 0, 1, seconds=3) == WindowTotals(3, 1, 1)
    # a's second leaves the window first, b's stays a second longer.
    wait_until(lambda: window_of(a, seconds=3) == WindowTotals(2, 0, 1))
    fields = cast(list[bytes], raw.hkeys(f"{a.prefix}:{{svc}}:window"))
    buckets = {field.split(b":")[1] for field in fields if field[:2] in (b"c:", b"f:", b"s:")}
    assert len(buckets) == 1, "the bucket that left the window is dropped"


def test_window_outcomes_are_not_added_while_the_fleet_is_not_closed(
    make_storage: Callable[..., RedisStorage],
) -> None:
    a, b = make_storage(), make_storage()
    assert window_of(a, 10, 9, 0, closings=0) == WindowTotals(10, 9, 0, closings=0)
    b.set_open("svc", 30)
    # Calls admitted before the trip: their outcomes do not count while OPEN...
    opened = a.sync_window("svc", calls=4, failures=4, slow_calls=0, window_seconds=60, closings=0)
    assert opened is not None
    assert_open(opened, 30)
    assert opened.window == WindowTotals(), "opening starts the window again"
    b.set_closed("svc")
    # ... nor in the CLOSED period after it.
    assert window_of(a, 4, 4, 0, closings=0) == WindowTotals(closings=1)
    assert window_of(a, 1, 0, 0, closings=1) == WindowTotals(1, 0, 0, closings=1)
    assert window_of(b, 2, 1, 0) == WindowTotals(3, 1, 0, closings=1), "None: not known, added"
    b.set_closed("svc")
    assert window_of(a) == WindowTotals(closings=2), "closing starts it again too"


def test_two_processes_each_below_minimum_calls_trip_together(
    make_storage: Callable[..., RedisStorage],
) -> None:
    a_storage, b_storage = make_storage(sync_interval=0.0), make_storage(sync_interval=0.0)
    settings: dict[str, Any] = {
        "failure_threshold": None,
        "recovery_timeout": 30,
        "failure_rate_threshold": 0.5,
        "window_type": "time",
        "window_size": 60,
        "minimum_calls": 8,
    }
    a = CircuitBreaker(name="svc", storage=a_storage, **settings)
    b = CircuitBreaker(name="svc", storage=b_storage, **settings)
    for _ in range(4):
        a.acquire().failure()
    a.acquire().ignore()  # sends a's last failure
    for _ in range(3):
        b.acquire().failure()
    assert (a.state, b.state) == (CircuitState.CLOSED, CircuitState.CLOSED)
    assert b.metrics().window_calls == 7
    b.acquire().failure()  # b has 4 calls, a has 4: the fleet has minimum_calls, all failed
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitBreakerError) as refused:
        a.acquire()
    assert 25 < (refused.value.retry_after or 0) <= 30


def test_with_redis_down_the_local_window_still_trips(caplog: pytest.LogCaptureFixture) -> None:
    storage = RedisStorage(f"redis://127.0.0.1:{closed_port()}/0", sync_interval=0.0)
    try:
        breaker = CircuitBreaker(
            None,
            30,
            name="svc",
            storage=storage,
            failure_rate_threshold=0.5,
            window_type="time",
            window_size=60,
            minimum_calls=4,
        )
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for _ in range(3):
                breaker.acquire().failure()
            before = breaker.state
            breaker.acquire().failure()
        assert (before, breaker.state) == (CircuitState.CLOSED, CircuitState.OPEN)
        assert len([r for r in caplog.records if r.name == LOGGER]) == 1
    finally:
        storage.close()


# -- HALF_OPEN trial leases ------------------------------------------------------


def test_trials_are_limited_fleet_wide(make_storage: Callable[..., RedisStorage]) -> None:
    storages = [make_storage() for _ in range(3)]
    storages[0].set_open("svc", 0.01)
    wait_until(lambda: storages[0].load("svc") == SharedState(CircuitState.HALF_OPEN))

    granted = [s.acquire_trial("svc", max_calls=2, lease=30) for s in storages]
    assert granted == [True, True, False]
    storages[1].release_trial("svc")
    assert storages[2].acquire_trial("svc", max_calls=2, lease=30) is True
    assert storages[1].acquire_trial("svc", max_calls=2, lease=30) is False


def race_for_trials(
    storages: list[RedisStorage], name: str, *, threads: int, max_calls: int
) -> list[bool | None]:
    """``threads`` threads, spread over ``storages``, ask for a trial slot at once."""
    start = threading.Barrier(threads)
    granted: list[bool | None] = []
    lock = threading.Lock()

    def admit(storage: RedisStorage) -> None:
        start.wait()
        result = storage.acquire_trial(name, max_calls=max_calls, lease=30)
        with lock:
            granted.append(result)

    workers = [
        threading.Thread(target=admit, args=(storages[i % len(storages)],)) for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    return granted


def test_racing_threads_of_many_processes_get_exactly_max_calls_trials(
    make_storage: Callable[..., RedisStorage],
) -> None:
    storages = [make_storage() for _ in range(4)]
    for round_number in range(5):
        name = f"svc-{round_number}"
        storages[0].set_open(name, 0.01)
        wait_until(functools.partial(is_half_open, storages[0], name))
        granted = race_for_trials(storages, name, threads=16, max_calls=3)
        assert granted.count(True) == 3
        assert granted.count(False) == 13


def test_no_trial_while_open(make_storage: Callable[..., RedisStorage]) -> None:
    a = make_storage()
    a.set_open("svc", 30)
    assert a.acquire_trial("svc", max_calls=5, lease=30) is False


def test_a_closed_fleet_admits_without_taking_a_slot(
    make_storage: Callable[..., RedisStorage],
) -> None:
    stale, other = make_storage(), make_storage()
    # ``stale`` still believes HALF_OPEN, but another process already closed it.
    assert stale.acquire_trial("svc", max_calls=1, lease=30) is True
    other.set_open("svc", 0.01)
    wait_until(lambda: other.load("svc") == SharedState(CircuitState.HALF_OPEN))
    assert other.acquire_trial("svc", max_calls=1, lease=30) is True, "no slot was held"
    stale.release_trial("svc")
    assert stale.acquire_trial("svc", max_calls=1, lease=30) is False, "the slot stays leased"


def test_a_trial_admitted_on_a_closed_fleet_does_not_restart_its_window(
    make_storage: Callable[..., RedisStorage], raw: redis.Redis
) -> None:
    stale, other = make_storage(), make_storage()
    other.set_closed("svc")  # the fleet's first CLOSED period ends; the second begins
    closings = f"{stale.prefix}:{{svc}}:closings"
    assert raw.get(closings) == b"1"
    other.sync_window("svc", calls=4, failures=3, slow_calls=0, window_seconds=60)
    assert other.record_failure("svc", failure_threshold=5, open_for=30) == closed(1)
    # ``stale`` still believes HALF_OPEN: its trial needs no slot, and its success
    # is a success in CLOSED: the count goes, the fleet's window and period stay.
    assert stale.acquire_trial("svc", max_calls=1, lease=30) is True
    stale.set_closed("svc")
    stale.release_trial("svc")
    assert raw.get(closings) == b"1"
    shared = other.sync_window("svc", calls=0, failures=0, slow_calls=0, window_seconds=60)
    assert shared == SharedState(CircuitState.CLOSED, window=WindowTotals(4, 3, 0, 1))
    # A slot-holding trial (or reset()) still closes the fleet for real.
    stale.set_closed("svc")
    assert raw.get(closings) == b"2"


def test_the_lease_of_a_process_that_died_runs_out(
    make_storage: Callable[..., RedisStorage],
) -> None:
    dead, alive = make_storage(), make_storage()
    alive.set_open("svc", 0.01)
    wait_until(lambda: alive.load("svc") == SharedState(CircuitState.HALF_OPEN))
    assert dead.acquire_trial("svc", max_calls=1, lease=0.5) is True
    assert alive.acquire_trial("svc", max_calls=1, lease=30) is False
    wait_until(lambda: alive.acquire_trial("svc", max_calls=1, lease=30) is True)


def test_a_forked_child_has_its_own_connection_and_lock_and_none_of_the_parents_leases(
    make_storage: Callable[..., RedisStorage], raw: redis.Redis
) -> None:
    storage = make_storage()
    storage.set_open("svc", 0.01)
    wait_until(lambda: storage.load("svc") == SharedState(CircuitState.HALF_OPEN))
    assert storage.acquire_trial("svc", max_calls=1, lease=30) is True
    holding, release = threading.Event(), threading.Event()

    def hold_lock() -> None:  # a parent thread in the middle of a storage call
        with storage._lock:
            holding.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert holding.wait(timeout=5)
        with warnings.catch_warnings():  # forking a multi-threaded process on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            status = 1
            try:
                signal.alarm(10)  # a deadlock ends the child instead of hanging the test
                storage.release_trial("svc")  # not the child's lease: nothing is sent
                state = storage.load("svc")  # a connection of its own works
                status = 0 if state == SharedState(CircuitState.HALF_OPEN) else 2
            finally:
                os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join(timeout=5)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert raw.zcard(f"{storage.prefix}:{{svc}}:trials") == 1  # the parent's lease stands
    storage.release_trial("svc")
    assert raw.zcard(f"{storage.prefix}:{{svc}}:trials") == 0


def test_an_open_key_set_by_hand_without_a_ttl_keeps_breakers_open_until_deleted(
    make_storage: Callable[..., RedisStorage], raw: redis.Redis
) -> None:
    storage = make_storage()
    raw.set(f"{storage.prefix}:{{svc}}:open", "1")  # an operator isolating the service
    raw.set(f"{storage.prefix}:{{svc}}:tripped", "1")
    assert storage.load("svc") == SharedState(CircuitState.OPEN, open_remaining=math.inf)
    breaker = CircuitBreaker(name="svc", storage=storage)
    for _ in range(3):
        with pytest.raises(CircuitBreakerError) as refused:
            breaker.call(lambda: "ok")
        assert refused.value.state is CircuitState.OPEN
        assert refused.value.retry_after is None  # until the operator says otherwise
    raw.delete(f"{storage.prefix}:{{svc}}:open", f"{storage.prefix}:{{svc}}:tripped")

    def admitted() -> bool:
        try:
            return breaker.call(lambda: "ok") == "ok"
        except CircuitBreakerError:
            return False  # not synced since the deletion yet

    wait_until(admitted)


def test_reopening_and_closing_end_the_leases(make_storage: Callable[..., RedisStorage]) -> None:
    a, b = make_storage(), make_storage()
    a.set_open("svc", 0.01)
    wait_until(lambda: a.load("svc") == SharedState(CircuitState.HALF_OPEN))
    assert a.acquire_trial("svc", max_calls=1, lease=30) is True
    a.set_open("svc", 0.01)  # the trial failed
    wait_until(lambda: b.load("svc") == SharedState(CircuitState.HALF_OPEN))
    assert b.acquire_trial("svc", max_calls=1, lease=30) is True, "a new period, a new slot"
    b.set_closed("svc")
    a.release_trial("svc")  # late, harmless
    assert b.load("svc") == closed()


# -- keys, TTLs and round trips --------------------------------------------------


def test_every_key_expires(make_storage: Callable[..., RedisStorage], raw: redis.Redis) -> None:
    a = make_storage(key_ttl=600)
    a.record_failure("counting", failure_threshold=5, open_for=30)
    a.record_failure("tripped", failure_threshold=1, open_for=30)
    a.set_open("trial", 0.01)
    wait_until(lambda: a.load("trial") == SharedState(CircuitState.HALF_OPEN))
    a.acquire_trial("trial", max_calls=1, lease=20)
    a.sync_window("rates", calls=2, failures=1, slow_calls=0, window_seconds=30)
    a.set_closed("closed")

    keys = sorted(k.decode() for k in raw.scan_iter(match=f"{a.prefix}:*"))
    assert keys == [
        f"{a.prefix}:{{closed}}:closings",
        f"{a.prefix}:{{counting}}:failures",
        f"{a.prefix}:{{rates}}:window",
        f"{a.prefix}:{{trial}}:trials",
        f"{a.prefix}:{{trial}}:tripped",
        f"{a.prefix}:{{tripped}}:open",
        f"{a.prefix}:{{tripped}}:tripped",
    ]
    for key in keys:
        assert 0 < raw.pttl(key) <= (600 + 30) * 1000, key
    assert raw.pttl(f"{a.prefix}:{{rates}}:window") <= (30 + 60) * 1000


def test_each_call_is_one_round_trip(redis_server: RedisServer) -> None:
    client, counter = counting_client(redis_server.port)
    storage = RedisStorage(client, prefix=f"rt:{uuid.uuid4().hex[:8]}")
    try:
        storage.load("svc")  # connects (and the handshake) once
        calls: list[Callable[[], object]] = [
            lambda: storage.load("svc"),
            lambda: storage.sync_window(
                "svc", calls=5, failures=2, slow_calls=1, window_seconds=60
            ),
            lambda: storage.record_failure("svc", failure_threshold=2, open_for=0.01),
            lambda: storage.reset_failures("svc"),
            lambda: storage.record_failure("svc", failure_threshold=1, open_for=0.01),  # trips
            lambda: storage.set_open("svc", 0.01),
            lambda: storage.set_closed("svc"),
            lambda: storage.acquire_trial("svc", max_calls=1, lease=5),
            lambda: storage.release_trial("svc"),  # the CLOSED admission took no slot: free
        ]
        # A script's first use on a server also sends it (NOSCRIPT, SCRIPT LOAD):
        # once per server, whichever test comes first.  Use each one beforehand.
        storage.sync_window("warm-up", calls=0, failures=0, slow_calls=0, window_seconds=1)
        storage.record_failure("warm-up", failure_threshold=9, open_for=1)
        storage.set_open("warm-up", 0.01)
        storage.acquire_trial("warm-up", max_calls=1, lease=1)
        sent = []
        for call in calls:
            before = counter.commands
            call()
            sent.append(counter.commands - before)
        assert sent == [1, 1, 1, 1, 1, 1, 1, 1, 0]
        assert counter.connects == 1
    finally:
        client.close()


def test_flushall_and_lost_scripts_do_not_wedge_it(
    make_storage: Callable[..., RedisStorage], raw: redis.Redis
) -> None:
    a = make_storage()
    a.record_failure("svc", failure_threshold=1, open_for=30)
    raw.flushall()
    assert a.load("svc") == closed(), "missing keys read as CLOSED"
    raw.script_flush()
    assert a.record_failure("svc", failure_threshold=2, open_for=30) == closed(1)
    assert a.available


# -- a failed write at a trial's outcome -------------------------------------------


def half_open_with_a_trial(worker: RedisStorage, other: RedisStorage, lease: float = 60) -> None:
    """The fleet is HALF_OPEN and ``worker`` holds its only trial slot."""
    other.set_open("svc", 0.01)
    wait_until(lambda: is_half_open(other, "svc"))
    assert worker.acquire_trial("svc", max_calls=1, lease=lease) is True
    assert other.acquire_trial("svc", max_calls=1, lease=lease) is False


@contextlib.contextmanager
def refused_writes(server: RedisServer) -> Iterator[redis.Redis]:
    """Redis out of memory: ``maxmemory`` far below its use, ``noeviction``."""
    admin = redis.Redis.from_url(server.url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    try:
        yield admin
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


def test_a_trial_whose_outcome_write_is_refused_still_frees_its_slot(
    disposable_redis_server: RedisServer,
) -> None:
    worker = RedisStorage(disposable_redis_server.url)
    other = RedisStorage(disposable_redis_server.url)
    try:
        half_open_with_a_trial(worker, other)
        with refused_writes(disposable_redis_server):
            worker.set_open("svc", 30)  # the trial failed; Redis refuses the write
            assert not worker.available
            # Sent despite the outage backoff: a delete that a full Redis still takes.
            worker.release_trial("svc")
        assert other.acquire_trial("svc", max_calls=1, lease=60) is True
    finally:
        worker.close()
        other.close()


def acl_client(server: RedisServer, user: str) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=server.port,
        username=user,
        password="secret",
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )


def test_a_release_that_fails_is_sent_again_with_the_next_answered_command(
    disposable_redis_server: RedisServer,
) -> None:
    admin = redis.Redis.from_url(disposable_redis_server.url)
    # A user that may not ZREM: exactly the release fails, everything else works.
    admin.acl_setuser(
        "worker", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all", "-zrem"]
    )
    client = acl_client(disposable_redis_server, "worker")
    clock = FakeClock()
    worker = RedisStorage(client, retry_backoff=1, clock=clock)
    other = RedisStorage(disposable_redis_server.url)
    try:
        half_open_with_a_trial(worker, other)
        worker.release_trial("svc")
        assert not worker.available
        assert other.acquire_trial("svc", max_calls=1, lease=60) is False, "still leased"
        admin.acl_setuser("worker", commands=["+zrem"])
        assert worker.load("svc") is None, "backing off: nothing sent"
        assert other.acquire_trial("svc", max_calls=1, lease=60) is False
        clock.advance(1.1)
        # The next command Redis answers, whatever it is, takes the release along.
        assert worker.load("svc") == SharedState(CircuitState.HALF_OPEN)
        assert worker.available
        assert other.acquire_trial("svc", max_calls=1, lease=60) is True
    finally:
        worker.close()
        other.close()
        client.close()
        admin.close()


def test_an_acquire_whose_reply_was_lost_gives_its_slot_back_once_redis_answers(
    make_storage: Callable[..., RedisStorage],
) -> None:
    clock = FakeClock()
    worker, other = make_storage(clock=clock), make_storage()
    other.set_open("svc", 0.01)
    wait_until(lambda: is_half_open(other, "svc"))
    script = worker._acquire_trial

    def runs_then_times_out(**kwargs: Any) -> Any:
        script(**kwargs)  # the slot is taken in Redis...
        raise redis.TimeoutError("Timeout reading from socket")  # ...the reply is lost

    worker._acquire_trial = runs_then_times_out  # type: ignore[assignment]
    assert worker.acquire_trial("svc", max_calls=1, lease=60) is None
    assert other.acquire_trial("svc", max_calls=1, lease=60) is False
    clock.advance(1.1)  # past the outage backoff
    assert worker.load("svc") is not None  # the next answered command gives it back
    assert other.acquire_trial("svc", max_calls=1, lease=60) is True


def test_a_failed_release_whose_lease_has_ended_is_not_sent_again(
    disposable_redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    admin = redis.Redis.from_url(disposable_redis_server.url)
    admin.acl_setuser(
        "worker", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all", "-zrem"]
    )
    client = acl_client(disposable_redis_server, "worker")
    worker = RedisStorage(client, retry_backoff=1, clock=clock)
    other = RedisStorage(disposable_redis_server.url)
    monitor: list[str] = []
    try:
        half_open_with_a_trial(worker, other, lease=5)
        worker.release_trial("svc")
        admin.acl_setuser("worker", commands=["+zrem"])
        clock.advance(6)  # the lease has ended in Redis too by now
        with admin.monitor() as feed:  # type: ignore[no-untyped-call]
            assert worker.load("svc") is not None
            assert worker.load("svc") is not None
            other.load("end-of-test")  # everything Redis ran before it was the worker's
            while not monitor or "end-of-test" not in monitor[-1]:
                monitor.append(str(feed.next_command()["command"]))
        assert sum(command.startswith("EVALSHA") for command in monitor) == 3
        assert not any(command.upper().startswith("ZREM") for command in monitor), monitor
    finally:
        worker.close()
        other.close()
        client.close()
        admin.close()


# -- Redis down, slow, back ------------------------------------------------------


def every_method(storage: RedisStorage) -> list[object]:
    """Call every method; the replies of those that have one."""
    storage.reset_failures("svc")
    storage.set_open("svc", 30)
    storage.set_closed("svc")
    storage.release_trial("svc")
    return [
        storage.load("svc"),
        storage.record_failure("svc", failure_threshold=1, open_for=30),
        storage.acquire_trial("svc", max_calls=1, lease=30),
        storage.sync_window("svc", calls=1, failures=1, slow_calls=0, window_seconds=60),
    ]


def test_redis_down_returns_none_quickly_and_warns_once(
    disposable_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    storage = RedisStorage(disposable_redis_server.url, clock=clock)
    try:
        assert storage.load("svc") == closed()
        disposable_redis_server.kill()
        caplog.set_level(logging.INFO, logger=LOGGER)
        started = time.monotonic()
        for _ in range(20):
            assert every_method(storage) == [None] * 4
            clock.advance(0.1)
        assert time.monotonic() - started < 1.0
        warnings = [r for r in caplog.records if r.name == LOGGER]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING
        assert "unavailable" in warnings[0].getMessage()
        assert not storage.available
    finally:
        storage.close()


def test_backs_off_without_network_io_then_resumes_sharing(
    disposable_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    client, counter = counting_client(disposable_redis_server.port)
    storage = RedisStorage(client, retry_backoff=1.0, max_retry_backoff=3.0, clock=clock)
    other = RedisStorage(disposable_redis_server.url)
    caplog.set_level(logging.INFO, logger=LOGGER)
    try:
        assert storage.load("svc") == closed()
        disposable_redis_server.kill()
        assert storage.load("svc") is None  # the failure that starts the outage
        attempts = counter.connects

        for _ in range(5):
            assert storage.load("svc") is None
        clock.advance(0.9)
        assert storage.record_failure("svc", failure_threshold=1, open_for=30) is None
        assert counter.connects == attempts, "no network I/O while backing off"

        clock.advance(0.2)  # 1.1 s: the probe is due, and fails
        assert storage.load("svc") is None
        assert counter.connects == attempts + 1
        clock.advance(1.5)  # the pause doubled to 2 s
        assert storage.load("svc") is None
        assert counter.connects == attempts + 1
        clock.advance(0.6)
        assert storage.load("svc") is None
        assert counter.connects == attempts + 2
        clock.advance(3.0)  # capped at max_retry_backoff
        assert storage.load("svc") is None
        assert counter.connects == attempts + 3

        disposable_redis_server.start()  # empty, on the same port
        assert storage.load("svc") is None, "still backing off"
        clock.advance(3.0)
        assert storage.record_failure("svc", failure_threshold=2, open_for=30) == closed(1)
        assert storage.available
        assert other.record_failure("svc", failure_threshold=2, open_for=30) is not None
        assert_open(storage.load("svc"), 30)  # sharing resumed

        levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
        assert [level for level, _ in levels] == [logging.WARNING, logging.INFO]
        assert "available again" in levels[1][1]
    finally:
        storage.close()
        other.close()
        client.close()


def test_a_hung_redis_costs_one_socket_timeout_not_a_hang(
    disposable_redis_server: RedisServer,
) -> None:
    storage = RedisStorage(disposable_redis_server.url, socket_timeout=0.1, connect_timeout=0.1)
    try:
        assert storage.load("svc") == closed()
        disposable_redis_server.pause()
        started = time.monotonic()
        assert storage.record_failure("svc", failure_threshold=1, open_for=30) is None
        assert storage.load("svc") is None  # backing off: at once
        assert time.monotonic() - started < 1.0
    finally:
        disposable_redis_server.resume()
        storage.close()


def test_a_restarted_redis_is_used_at_once_with_its_scripts_loaded_again(
    disposable_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    storage = RedisStorage(disposable_redis_server.url)
    caplog.set_level(logging.INFO, logger=LOGGER)
    try:
        assert storage.record_failure("svc", failure_threshold=3, open_for=30) == closed(1)
        disposable_redis_server.restart()  # between two calls: empty, no scripts
        # The pool replaces the dead connection and the script is sent again
        # (NOSCRIPT) within this one call; the count starts again from nothing.
        assert storage.record_failure("svc", failure_threshold=3, open_for=30) == closed(1)
        assert storage.record_failure("svc", failure_threshold=3, open_for=30) == closed(2)
        assert storage.available
        assert [r for r in caplog.records if r.name == LOGGER] == []
    finally:
        storage.close()


# -- real processes sharing one breaker (workers: tests/support/redis_workers.py) ---


def test_a_dead_service_gets_threshold_plus_n_calls_from_the_fleet_not_threshold_times_n(
    redis_server: RedisServer,
) -> None:
    processes, threshold, calls, port = 3, 3, 12, closed_port()
    name = f"dead-{uuid.uuid4().hex[:8]}"

    local = run_workers(dead_service_worker, processes, "memory://", name, threshold, port, calls)
    assert [unexpected for _, _, unexpected in local] == [[]] * processes
    assert sum(sent for sent, _, _ in local) == threshold * processes

    url = shared_url(redis_server)
    shared = run_workers(dead_service_worker, processes, url, name, threshold, port, calls)
    assert [unexpected for _, _, unexpected in shared] == [[]] * processes
    sent = sum(sent for sent, _, _ in shared)
    assert threshold <= sent <= threshold + processes
    assert all(sent + rejected == calls for sent, rejected, _ in shared)


def test_processes_each_below_minimum_calls_trip_the_fleet_on_its_failure_rate(
    redis_server: RedisServer,
) -> None:
    processes, calls = 3, 4  # each process alone: 4 calls < minimum_calls=8; the fleet: 12
    name = f"rate-{uuid.uuid4().hex[:8]}"

    local = run_workers(rate_window_worker, processes, "memory://", name, calls, 0.6)
    assert [(o["sent"], o["rejected"], o["unexpected"]) for o in local] == [
        (calls, False, [])
    ] * processes

    shared = run_workers(rate_window_worker, processes, shared_url(redis_server), name, calls, 5.0)
    assert [o["unexpected"] for o in shared] == [[]] * processes
    assert all(o["rejected"] for o in shared), "the trip reached every process"
    assert 8 <= sum(o["sent"] for o in shared) <= processes * calls


def test_half_open_admits_the_configured_trials_across_processes(
    redis_server: RedisServer,
) -> None:
    name = f"recovering-{uuid.uuid4().hex[:8]}"
    tripper = RedisStorage(redis_server.url)
    try:
        # OPEN before any worker runs; once all of them are calling (and being
        # rejected), the open period is cut short to 0.3 s.
        tripper.set_open(name, 60)
        logs = run_workers(
            recovering_service_worker,
            4,
            shared_url(redis_server),
            name,
            3.0,
            during=lambda: tripper.set_open(name, 0.3),
        )
    finally:
        tripper.close()
    calls = sorted(call for log in logs for call in log)
    assert calls, "the service recovered and was called"
    first_trial_done = min(end for _, end in calls)
    trials = [call for call in calls if call[0] < first_trial_done]
    assert len(trials) == 2, "half_open_max_calls=2 trials before the first one succeeded"


def test_a_trip_reaches_every_process_within_a_second(redis_server: RedisServer) -> None:
    name = f"trip-{uuid.uuid4().hex[:8]}"
    tripper = RedisStorage(redis_server.url)
    tripped_at: list[float] = []

    def trip_after_a_while() -> None:
        time.sleep(0.3)
        tripped_at.append(time.monotonic())
        tripper.set_open(name, 60)

    try:
        url = shared_url(redis_server)
        outcomes = run_workers(
            healthy_until_rejected_worker, 3, url, name, 5.0, during=trip_after_a_while
        )
    finally:
        tripper.close()
    for outcome in outcomes:
        assert outcome["unexpected"] == []
        assert outcome["rejected_at"] is not None
        assert 0 <= outcome["rejected_at"] - tripped_at[0] < 1.0


def test_killing_redis_mid_run_loses_no_call_and_restarting_it_resumes_sharing(
    disposable_redis_server: RedisServer,
) -> None:
    name = f"outage-{uuid.uuid4().hex[:8]}"
    tripped_at: list[float] = []

    def outage_then_trip() -> None:
        time.sleep(0.3)
        disposable_redis_server.kill()
        time.sleep(0.5)
        disposable_redis_server.start()
        time.sleep(0.5)  # the workers' backoff (at most 0.2 s) runs out
        tripper = RedisStorage(disposable_redis_server.url)
        try:
            tripped_at.append(time.monotonic())
            tripper.set_open(name, 60)
        finally:
            tripper.close()

    url = f"{disposable_redis_server.url}?sync_interval=0.1&retry_backoff=0.1&max_retry_backoff=0.2"
    outcomes = run_workers(
        healthy_until_rejected_worker, 3, url, name, 8.0, during=outage_then_trip
    )
    for outcome in outcomes:
        assert outcome["unexpected"] == []
        # Every call made before the trip reached the service, Redis or not.
        assert outcome["returned"] + outcome["failed"] == outcome["attempts"] - 1
        assert outcome["failed"] > 0
        assert outcome["rejected_at"] is not None, "sharing resumed after the restart"
        assert 0 <= outcome["rejected_at"] - tripped_at[0] < 1.0

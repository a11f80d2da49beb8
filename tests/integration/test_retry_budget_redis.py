"""A retry budget shared fleet-wide through a real redis-server: processes
calling an always-failing real service, and Redis killed under them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from gennet_sync import ServiceSession
from gennet_sync.circuit_breaker import set_default_storage
from gennet_sync.http_client import make_retry
from gennet_sync.redis_storage import RedisStorage
from gennet_sync.retry_budget import RetryBudget, RetryBudgetConfig
from gennet_sync.storage import RetryBudgetStorage, RetryTotals
from tests.support.redis_server import RedisServer
from tests.support.redis_workers import run_workers
from tests.support.retry_budget_workers import RETRIES, FailingService, failing_service_worker
from tests.support.servers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_breaker_registry")]


@pytest.fixture
def failing() -> Iterator[tuple[FailingService, str]]:
    service = FailingService()
    with serve_app(service.app) as url:
        yield service, url


@pytest.fixture
def make_storage(redis_server: RedisServer) -> Iterator[Callable[..., RedisStorage]]:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    made: list[RedisStorage] = []

    def make(**options: Any) -> RedisStorage:
        storage = RedisStorage(redis_server.url, prefix=prefix, **options)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        storage.close()


def test_redis_storage_counts_every_processs_calls_and_retries(
    make_storage: Callable[..., RedisStorage], redis_server: RedisServer
) -> None:
    first, second = make_storage(), make_storage()
    assert isinstance(first, RetryBudgetStorage)
    assert first.sync_retry_budget("svc", calls=10, retries=1, window_seconds=10) == RetryTotals(
        10, 1
    )
    assert second.sync_retry_budget("svc", calls=5, retries=2, window_seconds=10) == RetryTotals(
        15, 3
    )
    assert first.sync_retry_budget("svc", calls=0, retries=0, window_seconds=10) == RetryTotals(
        15, 3
    )
    # Another service, and the breaker of the same name, are apart.
    assert first.sync_retry_budget("other", calls=0, retries=0, window_seconds=10) == RetryTotals()
    assert first.load("svc") is not None and first.load("svc").failure_count == 0  # type: ignore[union-attr]
    # One hash, in the service's Redis Cluster slot, with a TTL.
    client = redis.Redis.from_url(redis_server.url)
    try:
        (key,) = client.keys(f"{first.prefix}:*")
        assert key == f"{first.prefix}:{{svc}}:retry_budget".encode()
        assert 0 < client.pttl(key) <= 70_000
    finally:
        client.close()


def test_counts_leave_the_fleet_window_as_redis_server_time_passes(
    make_storage: Callable[..., RedisStorage],
) -> None:
    storage = make_storage()
    storage.sync_retry_budget("svc", calls=10, retries=2, window_seconds=1)
    time.sleep(2.1)  # whole seconds of the server's clock: the bucket is out
    assert storage.sync_retry_budget("svc", calls=1, retries=0, window_seconds=1) == RetryTotals(
        1, 0
    )


def test_a_sync_after_an_idle_second_sweeps_nothing_and_still_answers(
    make_storage: Callable[..., RedisStorage],
) -> None:
    storage = make_storage()
    storage.sync_retry_budget("svc", calls=3, retries=0, window_seconds=2)
    time.sleep(1.1)  # the window's oldest second moves on, over a second with nothing in it
    totals = storage.sync_retry_budget("svc", calls=1, retries=1, window_seconds=2)
    assert storage.available
    assert totals is not None and totals.retries == 1


@pytest.mark.parametrize("shared", [True, False], ids=["fleet", "per-process"])
def test_two_processes_retries_stay_within_the_fleet_budget(
    failing: tuple[FailingService, str], redis_server: RedisServer, shared: bool
) -> None:
    service, url = failing
    calls = 60
    name = f"budget-{uuid.uuid4().hex[:8]}"
    storage_url = f"{redis_server.url}?sync_interval=0&socket_timeout=2&socket_connect_timeout=2"
    results = run_workers(failing_service_worker, 2, storage_url, name, url, calls, shared)
    assert [r["answered_503"] for r in results] == [calls, calls]
    assert [r["shared"] for r in results] == [int(shared), int(shared)]
    # Every sync answered (a failed one would make the decisions local).
    assert [r["synced"] for r in results] == [int(shared), int(shared)]
    retries = sum(r["retries"] for r in results)
    assert service.received == 2 * calls + retries
    if shared:
        # 20 retries for the fleet; a retry one process took after its sync
        # reaches the other with its next sync: at most one over per process.
        assert 20 <= retries <= 22
    else:
        assert retries == 40  # 20 for each process: the load doubles with the fleet
    assert retries < 2 * calls * RETRIES


def test_with_redis_killed_mid_run_the_budget_is_local_with_no_error_and_no_hang(
    failing: tuple[FailingService, str], disposable_redis_server: RedisServer
) -> None:
    service, url = failing
    storage = RedisStorage(disposable_redis_server.url, sync_interval=0, prefix="kill")
    set_default_storage(storage)
    config = RetryBudgetConfig(ratio=0.1, min_per_second=0, window=60, shared=True)
    other = RetryBudget(
        config,
        name="svc",
        storage=RedisStorage(disposable_redis_server.url, sync_interval=0, prefix="kill"),
    )
    for _ in range(200):
        other.record_call()
    assert other.try_retry()  # another process's 200 calls are in the fleet's window
    session = ServiceSession(
        base_url=url,
        service_name="svc",
        use_circuit_breaker=False,
        retries=make_retry(RETRIES, backoff_factor=0, backoff_jitter=0),
        retry_budget=config,
    )
    budget = session._retry_budget
    assert budget is not None and budget.shared
    for _ in range(10):
        assert session.get("/x", timeout=10).status_code == 503
    # 10 own calls would allow 1 retry locally; the fleet's 210 allow 21 (the
    # other's retry has not reached Redis: it goes with that budget's next sync).
    assert budget.retries == 21
    assert budget.fleet_totals is not None

    disposable_redis_server.kill()
    started = time.monotonic()
    for _ in range(20):
        assert session.get("/x", timeout=10).status_code == 503
    assert time.monotonic() - started < 20  # does not hang on the dead Redis
    assert budget.fleet_totals is None
    # Local now: 30 calls allow 3 retries, all taken before the kill.
    assert budget.retries == 21
    assert service.received == 30 + 21
    storage.close()


def test_with_redis_hung_a_failing_call_waits_one_socket_timeout_once_then_none(
    failing: tuple[FailingService, str], disposable_redis_server: RedisServer
) -> None:
    service, url = failing
    storage = RedisStorage(
        disposable_redis_server.url, sync_interval=0, socket_timeout=0.2, retry_backoff=30
    )
    set_default_storage(storage)
    session = ServiceSession(
        base_url=url,
        service_name="hung",
        use_circuit_breaker=False,
        retries=make_retry(RETRIES, backoff_factor=0, backoff_jitter=0),
        retry_budget=RetryBudgetConfig(ratio=0.5, min_per_second=0, shared=True),
    )
    assert session.get("/x", timeout=10).status_code == 503  # connected, synced
    disposable_redis_server.pause()  # accepts connections, never answers
    try:
        started = time.monotonic()
        for _ in range(20):
            assert session.get("/x", timeout=10).status_code == 503
        # One command waits for the socket timeout; the backoff skips the rest.
        assert time.monotonic() - started < 10
        assert not storage.available
        budget = session._retry_budget
        assert budget is not None and budget.fleet_totals is None
        # Local: 21 calls, 50% -> 10 retries in all.
        assert budget.retries == 10
        assert service.received == 21 + 10
    finally:
        disposable_redis_server.resume()
        storage.close()

"""RedisStorage through Redis Sentinel: URLs, client settings, a fleet, a failover.

The servers are real: a primary, its replica and a sentinel
(``redis-server --sentinel``) on free 127.0.0.1 ports, started by
:class:`examples.launcher.RedisSentinelProcesses`.  A missing binary fails the
tests (``./dev test`` installs it), never skips them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from examples.launcher import RedisSentinelProcesses, ServiceProcess
from gennet_sync.redis_storage import RedisClientWarning, RedisStorage
from gennet_sync.storage import CircuitState
from gennet_sync.storage_url import storage_from_url
from tests.support.fault_gateway import Downstream
from tests.support.redis_fleet import (
    SHARING_BOUND,
    SLOWEST_CALL_BOUND,
    assert_a_dead_service_gets_threshold_plus_processes_calls,
    failover_run,
    open_fleet_wide,
    started,
    with_worker_options,
)
from tests.support.redis_workers import closed_port
from tests.support.servers import serve_app

pytestmark = pytest.mark.integration


def start_sentinel_setup(log_dir: Path) -> RedisSentinelProcesses:
    return started(RedisSentinelProcesses, log_dir)


@pytest.fixture(scope="module")
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelProcesses]:
    """A primary, a replica and a sentinel shared by the tests that leave them running."""
    setup = start_sentinel_setup(tmp_path_factory.mktemp("sentinel"))
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture
def disposable_sentinel_setup(tmp_path: Path) -> Iterator[RedisSentinelProcesses]:
    """A Sentinel setup of this test's own, free to fail over."""
    setup = start_sentinel_setup(tmp_path)
    try:
        yield setup
    finally:
        setup.stop()


def sentinel_client_of(storage: RedisStorage) -> tuple[redis.Redis, SentinelConnectionPool]:
    client = storage.client
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    return client, pool


# -- URLs and client settings (no server needed: nothing connects before a command) --


def test_a_sentinel_url_names_the_sentinels_service_db_and_credentials() -> None:
    storage = storage_from_url(
        "redis+sentinel://:s3cret@10.0.0.1:5000,10.0.0.2/orders/2"
        "?prefix=shop&sync_interval=0.25&socket_timeout=0.3&sentinel_password=watch"
    )
    assert isinstance(storage, RedisStorage)
    client, pool = sentinel_client_of(storage)
    assert pool.service_name == "orders"
    kwargs = client.get_connection_kwargs()
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (2, "s3cret", 0.3)
    assert kwargs["socket_connect_timeout"] == 0.2, "the storage's default"
    assert kwargs["retry"].get_retries() == 0
    sentinels = pool.sentinel_manager.sentinels
    addresses = [
        (s.get_connection_kwargs()["host"], s.get_connection_kwargs()["port"]) for s in sentinels
    ]
    assert addresses == [("10.0.0.1", 5000), ("10.0.0.2", 26379)]
    for sentinel in sentinels:
        sentinel_kwargs = sentinel.get_connection_kwargs()
        assert sentinel_kwargs["password"] == "watch"
        assert sentinel_kwargs["socket_timeout"] == 0.3
        assert sentinel_kwargs["retry"].get_retries() == 0, "a sentinel question is not retried"
    assert (storage.prefix, storage.sync_interval) == ("shop", 0.25)
    assert repr(storage) == (
        "RedisStorage(sentinel orders@10.0.0.1:5000,10.0.0.2:26379/2, prefix='shop', "
        "sync_interval=0.25)"
    )
    assert "s3cret" not in repr(storage) and "watch" not in repr(storage)


def test_a_rediss_sentinel_url_uses_tls_to_the_primary_and_the_sentinels() -> None:
    storage = RedisStorage.from_url("rediss+sentinel://10.0.0.1:5000/orders")
    client, pool = sentinel_client_of(storage)
    assert "SSL" in pool.connection_class.__name__
    sentinel = pool.sentinel_manager.sentinels[0]
    assert "SSL" in sentinel.connection_pool.connection_class.__name__
    assert client.get_connection_kwargs()["db"] == 0


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://10.0.0.1:5000",
        "redis+sentinel://10.0.0.1:5000/",
        "redis+sentinel://10.0.0.1:5000/orders/x",
        "redis+sentinel://10.0.0.1:5000/orders/1/2",
        "redis+sentinel://10.0.0.1:port/orders",
        "redis+sentinel://10.0.0.1:5000,/orders",
        "redis+sentry://10.0.0.1:5000/orders",
        "redis+sentinel://10.0.0.1:5000/orders/\u00b2",  # a digit, but not a number
        "redis+sentinel://10.0.0.1:5000/orders/2?db=3",  # two databases
    ],
)
def test_a_malformed_sentinel_url_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        storage_from_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://10.0.0.1:5000/orders?db=3",
        "redis+sentinel://10.0.0.1:5000/orders/3?db=3",
    ],
)
def test_a_database_in_the_query_is_used_as_redis_py_reads_it(url: str) -> None:
    storage = storage_from_url(url)
    assert isinstance(storage, RedisStorage)
    client, _ = sentinel_client_of(storage)
    assert client.get_connection_kwargs()["db"] == 3


def test_a_plain_client_handed_in_with_redis_py_defaults_gets_a_warning() -> None:
    # redis-py 8's defaults: 5 s timeouts, 10 retries with backoff.
    with pytest.warns(RedisClientWarning, match="retries") as caught:
        RedisStorage(redis.Redis(port=closed_port()))
    assert "socket_timeout=5" in str(caught[0].message)


def test_a_sentinel_client_handed_in_with_redis_py_defaults_gets_a_warning() -> None:
    # Sentinel's defaults: no socket timeouts, and sentinel connections that retry 3 times.
    sentinel = Sentinel([("127.0.0.1", closed_port())])  # type: ignore[no-untyped-call]
    client = sentinel.master_for("orders")  # type: ignore[no-untyped-call]
    with pytest.warns(RedisClientWarning, match="socket_timeout=None") as caught:
        RedisStorage(client)
    assert "sentinel" in str(caught[0].message)
    assert caught[0].filename == __file__, "the warning points at the caller"


def test_a_sentinel_client_with_short_timeouts_and_no_retries_is_taken_silently() -> None:
    quick = {"socket_timeout": 0.2, "socket_connect_timeout": 0.2, "retry": Retry(NoBackoff(), 0)}
    sentinel = Sentinel([("127.0.0.1", closed_port())], sentinel_kwargs=quick)  # type: ignore[no-untyped-call]
    client = sentinel.master_for("orders", **quick)  # type: ignore[no-untyped-call]
    storage = RedisStorage(client)  # a warning would fail the test (filterwarnings=error)
    assert storage.load("svc") is None, "no sentinel there: unavailable, not an error"


# -- against the real setup --------------------------------------------------------


def test_closing_a_storage_closes_its_sentinel_connections_too(
    sentinel_setup: RedisSentinelProcesses,
) -> None:
    storage = RedisStorage(sentinel_setup.url)
    assert storage.load("svc") is not None
    _, pool = sentinel_client_of(storage)
    sentinel_pool = pool.sentinel_manager.sentinels[0].connection_pool
    assert sentinel_pool._created_connections == 1
    storage.close()
    assert all(c._sock is None for c in sentinel_pool._available_connections)


def test_processes_share_a_breaker_through_the_primary_the_sentinel_names(
    sentinel_setup: RedisSentinelProcesses,
) -> None:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    one = RedisStorage(sentinel_setup.url, prefix=prefix)
    other = RedisStorage(sentinel_setup.url, prefix=prefix)
    try:
        for _ in range(2):
            one.record_failure("svc", failure_threshold=3, open_for=30)
        state = other.record_failure("svc", failure_threshold=3, open_for=30)
        assert state is not None and state.state is CircuitState.OPEN
        loaded = one.load("svc")
        assert loaded is not None and loaded.state is CircuitState.OPEN
        primary = redis.Redis(port=sentinel_setup.primary_port())
        try:
            assert primary.exists(f"{prefix}:{{svc}}:open")
        finally:
            primary.close()
    finally:
        one.close()
        other.close()


def test_a_dead_service_gets_at_most_threshold_plus_processes_calls_through_sentinel(
    sentinel_setup: RedisSentinelProcesses,
) -> None:
    assert_a_dead_service_gets_threshold_plus_processes_calls(sentinel_setup.url)


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_sentinel_failover_mid_run_loses_no_call_and_sharing_resumes_on_the_new_primary(
    disposable_sentinel_setup: RedisSentinelProcesses, fault: str
) -> None:
    """Killed: connections are refused at once.  Hung (SIGSTOP): connections are
    accepted and never answered, so each command waits out its socket timeout."""
    setup = disposable_sentinel_setup
    old_primary = setup.primary

    def fail_the_primary_until_the_replica_is_promoted() -> None:
        if fault == "killed":
            old_primary.kill()
        else:
            old_primary.pause()
        setup.wait_for_failover(old_primary.port)

    try:
        failover_run(
            setup.url,
            f"{fault}-{uuid.uuid4().hex[:8]}",
            fail_the_primary_until_the_replica_is_promoted,
        )
    finally:
        old_primary.kill()
    assert setup.primary_port() != old_primary.port


def test_callers_of_gunicorn_workers_get_only_200s_through_a_sentinel_failover(
    disposable_sentinel_setup: RedisSentinelProcesses, tmp_path: Path
) -> None:
    """The fault tests' gateway (two gunicorn workers, a ServiceSession with a
    breaker of threshold 1) relays calls to a healthy downstream while the
    primary is killed: a Redis error that reached the breaker as a failure, or a
    caller as a 500, would show; so would a call that waited on Redis."""
    setup = disposable_sentinel_setup
    downstream = Downstream()
    answers: list[tuple[int, float]] = []
    stop = threading.Event()

    def call(gateway: ServiceProcess) -> int:
        started = time.monotonic()
        response = requests.get(
            f"{gateway.base_url}/relay", timeout=30, headers={"Connection": "close"}
        )
        answers.append((response.status_code, time.monotonic() - started))
        return response.status_code

    with serve_app(downstream.app) as downstream_url:
        gateway = ServiceProcess(
            "sentinel-gateway",
            "tests.support.fault_gateway:create_app()",
            tmp_path,
            workers=2,
            env={
                "GENNET_BREAKER_STORAGE": with_worker_options(setup.url),
                "FAULT_DOWNSTREAM_URL": downstream_url,
            },
        )
        gateway.start()
        try:
            gateway.wait_ready(timeout=60)

            def call_until_stopped() -> None:
                while not stop.is_set():
                    call(gateway)

            caller = threading.Thread(target=call_until_stopped)
            caller.start()
            try:
                time.sleep(0.5)
                old_primary = setup.primary
                old_primary.kill()
                setup.wait_for_failover(old_primary.port)
                time.sleep(1.0)
            finally:
                stop.set()
                caller.join(timeout=60)
            during = list(answers)
            open_fleet_wide(setup.url, "fault-downstream")
            deadline = time.monotonic() + SHARING_BOUND
            refused_in_a_row = 0
            while refused_in_a_row < 10:
                assert time.monotonic() < deadline, "the trip did not reach both workers"
                refused_in_a_row = refused_in_a_row + 1 if call(gateway) == 503 else 0
        finally:
            gateway.stop()
    assert len(during) > 10
    assert {status for status, _ in during} == {200}
    assert max(seconds for _, seconds in during) < SLOWEST_CALL_BOUND
    print(f"\n{len(during)} calls through the failover, slowest {max(s for _, s in during):.3f} s")

"""RedisStorage on a Redis Cluster: URLs, hash slots, client settings, a fleet, failures.

The servers are real: three primaries (``redis-server --cluster-enabled yes``,
joined by ``redis-cli --cluster create``) on free 127.0.0.1 ports, and for the
failover test a replica for each, started by
:class:`examples.launcher.RedisClusterProcesses`.  A missing binary fails the
tests (``./dev test`` installs it), never skips them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from examples.launcher import RedisClusterProcesses
from gennet_sync.redis_storage import RedisClientWarning, RedisStorage
from gennet_sync.storage import CircuitState
from gennet_sync.storage_url import storage_from_url
from tests.support.clock import FakeClock
from tests.support.demo import ports_started, run_demo
from tests.support.redis_fleet import (
    assert_a_dead_service_gets_threshold_plus_processes_calls,
    failover_run,
    started,
)
from tests.support.redis_workers import closed_port

pytestmark = pytest.mark.integration

LOGGER = "gennet_sync.redis_storage"


def start_cluster(log_dir: Path, **options: Any) -> RedisClusterProcesses:
    return started(lambda attempt_dir: RedisClusterProcesses(attempt_dir, **options), log_dir)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    """Three primaries without replicas, shared by the module's tests.

    A test that kills a node starts it again and waits until the cluster is ready.
    """
    started = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def storage(cluster: RedisClusterProcesses) -> Iterator[RedisStorage]:
    made = RedisStorage(cluster.url, prefix=f"test:{uuid.uuid4().hex[:8]}", sync_interval=0.1)
    yield made
    made.close()


def cluster_client(storage: RedisStorage) -> RedisCluster:
    client = storage.client
    assert isinstance(client, RedisCluster)
    return client


def slots_of(storage: RedisStorage, name: str) -> set[int]:
    keys = storage._keys(name)
    client = cluster_client(storage)
    return {client.keyslot(key) for key in [*keys.all(), keys.closings]}  # type: ignore[no-untyped-call]


# -- URLs and client settings ----------------------------------------------------


def test_a_cluster_url_builds_a_client_with_short_timeouts_and_no_retries(
    cluster: RedisClusterProcesses,
) -> None:
    storage = storage_from_url(f"{cluster.url}?prefix=shop&socket_timeout=0.3")
    assert isinstance(storage, RedisStorage)
    try:
        assert storage.load("svc") is not None
        client = cluster_client(storage)
        kwargs = client.nodes_manager.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.3, 0.2)
        assert client.retry.get_retries() == 0
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        assert {node.port for node in primaries} == {n.port for n in cluster.nodes}
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in cluster.nodes)
        assert repr(storage) == f"RedisStorage(cluster {hosts}, prefix='shop', sync_interval=0.5)"
    finally:
        storage.close()


def test_a_cluster_that_cannot_be_reached_is_an_outage_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    # Building the cluster client connects: that waits for the first command.
    storage = RedisStorage(f"redis+cluster://127.0.0.1:{closed_port()}", clock=FakeClock())
    started = time.monotonic()
    assert storage.load("svc") is None
    assert storage.record_failure("svc", failure_threshold=1, open_for=30) is None
    assert time.monotonic() - started < 2.0
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING]
    storage.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://10.0.0.1:7000/1",
        "redis+cluster://10.0.0.1:7000?db=1",
        "redis+cluster://10.0.0.1:7000/0/1",
        "redis+cluster://10.0.0.1:port",
        "redis+cluster://10.0.0.1:7000,,10.0.0.2:7000",
        "redis+clusters://10.0.0.1:7000",
    ],
)
def test_a_malformed_cluster_url_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        storage_from_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?socket_timout=1",
        "redis+sentinel://127.0.0.1:26379/orders?socket_timout=1",
        "redis+sentinel://127.0.0.1:26379/orders?health_check=5",
        "redis+cluster://127.0.0.1:7000?socket_timout=1",
    ],
)
def test_an_option_redis_py_lacks_is_a_value_error_not_an_outage_for_ever(url: str) -> None:
    # redis-py itself would fail only at the first command: the storage would
    # report Redis unavailable on every probe and never share anything.
    with pytest.raises(ValueError, match="option redis-py lacks"):
        storage_from_url(url)


def test_a_cluster_client_handed_in_with_redis_py_defaults_gets_a_warning(
    cluster: RedisClusterProcesses,
) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        with pytest.warns(RedisClientWarning, match="retries") as caught:
            RedisStorage(client)
        assert "socket_timeout=None" in str(caught[0].message)
    finally:
        client.close()


def test_a_cluster_client_with_short_timeouts_and_no_retries_is_taken_silently(
    cluster: RedisClusterProcesses,
) -> None:
    client = RedisCluster(
        host="127.0.0.1",
        port=cluster.nodes[0].port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        storage = RedisStorage(client)  # a warning would fail the test (filterwarnings=error)
        assert storage.load("svc") is not None
    finally:
        client.close()


# -- hash slots ------------------------------------------------------------------

AWKWARD_NAMES = ["", "}", "{", "{}", "}{", "a}b{c", "{x}", "%", "%7B", "%25", "payments"]


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_every_key_of_a_breaker_is_in_one_slot_and_every_script_runs(
    storage: RedisStorage, name: str
) -> None:
    assert len(slots_of(storage, name)) == 1
    assert storage.record_failure(name, failure_threshold=2, open_for=0.05) is not None
    state = storage.record_failure(name, failure_threshold=2, open_for=0.05)
    assert state is not None and state.state is CircuitState.OPEN
    deadline = time.monotonic() + 5
    while (state := storage.load(name)) is None or state.state is CircuitState.OPEN:
        assert time.monotonic() < deadline, state
        time.sleep(0.02)
    assert state.state is CircuitState.HALF_OPEN
    assert storage.acquire_trial(name, max_calls=1, lease=10) is True
    storage.release_trial(name)
    storage.set_closed(name)
    window = storage.sync_window(name, calls=2, failures=1, slow_calls=0, window_seconds=10)
    assert window is not None and window.window is not None
    assert (window.state, window.window.calls, window.window.failures) == (
        CircuitState.CLOSED,
        2,
        1,
    )
    storage.reset_failures(name)
    assert storage.available, "no command failed (a CROSSSLOT error would count as an outage)"


def test_names_with_braces_keep_state_and_slots_of_their_own(storage: RedisStorage) -> None:
    storage.set_open("a}b{c", 30)
    for other in AWKWARD_NAMES:
        if other != "a}b{c":
            state = storage.load(other)
            assert state is not None and state.state is CircuitState.CLOSED, other
    # Read raw, "a}1" ... "a}8" would all hash "a": one slot for every such breaker.
    slots = set().union(*(slots_of(storage, f"a}}{i}") for i in range(8)))
    assert len(slots) > 1


@pytest.mark.parametrize("prefix", ["app{1}", "{app}", "app}", "app{"])
def test_a_prefix_with_braces_is_refused(cluster: RedisClusterProcesses, prefix: str) -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisStorage(cluster.url, prefix=prefix)
    with pytest.raises(ValueError, match="braces"):
        storage_from_url(f"{cluster.url}?prefix={prefix.replace('{', '%7B')}")


def test_scripts_flushed_from_every_node_run_again_by_their_source(
    storage: RedisStorage, cluster: RedisClusterProcesses
) -> None:
    storage.record_failure("svc", failure_threshold=5, open_for=30)
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as admin:
            admin.script_flush()
    state = storage.record_failure("svc", failure_threshold=5, open_for=30)
    assert state is not None and state.failure_count == 2
    assert storage.available


def test_failed_releases_of_breakers_in_different_slots_go_back_together(
    cluster: RedisClusterProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    worker = RedisStorage(cluster.url, prefix=prefix, clock=clock)
    other = RedisStorage(cluster.url, prefix=prefix)
    names = [f"svc-{i}" for i in range(6)]
    assert len(set().union(*(slots_of(worker, name) for name in names))) > 1
    try:
        for name in names:
            other.set_open(name, 0.01)
        time.sleep(0.05)  # the open periods end in Redis
        assert [worker.acquire_trial(n, max_calls=1, lease=60) for n in names] == [True] * 6

        def refused(*args: Any) -> None:
            raise redis.ConnectionError("Connection reset by peer")

        with monkeypatch.context() as patch:
            patch.setattr(cluster_client(worker), "zrem", refused)
            for name in names:
                worker.release_trial(name)
        assert [other.acquire_trial(n, max_calls=1, lease=60) for n in names] == [False] * 6
        clock.advance(2)  # past the outage backoff
        assert worker.load(names[0]) is not None, "the next answered command takes them along"
        assert [other.acquire_trial(n, max_calls=1, lease=60) for n in names] == [True] * 6
    finally:
        worker.close()
        other.close()


def exit_code_of_child(run: Callable[[], bool], *, alarm: int) -> int:
    """Fork; the child exits 0 if ``run()`` is true, 2 if false, 3 if it raised,
    and dies of SIGALRM after ``alarm`` seconds (a deadlock)."""
    with warnings.catch_warnings():  # forking a multi-threaded process on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        status = 3
        try:
            signal.alarm(alarm)
            status = 0 if run() else 2
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


def test_a_forked_child_builds_a_cluster_client_of_its_own_even_if_its_locks_were_held(
    storage: RedisStorage,
) -> None:
    """gunicorn's preload_app forks workers from a master that may have used the storage."""
    storage.set_open("svc", 30)
    parent_client = cluster_client(storage)
    holding, release = threading.Event(), threading.Event()

    def refresh_the_topology() -> None:  # a parent thread in the middle of a refresh
        with parent_client.nodes_manager._initialization_lock:
            holding.set()
            release.wait(timeout=30)

    def parent_client_refreshes() -> bool:
        parent_client.nodes_manager.initialize()
        return True

    def child_storage_loads_with_its_own_client() -> bool:
        state = storage.load("svc")
        fresh = storage.client is not parent_client
        return fresh and state is not None and state.state is CircuitState.OPEN

    holder = threading.Thread(target=refresh_the_topology)
    holder.start()
    try:
        assert holding.wait(timeout=5)
        # The hazard is real: the parent's client cannot refresh in the child.
        assert exit_code_of_child(parent_client_refreshes, alarm=2) == -signal.SIGALRM
        assert exit_code_of_child(child_storage_loads_with_its_own_client, alarm=10) == 0
    finally:
        release.set()
        holder.join(timeout=5)
    assert cluster_client(storage) is parent_client, "the parent keeps its client"


# -- real processes --------------------------------------------------------------


def test_a_dead_service_gets_at_most_threshold_plus_processes_calls_through_the_cluster(
    cluster: RedisClusterProcesses,
) -> None:
    assert_a_dead_service_gets_threshold_plus_processes_calls(cluster.url)


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_primary_lost_mid_run_without_a_replica_degrades_to_local_state_until_it_is_back(
    cluster: RedisClusterProcesses, fault: str
) -> None:
    """Killed then restarted (its keys are lost), or hung (SIGSTOP: connections
    are accepted and never answered) then resumed."""
    name = f"{fault}-{uuid.uuid4().hex[:8]}"
    node = cluster.primary_of(f"gennet:cb:{{{name}}}:open")

    def lose_the_primary_for_a_second() -> None:
        if fault == "killed":
            node.kill()
            time.sleep(1.0)  # calls carry on against the workers' local state
            node.start()  # its nodes.conf gives it its slots back
            node.wait_ready()
        else:
            node.pause()
            time.sleep(1.0)
            node.resume()
        cluster.wait_ready()

    try:
        failover_run(cluster.url, name, lose_the_primary_for_a_second)
    finally:
        node.resume()
        if not node.running:
            node.start()
        cluster.wait_ready()


def test_a_cluster_failover_mid_run_loses_no_call_and_sharing_resumes_on_the_promoted_replica(
    tmp_path: Path,
) -> None:
    replicated = start_cluster(tmp_path, replicas=1)
    try:
        name = f"failover-{uuid.uuid4().hex[:8]}"
        node = replicated.primary_of(f"gennet:cb:{{{name}}}:open")

        def kill_until_the_replica_is_promoted() -> None:
            node.kill()
            replicated.wait_for_failover(node.port)

        failover_run(replicated.url, name, kill_until_the_replica_is_promoted)
        assert replicated.primary_of(f"gennet:cb:{{{name}}}:open") is not node
    finally:
        replicated.stop()


def test_the_demo_shares_its_breaker_through_the_cluster_its_redis_url_names(
    cluster: RedisClusterProcesses,
) -> None:
    result = run_demo("--redis-url", cluster.url)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "breaker storage: RedisStorage(cluster 127.0.0.1:" in out
    assert "with the shared breaker" in out
    assert "(Redis: open)" in out
    assert "(Redis: closed)" in out
    assert "Story complete: all 6 steps happened as told" in out
    assert len(ports_started(out)) == 3, "no redis-server of the demo's own"

"""A fleet of real processes sharing one breaker while its Redis primary dies.

Used by the Sentinel and Cluster tests: ``failover_run`` starts worker
processes (spawned interpreters, each getting its breaker from the registry
with ``GENNET_BREAKER_STORAGE`` set, as a gunicorn worker would) that call a
healthy service in a loop, timing every call; in the middle of the run the
test's ``fail`` kills the primary holding the breaker's keys and waits until
the topology serves them again (a promoted replica, or the node restarted);
then another process opens the breaker, and every worker must refuse a call
soon after: sharing resumed by itself.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier as BarrierType
from typing import Any

from gennet_sync.circuit_breaker import CircuitBreakerError
from gennet_sync.redis_storage import RedisStorage
from gennet_sync.storage import CircuitState
from tests.test_redis_storage import registry_breaker, run_workers

#: The workers' storage options: a sync every 0.1 s, probes of a failed Redis
#: every 0.1-0.3 s, socket timeouts of 0.5 s.
WORKER_OPTIONS = (
    "sync_interval=0.1&retry_backoff=0.1&max_retry_backoff=0.3"
    "&socket_timeout=0.5&socket_connect_timeout=0.5"
)
#: Longest a single call may take while the primary is down.  A command that
#: fails costs at most a connect timeout to the dead node, and a Sentinel
#: client's question to a sentinel (0.5 s) or a Cluster client's topology
#: refresh and 0.25 s ClusterDown pause; the rest is room for a loaded machine.
SLOWEST_CALL_BOUND = 3.0
#: Seconds within which a trip made after the failover reaches every worker: a
#: sync (0.1 s), the longest backoff (0.3 s), room for a loaded machine.
SHARING_BOUND = 2.0


def with_worker_options(url: str) -> str:
    """``url`` with :data:`WORKER_OPTIONS` appended to its query."""
    return f"{url}{'&' if '?' in url else '?'}{WORKER_OPTIONS}"


def healthy_call() -> str:
    return "ok"


def steady_worker(
    storage_url: str,
    name: str,
    duration: float,
    start: BarrierType,
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    """Calls a healthy service until the breaker refuses (or time runs out), timing each call."""
    breaker = registry_breaker(storage_url, name, failure_threshold=3, recovery_timeout=60)
    outcomes: dict[str, Any] = {"returned": 0, "slowest": 0.0, "rejected_at": None}
    outcomes["unexpected"] = []
    start.wait()
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            breaker.call(healthy_call)
        except CircuitBreakerError:
            outcomes["rejected_at"] = time.monotonic()
            break
        except Exception as exc:  # a raw redis error reaching a caller is the bug
            outcomes["unexpected"].append(repr(exc))
        else:
            outcomes["returned"] += 1
        outcomes["slowest"] = max(outcomes["slowest"], time.monotonic() - started)
        time.sleep(0.01)
    results.put(outcomes)


def open_fleet_wide(storage_url: str, name: str, timeout: float = 20.0) -> float:
    """Open ``name`` through a storage of its own once Redis takes it; when it did."""
    tripper = RedisStorage(storage_url, retry_backoff=0.05, max_retry_backoff=0.1)
    try:
        deadline = time.monotonic() + timeout
        while True:
            tripper.set_open(name, 60)
            state = tripper.load(name)
            if state is not None and state.state is CircuitState.OPEN:
                return time.monotonic()
            assert time.monotonic() < deadline, f"{name} could not be opened after the failover"
            time.sleep(0.05)
    finally:
        tripper.close()


def failover_run(
    storage_url: str, name: str, fail: Callable[[], None], *, processes: int = 3
) -> list[dict[str, Any]]:
    """Run :func:`steady_worker` in ``processes`` processes; ``fail()`` mid-run, then a trip.

    Asserts what a user would notice: no call raised anything but the breaker's
    refusal, none took longer than :data:`SLOWEST_CALL_BOUND`, every worker
    carried on through the outage and refused calls within
    :data:`SHARING_BOUND` of the trip.

    Returns:
        Each worker's outcomes (``returned``, ``slowest``, ``rejected_at``).
    """
    tripped_at: list[float] = []
    failed_at: list[float] = []

    def outage_then_trip() -> None:
        time.sleep(0.5)
        failed_at.append(time.monotonic())
        fail()
        time.sleep(0.5)  # the workers' backoff (at most 0.3 s) runs out
        tripped_at.append(open_fleet_wide(storage_url, name))

    url = with_worker_options(storage_url)
    outcomes = run_workers(steady_worker, processes, url, name, 60.0, during=outage_then_trip)
    for outcome in outcomes:
        assert outcome["unexpected"] == [], outcome["unexpected"]
        assert outcome["slowest"] < SLOWEST_CALL_BOUND, outcome
        assert outcome["rejected_at"] is not None, "sharing resumed after the failover"
        assert 0 <= outcome["rejected_at"] - tripped_at[0] < SHARING_BOUND, outcome
    print(
        f"\n{name}: primary down to trip {tripped_at[0] - failed_at[0]:.2f} s, slowest call "
        f"{max(o['slowest'] for o in outcomes):.3f} s, trip seen after "
        f"{max(o['rejected_at'] for o in outcomes) - tripped_at[0]:.2f} s"
    )
    return outcomes

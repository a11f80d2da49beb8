"""Fleets of real processes sharing one breaker, for the Sentinel and Cluster tests.

``assert_a_dead_service_gets_threshold_plus_processes_calls`` is the fleet
test: several processes call a dead service through one shared breaker.

``failover_run`` starts worker
processes (spawned interpreters, each getting its breaker from the registry
with ``GENNET_BREAKER_STORAGE`` set, as a gunicorn worker would) that call a
service failing every other call (never enough in a row to trip) in a loop,
timing every call; in the middle of the run the
test's ``fail`` kills the primary holding the breaker's keys and waits until
the topology serves them again (a promoted replica, or the node restarted);
then another process opens the breaker, and every worker must refuse a call
soon after: sharing resumed by itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from examples.launcher import StartupError
from gennet_sync.redis_storage import RedisStorage
from gennet_sync.storage import CircuitState
from tests.support.redis_workers import (
    closed_port,
    dead_service_worker,
    healthy_until_rejected_worker,
    run_workers,
)

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


class _Topology(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


_T = TypeVar("_T", bound=_Topology)


def started(make: Callable[[Path], _T], log_dir: Path) -> _T:
    """``make(log_dir / "attempt-N")`` started; once more if the first start fails
    (a free port can be taken between choosing and binding it)."""
    for attempt in range(2):
        topology = make(log_dir / f"attempt-{attempt}")
        try:
            topology.start()
        except StartupError:
            topology.stop()
            if attempt == 1:
                raise
        else:
            return topology
    raise AssertionError("unreachable")


def assert_a_dead_service_gets_threshold_plus_processes_calls(
    storage_url: str, *, processes: int = 3, threshold: int = 3, calls: int = 12
) -> None:
    """Processes sharing a breaker: a dead service gets at most ``threshold + processes`` calls."""
    name = f"dead-{uuid.uuid4().hex[:8]}"
    # Generous timeouts: a loaded machine must not turn a slow reply into a local decision.
    url = f"{storage_url}?sync_interval=0.1&socket_timeout=2&socket_connect_timeout=2"
    port = closed_port()
    outcomes = run_workers(dead_service_worker, processes, url, name, threshold, port, calls)
    assert [unexpected for _, _, unexpected in outcomes] == [[]] * processes
    sent = sum(sent for sent, _, _ in outcomes)
    assert threshold <= sent <= threshold + processes
    assert all(sent + rejected == calls for sent, rejected, _ in outcomes)


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
    """Run workers in ``processes`` processes; ``fail()`` mid-run, then a trip.

    Asserts what a user would notice: no call raised anything but the service's
    own error or the breaker's refusal, every call before the trip reached the
    service (none was refused on the outage's account), none took longer than
    :data:`SLOWEST_CALL_BOUND`, and every worker refused calls within
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
    outcomes = run_workers(
        healthy_until_rejected_worker, processes, url, name, 60.0, during=outage_then_trip
    )
    for outcome in outcomes:
        assert outcome["unexpected"] == [], outcome["unexpected"]
        assert outcome["returned"] + outcome["failed"] == outcome["attempts"] - 1, outcome
        assert outcome["slowest"] < SLOWEST_CALL_BOUND, outcome
        assert outcome["rejected_at"] is not None, "sharing resumed after the failover"
        seen_after = outcome["rejected_at"] - tripped_at[0]
        assert 0 <= seen_after < SHARING_BOUND, (
            f"trip seen {seen_after:.3f} s after it was made "
            f"(primary failed {tripped_at[0] - failed_at[0]:.3f} s before the trip): {outcome}"
        )
    print(
        f"\n{name}: primary down to trip {tripped_at[0] - failed_at[0]:.2f} s, slowest call "
        f"{max(o['slowest'] for o in outcomes):.3f} s, trip seen after "
        f"{max(o['rejected_at'] for o in outcomes) - tripped_at[0]:.2f} s"
    )
    return outcomes

"""Worker processes that share one breaker through Redis, for the fleet tests.

Each worker is a separate interpreter (spawn) that gets its breaker from the
registry with ``GENNET_BREAKER_STORAGE`` set, as a gunicorn worker would.  The
test process and the workers share CLOCK_MONOTONIC, so their times compare.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier as BarrierType
from typing import Any

from examples.launcher import free_port
from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError, get_circuit_breaker
from tests.support.redis_server import RedisServer

SPAWN = multiprocessing.get_context("spawn")


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on: connecting is refused at once."""
    return free_port()


def call_dead_service(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0):
        pass  # pragma: no cover - nothing listens there


def registry_breaker(storage_url: str, name: str, **config: Any) -> CircuitBreaker:
    os.environ["GENNET_BREAKER_STORAGE"] = storage_url
    return get_circuit_breaker(name, **config)


def dead_service_worker(
    storage_url: str,
    name: str,
    threshold: int,
    port: int,
    calls: int,
    start: BarrierType,
    results: multiprocessing.Queue[tuple[int, int, list[str]]],
) -> None:
    breaker = registry_breaker(storage_url, name, failure_threshold=threshold, recovery_timeout=60)
    start.wait()
    sent = rejected = 0
    unexpected: list[str] = []
    for _ in range(calls):
        try:
            breaker.call(call_dead_service, port)
        except ConnectionRefusedError:
            sent += 1
        except CircuitBreakerError:
            rejected += 1
        except Exception as exc:
            unexpected.append(repr(exc))
    results.put((sent, rejected, unexpected))


def recovering_service_call(log: list[tuple[float, float]]) -> str:
    started = time.monotonic()
    time.sleep(0.2)  # a slow but healthy answer
    log.append((started, time.monotonic()))
    return "ok"


def recovering_service_worker(
    storage_url: str,
    name: str,
    duration: float,
    start: BarrierType,
    results: multiprocessing.Queue[list[tuple[float, float]]],
) -> None:
    breaker = registry_breaker(
        storage_url,
        name,
        failure_threshold=1,
        recovery_timeout=0.4,
        half_open_max_calls=2,
        max_half_open_wait=0.5,
    )
    log: list[tuple[float, float]] = []
    start.wait()
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline and len(log) < 3:
        with contextlib.suppress(CircuitBreakerError):
            breaker.call(recovering_service_call, log)
        time.sleep(0.005)
    results.put(log)


def healthy_until_rejected_worker(
    storage_url: str,
    name: str,
    duration: float,
    start: BarrierType,
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    """Calls a service that fails every other call, until the breaker rejects one;
    ``slowest`` is the longest a call took."""
    breaker = registry_breaker(storage_url, name, failure_threshold=100, recovery_timeout=60)
    outcomes: dict[str, Any] = {
        "attempts": 0,
        "returned": 0,
        "failed": 0,
        "rejected_at": None,
        "unexpected": [],
        "slowest": 0.0,
    }
    start.wait()
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        outcomes["attempts"] += 1
        fail = outcomes["attempts"] % 2 == 0
        started = time.monotonic()
        try:
            breaker.call(flaky_service_call, fail)
        except CircuitBreakerError:
            outcomes["rejected_at"] = time.monotonic()
            break
        except ConnectionError:
            outcomes["failed"] += 1
        except Exception as exc:
            outcomes["unexpected"].append(repr(exc))
        else:
            outcomes["returned"] += 1
        outcomes["slowest"] = max(outcomes["slowest"], time.monotonic() - started)
        time.sleep(0.002)
    results.put(outcomes)


def rate_window_worker(
    storage_url: str,
    name: str,
    calls: int,
    duration: float,
    start: BarrierType,
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    """Makes ``calls`` failing calls, fewer than minimum_calls, then only asks for
    admission (outcome ignored) until the breaker refuses or time runs out."""
    breaker = registry_breaker(
        storage_url,
        name,
        failure_threshold=None,
        recovery_timeout=60,
        failure_rate_threshold=0.5,
        window_type="time",
        window_size=60,
        minimum_calls=8,
    )
    outcomes: dict[str, Any] = {"sent": 0, "rejected": False, "unexpected": []}
    start.wait()
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        try:
            if outcomes["sent"] < calls:
                breaker.call(flaky_service_call, True)
            else:
                breaker.acquire().ignore()
        except CircuitBreakerError:
            outcomes["rejected"] = True
            break
        except ConnectionError:
            outcomes["sent"] += 1
        except Exception as exc:
            outcomes["unexpected"].append(repr(exc))
        time.sleep(0.02)
    results.put(outcomes)


def flaky_service_call(fail: bool) -> str:
    if fail:
        raise ConnectionError("downstream reset the connection")
    return "ok"


def shared_url(server: RedisServer) -> str:
    """The workers' GENNET_BREAKER_STORAGE.  Socket timeouts are generous so that a
    loaded CI machine does not turn a slow reply into an "unavailable" (and a local
    decision) where the test expects the fleet-wide one."""
    return f"{server.url}?sync_interval=0.1&socket_timeout=2&socket_connect_timeout=2"


def noop() -> None:
    pass


def run_workers(
    target: Callable[..., None], count: int, *args: Any, during: Callable[[], None] = noop
) -> list[Any]:
    """Start ``count`` worker processes, release them together, collect one result each."""
    results: multiprocessing.Queue[Any] = SPAWN.Queue()
    start = SPAWN.Barrier(count + 1)
    workers = [SPAWN.Process(target=target, args=(*args, start, results)) for _ in range(count)]
    for worker in workers:
        worker.start()
    try:
        start.wait(timeout=60)  # every worker has imported everything and built its breaker
        during()
        collected = [results.get(timeout=60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
            worker.close()
        results.close()
        results.join_thread()
    return collected

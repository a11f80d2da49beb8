"""The circuit breaker across real processes: forked children, and two
processes sharing one breaker through a real redis-server."""

from __future__ import annotations

import os
import signal
import threading
import uuid
import warnings

import pytest

from gennet_sync.circuit_breaker import (
    CircuitBreaker,
    CircuitState,
    get_circuit_breaker,
)
from gennet_sync.redis_storage import RedisStorage
from tests.support.breakers import ok, rejected
from tests.support.clock import FakeClock
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


# -- fork --------------------------------------------------------------------------------------


def fork() -> int:
    """``os.fork()``, forking a multi-threaded process on purpose.

    Python 3.12+ warns that this may deadlock the child; preventing exactly that
    is what these tests check, so the warning is expected here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def test_a_forked_child_never_inherits_a_held_lock() -> None:
    breaker = get_circuit_breaker("forky", failure_threshold=1)
    from gennet_sync.circuit_breaker import registry

    holding, release = threading.Event(), threading.Event()

    def hold_locks() -> None:
        with breaker._lock, registry._lock:
            holding.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold_locks)
    holder.start()
    try:
        assert holding.wait(timeout=5)
        pid = fork()
        if pid == 0:  # the child: no other thread exists here
            status = 1
            try:
                signal.alarm(10)  # a deadlock ends the child instead of hanging the test
                assert breaker.call(ok) == "ok"
                assert get_circuit_breaker("forky") is breaker
                assert get_circuit_breaker("child-only").state is CLOSED
                breaker.acquire().failure()
                status = 0 if breaker.state is OPEN else 2
            finally:
                os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join(timeout=5)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert breaker.state is CLOSED  # the child's failure stayed in the child


def test_a_forked_child_does_not_inherit_the_parents_trial_slot(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=1, clock=clock)
    breaker.acquire().failure()
    clock.advance(1)
    parents_trial = breaker.acquire()
    pid = fork()
    if pid == 0:
        status = 1
        try:
            signal.alarm(10)
            status = 0 if breaker.acquire().is_trial else 2
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    parents_trial.success()
    assert breaker.state is CLOSED


# -- shared storage ------------------------------------------------------------------------------


def test_two_processes_share_one_breaker_through_redis(redis_server: RedisServer) -> None:
    prefix = f"test-breaker-{uuid.uuid4().hex[:8]}"
    first = RedisStorage(redis_server.url, prefix=prefix, sync_interval=0.0)
    second = RedisStorage(redis_server.url, prefix=prefix, sync_interval=0.0)
    try:
        a = CircuitBreaker(failure_threshold=3, recovery_timeout=30, name="grn", storage=first)
        b = CircuitBreaker(failure_threshold=3, recovery_timeout=30, name="grn", storage=second)
        a.acquire().failure()
        b.acquire().failure()
        assert (a.state, b.state) == (CLOSED, CLOSED)
        a.acquire().failure()  # the third failure in the fleet
        assert a.state is OPEN
        error = rejected(b)
        assert 25 < (error.retry_after or 0) <= 30
        a.reset()
        assert b.call(ok) == "ok"
        assert b.state is CLOSED
    finally:
        first.close()
        second.close()

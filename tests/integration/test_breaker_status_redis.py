"""CircuitBreaker.status() with a real redis-server: the fleet's state as another
process decided it, and Redis killed (``storage_up`` False, the last answer kept)
then back."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError, CircuitState
from gennet_sync.redis_storage import RedisStorage
from tests.support.breakers import ok, trip
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_breaker_registry")]


def test_status_shows_the_fleets_state_and_a_killed_redis(
    disposable_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="gennet_sync")  # Redis down is logged: expected
    prefix = f"status:{uuid.uuid4().hex[:8]}"
    ours = RedisStorage(disposable_redis_server.url, prefix=prefix, sync_interval=0.0)
    theirs = RedisStorage(disposable_redis_server.url, prefix=prefix, sync_interval=0.0)
    try:
        here = CircuitBreaker(2, 30.0, name="grn", storage=ours)
        there = CircuitBreaker(2, 30.0, name="grn", storage=theirs)
        before = time.time()
        here.call(ok)
        status = here.status()
        assert status.storage_up is True
        assert status.fleet_state is CircuitState.CLOSED
        assert status.fleet_checked_at is not None
        assert before <= status.fleet_checked_at <= time.time()

        trip(there)  # another process opens the fleet
        with pytest.raises(CircuitBreakerError):
            here.call(ok)
        status = here.status()
        assert status.fleet_state is CircuitState.OPEN
        assert status.metrics.state is CircuitState.OPEN
        assert status.retry_at is not None
        assert 0 < status.retry_at - time.time() <= 30
        assert status.transitions[-1].new_state is CircuitState.OPEN

        here.reset()  # closes the fleet: our next call goes through
        disposable_redis_server.kill()
        checked = here.status().fleet_checked_at
        here.call(ok)
        status = here.status()
        assert status.storage_up is False
        assert status.fleet_checked_at == checked  # the last answer stays, with its time

        disposable_redis_server.start()
        deadline = time.monotonic() + 30
        while not here.status().storage_up:
            assert time.monotonic() < deadline, "storage_up never came back"
            here.call(ok)
            time.sleep(0.1)
        assert here.status().fleet_state is CircuitState.CLOSED
    finally:
        ours.close()
        theirs.close()

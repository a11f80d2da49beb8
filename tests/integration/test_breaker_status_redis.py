"""CircuitBreaker.status() with a real redis-server: the fleet's state as another
process decided it, and Redis killed (``storage_up`` False, the last answer kept)
then back; the readiness probe and the console with Redis up, hung and killed."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

import pytest
from flask import Flask

from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError, CircuitState
from gennet_sync.console import BreakerConsole
from gennet_sync.health import Health
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


def make_app(breaker: CircuitBreaker) -> Flask:
    app = Flask(__name__)
    app.config["GENNET_HEALTH_TIMEOUT"] = 0.5
    Health(app, breakers=[breaker])
    BreakerConsole(app, breakers=[breaker])
    return app


def test_the_probe_and_the_console_with_redis_up_killed_and_hung(
    disposable_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="gennet_sync")
    storage = RedisStorage(
        disposable_redis_server.url, prefix=f"probe:{uuid.uuid4().hex[:8]}", sync_interval=0.0
    )
    try:
        breaker = CircuitBreaker(2, 30.0, name="grn", storage=storage)
        breaker.call(ok)
        client = make_app(breaker).test_client()

        def storage_check() -> dict[str, Any]:
            response = client.get("/health/ready")
            assert response.status_code == 200  # a storage problem never fails readiness
            body = json.loads(response.data)
            entry: dict[str, Any] = body["checks"]["breakerStorage:responseTime"][0]
            return entry

        assert storage_check()["status"] == "pass"
        console = client.get("/gennet/breakers").json
        assert console is not None
        assert console["breakers"][0]["fleet_state"] == "closed"
        assert console["breakers"][0]["storage_up"] is True

        disposable_redis_server.pause()  # hung: connections open, nothing answers
        started = time.monotonic()
        entry = storage_check()
        assert time.monotonic() - started < 10  # does not hang
        assert entry["status"] == "warn"
        disposable_redis_server.resume()

        disposable_redis_server.kill()
        entry = storage_check()
        assert entry["status"] == "warn"
        assert "unavailable" in entry.get("output", "") or "no answer" in entry.get("output", "")
        breaker.call(ok)
        console = client.get("/gennet/breakers").json
        assert console is not None
        assert console["breakers"][0]["storage_up"] is False
    finally:
        storage.close()


def test_console_actions_say_which_reach_the_other_workers(redis_server: RedisServer) -> None:
    # Two breakers on one Redis are two gunicorn workers; the POST reaches one.
    prefix = f"scope:{uuid.uuid4().hex[:8]}"
    ours = RedisStorage(redis_server.url, prefix=prefix, sync_interval=0.0)
    theirs = RedisStorage(redis_server.url, prefix=prefix, sync_interval=0.0)
    try:
        here = CircuitBreaker(1, 300.0, name="grn", storage=ours)
        there = CircuitBreaker(1, 300.0, name="grn", storage=theirs)
        app = Flask(__name__)
        BreakerConsole(app, breakers=[here], auth=lambda request: True)
        client = app.test_client()

        answer = client.post("/gennet/breakers/grn", json={"action": "force_open"}).get_json()
        assert (answer["scope"], answer["pid"]) == ("fleet", os.getpid())
        with pytest.raises(CircuitBreakerError):
            there.call(ok)  # the other worker follows

        answer = client.post("/gennet/breakers/grn", json={"action": "disable"}).get_json()
        assert (answer["mode"], answer["scope"], answer["pid"]) == (
            "disabled",
            "process",
            os.getpid(),
        )
        here.call(ok)  # disabled here...
        with pytest.raises(CircuitBreakerError):
            there.call(ok)  # ...and not there, as the answer says
        assert there.mode.value == "normal"

        answer = client.post("/gennet/breakers/grn", json={"action": "reset"}).get_json()
        assert answer["scope"] == "fleet"
        there.call(ok)  # the fleet closed
    finally:
        ours.close()
        theirs.close()

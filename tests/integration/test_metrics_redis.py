"""gennet_sync.metrics with a real redis-server: the fleet's state, the storage
gauge through a kill and a restart, and a scrape that does not wait on a hung Redis."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gennet_sync import http_client, metrics
from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError
from gennet_sync.metrics import Metrics
from gennet_sync.redis_storage import RedisStorage
from tests.support.breakers import ok, trip
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")


@pytest.fixture
def app() -> Iterator[Flask]:
    registry = CollectorRegistry()
    flask_app = Flask("metrics_redis")
    Metrics(flask_app, registry=registry)
    yield flask_app
    http_client.call_observer = None
    metrics._series = {k: v for k, v in metrics._series.items() if v.registry is not registry}
    metrics._all_series = tuple(metrics._series.values())


def scrape(app: Flask) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    began = time.monotonic()
    response = app.test_client().get("/metrics")
    assert time.monotonic() - began < 10, "the scrape waited on Redis"
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def fleet(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], state: str) -> float | None:
    return samples.get(
        ("gennet_breaker_fleet_state", frozenset({("breaker", "grn"), ("state", state)}))
    )


def storage_up(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float | None:
    return samples.get(("gennet_breaker_storage_up", frozenset()))


def test_fleet_state_and_storage_up_follow_redis(
    app: Flask, disposable_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="gennet_sync")  # Redis down is logged: expected
    prefix = f"metrics:{uuid.uuid4().hex[:8]}"
    ours = RedisStorage(disposable_redis_server.url, prefix=prefix, sync_interval=0.0)
    theirs = RedisStorage(disposable_redis_server.url, prefix=prefix, sync_interval=0.0)
    try:
        here = CircuitBreaker(2, 30.0, name="grn", storage=ours)
        there = CircuitBreaker(2, 30.0, name="grn", storage=theirs)
        here.call(ok)
        samples = scrape(app)
        assert storage_up(samples) == 1
        assert fleet(samples, "closed") == 1

        trip(there)  # another process opens the fleet
        with pytest.raises(CircuitBreakerError):
            here.call(ok)
        samples = scrape(app)
        assert fleet(samples, "open") == 1
        assert fleet(samples, "closed") == 0
        assert samples[("gennet_breaker_retry_at_seconds", frozenset({("breaker", "grn")}))] > 0

        here.reset()
        disposable_redis_server.pause()  # accepts connections, never answers
        samples = scrape(app)  # status() asks Redis nothing: no wait here
        disposable_redis_server.resume()
        disposable_redis_server.kill()
        here.call(ok)
        assert storage_up(scrape(app)) == 0

        disposable_redis_server.start()
        deadline = time.monotonic() + 30
        while storage_up(scrape(app)) != 1:
            assert time.monotonic() < deadline, "storage_up never came back"
            here.call(ok)
            time.sleep(0.2)
    finally:
        ours.close()
        theirs.close()

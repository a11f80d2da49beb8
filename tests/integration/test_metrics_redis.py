"""gennet_sync.metrics with a real redis-server: the fleet's state, the storage
gauge through a kill and a restart, and a scrape that does not wait on a hung Redis."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

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


def test_storage_up_falls_with_redis_killed_while_the_service_is_idle(
    app: Flask,
    disposable_redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="gennet_sync")  # Redis down is logged: expected
    monkeypatch.setattr(metrics, "_flush_interval", 0.2)
    storage = RedisStorage(
        disposable_redis_server.url, prefix=f"idle:{uuid.uuid4().hex[:8]}", sync_interval=0.5
    )
    try:
        grn = CircuitBreaker(2, 30.0, name="grn", storage=storage)
        grn.call(ok)
        app.test_client().get("/")  # the first request starts the flush thread
        assert storage_up(scrape(app)) == 1
        disposable_redis_server.pause()  # hung: the flush thread waits, a scrape does not
        scrape(app)
        disposable_redis_server.resume()
        disposable_redis_server.kill()  # and no call is made from here on
        deadline = time.monotonic() + 30
        while storage_up(scrape(app)) != 0:
            assert time.monotonic() < deadline, "storage_up stayed 1 with Redis gone"
            time.sleep(0.2)
        disposable_redis_server.start()
        while storage_up(scrape(app)) != 1:
            assert time.monotonic() < deadline + 30, "storage_up never came back"
            time.sleep(0.2)
    finally:
        metrics._stop_flusher()
        storage.close()


# One worker of a multiprocess service: trips the fleet (A) or resets it (B).
_FLEET_WORKER = """
import pathlib, sys, time
from flask import Flask
from gennet_sync import CircuitBreaker, metrics
from gennet_sync.redis_storage import RedisStorage

url, prefix, role, signals = sys.argv[1:5]
signals = pathlib.Path(signals)
now = [1000.0]
metrics.Metrics(Flask("worker"))
storage = RedisStorage(url, prefix=prefix, sync_interval=0.0)
grn = CircuitBreaker(1, 30.0, name="grn", storage=storage, clock=lambda: now[0])
if role == "A":
    try:
        grn.call(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    metrics.flush()  # fleet: open, as Redis said
    (signals / "a-tripped").touch()
    deadline = time.monotonic() + 30
    while not (signals / "b-reset").exists():
        assert time.monotonic() < deadline, "B never reset the fleet"
        time.sleep(0.05)
    now[0] += 31  # idle: its own timer takes it OPEN -> HALF_OPEN, Redis is not asked
    metrics.flush()
else:
    grn.reset()
    grn.call(lambda: None)  # asks Redis: the fleet is CLOSED
    metrics.flush()
    (signals / "b-reset").touch()
storage.close()
"""


def test_the_fleet_state_shown_is_the_storages_newest_answer(
    disposable_redis_server: RedisServer, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    signals = tmp_path / "signals"
    signals.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    prefix = f"fleet:{uuid.uuid4().hex[:8]}"

    def worker(role: str) -> subprocess.Popen[str]:
        arguments = [disposable_redis_server.url, prefix, role, str(signals)]
        return subprocess.Popen(
            [sys.executable, "-c", _FLEET_WORKER, *arguments], env=env, text=True
        )

    first = worker("A")
    deadline = time.monotonic() + 30
    while not (signals / "a-tripped").exists():
        assert time.monotonic() < deadline and first.poll() is None, "A did not trip the fleet"
        time.sleep(0.05)
    assert worker("B").wait(timeout=30) == 0
    assert first.wait(timeout=30) == 0
    # Both processes have exited but were never marked dead: read as gunicorn
    # would while they are alive.
    found = subprocess.run(
        [sys.executable, "-c", _READ_FLEET],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert found == ["closed"], found


_READ_FLEET = """
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
registry = CollectorRegistry()
MultiProcessCollector(registry)
for family in registry.collect():
    for sample in family.samples:
        if sample.name == "gennet_breaker_fleet_state" and sample.value == 1:
            print(sample.labels["state"])
"""

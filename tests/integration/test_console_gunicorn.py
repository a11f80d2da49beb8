"""The console and the readiness probe of the workflow example under real gunicorn
(2 workers) with a real Redis: once the fleet's breaker is open, every worker says
so, also a worker that made no call since; killing Redis shows in both views."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from examples.launcher import ServiceProcess
from tests.support.redis_server import RedisServer
from tests.support.redis_workers import closed_port

pytestmark = pytest.mark.integration

STORAGE_OPTIONS = "sync_interval=0.1&retry_backoff=0.2&max_retry_backoff=0.5&socket_timeout=1"


def fresh_get(url: str, **headers: str) -> requests.Response:
    # A new connection each time, so gunicorn may hand it to either worker.
    return requests.get(url, headers={"Connection": "close", **headers}, timeout=10)


def every_worker(url: str, workers: int = 2, **headers: str) -> dict[int, Any]:
    """One answer per worker: JSON bodies by the pid that answered (the console's ``pid``)."""
    answers: dict[int, Any] = {}
    deadline = time.monotonic() + 60
    while len(answers) < workers:
        assert time.monotonic() < deadline, f"only workers {sorted(answers)} answered"
        body = fresh_get(url, **headers).json()
        answers[body["pid"]] = body
    return answers


def test_every_worker_shows_the_fleets_open_breaker(
    disposable_redis_server: RedisServer, tmp_path: Path
) -> None:
    service = ServiceProcess(
        "workflow",
        "examples.workflow_service:create_app()",
        tmp_path,
        workers=2,
        threads=2,
        env={
            "GENNET_BREAKER_STORAGE": f"{disposable_redis_server.url}?{STORAGE_OPTIONS}",
            "QUALITATIVE_URL": f"http://127.0.0.1:{closed_port()}",
            "QUALITATIVE_SERVICE_NAME": "qualitative",
            "CIRCUIT_BREAKER_THRESHOLD": "2",
            "CIRCUIT_BREAKER_TIMEOUT": "300",
        },
    )
    with service:
        service.wait_ready(timeout=60)
        console = f"{service.base_url}/gennet/breakers"
        closed = every_worker(console)
        assert all(body["breakers"][0]["state"] == "closed" for body in closed.values())

        # Two refused calls open the fleet's breaker (on whichever workers ran them).
        for _ in range(2):
            verify = requests.post(
                f"{service.base_url}/api/v1/workflows/verify", json={}, timeout=10
            )
            assert verify.status_code == 503
        time.sleep(0.2)  # past sync_interval: an idle worker's next view syncs
        for pid, body in every_worker(console).items():
            (breaker,) = body["breakers"]
            assert (breaker["state"], breaker["fleet_state"]) == ("open", "open"), pid
            assert breaker["storage_up"] is True
            assert 200 < breaker["retry_in"] <= 300
        for _ in range(4):
            ready = fresh_get(f"{service.base_url}/health/ready")
            assert ready.status_code == 200  # not critical: only a warning
            assert ready.json()["checks"]["qualitative:circuitBreaker"][0]["status"] == "warn"

        disposable_redis_server.kill()
        time.sleep(0.2)
        for pid, body in every_worker(console).items():
            assert body["breakers"][0]["storage_up"] is False, pid
            assert body["breakers"][0]["fleet_state"] == "open", pid  # the last answer
        ready = fresh_get(f"{service.base_url}/health/ready")
        assert ready.status_code == 200
        (storage,) = ready.json()["checks"]["breakerStorage:responseTime"]
        assert storage["status"] == "warn"

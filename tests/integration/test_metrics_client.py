"""ServiceSession's series against a real HTTP server on 127.0.0.1: retries, a
redirect counted as one call, a refused connection, and a streamed error body left
unread."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
import requests
from flask import Flask, redirect
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.wrappers import Response

from examples.launcher import free_port
from gennet_sync import ServiceSession, http_client, metrics
from gennet_sync.metrics import Metrics
from tests.support.servers import serve_app

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def exporter() -> Iterator[Flask]:
    registry = CollectorRegistry()
    app = Flask("client_metrics")
    Metrics(app, registry=registry)
    yield app
    http_client.call_observer = None
    metrics._series = {k: v for k, v in metrics._series.items() if v.registry is not registry}
    metrics._all_series = tuple(metrics._series.values())


@pytest.fixture
def downstream() -> Iterator[str]:
    app = Flask("downstream")
    flaky = itertools.count()

    @app.get("/flaky")
    def flaky_view() -> tuple[dict[str, str], int]:
        # Every third call succeeds: two 503s, then a 200.
        return ({"ok": "yes"}, 200) if next(flaky) % 3 == 2 else ({"error": "busy"}, 503)

    @app.get("/moved")
    def moved() -> Response:
        return redirect("/ok")

    @app.get("/ok")
    def ok() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/big-error")
    def big_error() -> tuple[dict[str, object], int]:
        envelope = {"code": "HUGE", "type": "X", "message": "m", "metadata": {}}
        return {"error": envelope}, 500

    with serve_app(app) as url:
        yield url


def scrape(app: Flask) -> Samples:
    text = app.test_client().get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_retries_redirects_refusals_and_streams(exporter: Flask, downstream: str) -> None:
    # Names no other test uses: a breaker another test made may still be alive
    # (not yet collected) and is counted by the series under its name.
    down, gone = f"down-{uuid.uuid4().hex[:8]}", f"gone-{uuid.uuid4().hex[:8]}"
    session = ServiceSession(
        base_url=downstream, service_name=down, retries=2, circuit_breaker_threshold=50
    )
    for _ in range(2):
        assert session.get("/flaky").status_code == 200  # after two retries each
    assert session.get("/moved").status_code == 200
    with session.get("/big-error", stream=True) as streamed:
        assert streamed.status_code == 500
    refused = ServiceSession(
        base_url=f"http://127.0.0.1:{free_port()}", service_name=gone, retries=0
    )
    with pytest.raises(requests.ConnectionError):
        refused.get("/x")
    samples = scrape(exporter)
    assert value(samples, "gennet_client_retries_total", service=down) == 4
    total = "gennet_client_requests_total"
    assert (
        value(samples, total, service=down, method="GET", status="200") == 3
    )  # a redirect is one call
    assert value(samples, total, service=down, method="GET", status="500") == 1
    assert value(samples, total, service=gone, method="GET", status="ConnectionError") == 1
    # The streamed body was the caller's to read: no code taken from it.
    assert (
        value(samples, "gennet_client_downstream_errors_total", service=down, code="HUGE") is None
    )
    assert value(samples, "gennet_breaker_calls_total", breaker=down, outcome="success") == 3
    assert value(samples, "gennet_breaker_calls_total", breaker=down, outcome="failure") == 1

"""gennet_sync.metrics in one process: every series with its exact value, read back
from ``GET /metrics`` with prometheus-client's own parser."""

from __future__ import annotations

import enum
import gc
import importlib.util
import math
import random
import re
import string
import sys
import threading
import weakref
from collections import deque
from collections.abc import Iterator

import pytest
import requests
import responses
from flask import Flask, Response, request
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from prometheus_flask_exporter import PrometheusMetrics

from gennet_sync import (
    CircuitBreaker,
    CircuitBreakerError,
    GenNet,
    NotFoundError,
    ServiceSession,
    ServiceUnavailableError,
    ValidationError,
    get_circuit_breaker,
    http_client,
    metrics,
)
from gennet_sync.circuit_breaker import remove_circuit_breaker
from gennet_sync.metrics import OTHER, UNMATCHED_ROUTE, Metrics
from gennet_sync.openapi import OpenAPI
from tests.support.clock import FakeClock

# The module itself: the package attribute of that name is the decorator.
circuit_breaker_module = importlib.import_module("gennet_sync.circuit_breaker")

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

EPOCH = 1_790_000_000.0


@pytest.fixture(autouse=True)
def _no_observer_left() -> Iterator[None]:
    yield
    http_client.call_observer = None
    # The tests' own registries go; the default registry's series stay registered
    # in it (an example app of another test may have made them).
    for key, series in list(metrics._series.items()):
        if series.registry is not REGISTRY:
            del metrics._series[key]
    metrics._all_series = tuple(metrics._series.values())


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def no_flush_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The flush thread never copies: only a scrape (or ``flush()``) does."""
    metrics._stop_flusher()
    monkeypatch.setattr(metrics, "_flush_interval", 3600.0)
    yield
    metrics._stop_flusher()


def make_app(registry: CollectorRegistry, **config: object) -> Flask:
    app = Flask("metrics_app")
    app.config.update(config)
    GenNet(app)
    Metrics(app, registry=registry)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise NotFoundError("item", "0")
        if item_id == 1:
            raise ValidationError("bad item 1")
        return {"id": item_id}

    return app


def scrape(app: Flask, path: str = "/metrics") -> Samples:
    response = app.test_client().get(path)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series_of(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (sample, labels) in samples if sample == name]


def test_requests_are_counted_by_method_url_rule_and_status(registry: CollectorRegistry) -> None:
    app = make_app(registry)
    client = app.test_client()
    for _ in range(3):
        client.get("/items/7")
    client.get("/items/8")
    client.post("/items/7")  # 405
    samples = scrape(app)
    route = "/items/<int:item_id>"
    assert (
        value(samples, "gennet_http_requests_total", method="GET", route=route, status="200") == 4
    )
    assert (
        value(
            samples,
            "gennet_http_requests_total",
            method="POST",
            route=UNMATCHED_ROUTE,
            status="405",
        )
        == 1
    )
    count = "gennet_http_request_duration_seconds_count"
    assert value(samples, count, method="GET", route=route) == 4
    seconds = value(samples, "gennet_http_request_duration_seconds_sum", method="GET", route=route)
    assert seconds is not None and seconds > 0


def test_every_error_envelope_is_counted_with_its_code(registry: CollectorRegistry) -> None:
    app = make_app(registry)
    client = app.test_client()
    client.get("/items/0")
    client.get("/items/0")
    client.get("/items/1")
    client.get("/no/such/page")
    samples = scrape(app)
    route = "/items/<int:item_id>"
    errors = "gennet_http_errors_total"
    assert value(samples, errors, code="NOT_FOUND", status="404", method="GET", route=route) == 2
    assert (
        value(samples, errors, code="VALIDATION_ERROR", status="422", method="GET", route=route)
        == 1
    )
    assert (
        value(samples, errors, code="NOT_FOUND", status="404", method="GET", route=UNMATCHED_ROUTE)
        == 1
    )
    # Successes are not errors.
    assert not [s for s in series_of(samples, errors) if s["status"] == "200"]


def test_the_metrics_endpoint_is_not_counted_and_not_in_openapi(
    registry: CollectorRegistry,
) -> None:
    app = make_app(registry)
    OpenAPI(app, title="t", version="1")
    for _ in range(3):
        scrape(app)
    samples = scrape(app)
    routes = {s["route"] for s in series_of(samples, "gennet_http_requests_total")}
    assert "/metrics" not in routes
    document = app.test_client().get("/openapi.json").get_json()
    assert "/metrics" not in document["paths"]
    assert "/items/{item_id}" in document["paths"]


def test_a_scan_of_random_paths_and_methods_adds_no_series(registry: CollectorRegistry) -> None:
    app = make_app(registry)
    client = app.test_client()
    chars = string.ascii_letters + string.digits + "%._-~"
    rng = random.Random(14)
    for _ in range(500):
        path = "/" + "/".join(
            "".join(rng.choice(chars) for _ in range(rng.randint(1, 12))) for _ in range(3)
        )
        method = rng.choice(["GET", "POST", "PROPFIND", "X" + str(rng.randint(0, 10**6))])
        client.open(path, method=method)
    samples = scrape(app)
    requests_series = series_of(samples, "gennet_http_requests_total")
    assert {s["route"] for s in requests_series} == {UNMATCHED_ROUTE}
    assert {s["method"] for s in requests_series} <= {"GET", "POST", OTHER}
    assert len(samples) < 200  # a handful of series, not one per path


def test_metrics_path_and_auth_callback(registry: CollectorRegistry) -> None:
    app = Flask("secured")
    app.config["GENNET_METRICS_PATH"] = "/internal/metrics"
    Metrics(app, registry=registry, auth=lambda request: request.headers.get("X-Token") == "s3")
    client = app.test_client()
    refused = client.get("/internal/metrics")
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "UNAUTHORIZED"
    assert client.get("/metrics").status_code == 404
    allowed = client.get("/internal/metrics", headers={"X-Token": "s3"})
    assert allowed.status_code == 200
    assert allowed.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "gennet_http_requests_total" in allowed.text


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(registry: CollectorRegistry) -> None:
    app = make_app(registry)
    app.test_client().get("/items/3")
    response = app.test_client().get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_genet_metrics_keyword_switches_them_on_once(registry: CollectorRegistry) -> None:
    app = Flask("keyword")
    GenNet(app, metrics=True)
    GenNet(app, metrics=True)  # a second setup changes nothing
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert "gennet_http_requests_total" in response.text
    plain = Flask("plain")
    GenNet(plain)
    assert plain.test_client().get("/metrics").status_code == 404


def test_a_second_metrics_instance_on_one_app_is_refused(registry: CollectorRegistry) -> None:
    app = make_app(registry)
    with pytest.raises(RuntimeError, match="already has a Metrics"):
        Metrics(app, registry=registry)


def test_a_path_another_view_answers_is_refused(registry: CollectorRegistry) -> None:
    app = Flask("taken")
    app.add_url_rule("/metrics", "theirs", lambda: "theirs")
    with pytest.raises(ValueError, match="GENNET_METRICS_PATH"):
        Metrics(app, registry=registry)


def test_coexists_with_prometheus_flask_exporter(registry: CollectorRegistry) -> None:
    app = Flask("both")
    exporter = PrometheusMetrics(app, registry=registry, path="/exporter-metrics")
    Metrics(app, registry=registry)

    @app.get("/ping")
    def ping() -> str:
        return "pong"

    for _ in range(2):
        app.test_client().get("/ping")
    ours = scrape(app)
    theirs = scrape(app, "/exporter-metrics")
    assert value(ours, "gennet_http_requests_total", method="GET", route="/ping", status="200") == 2
    assert (
        value(theirs, "gennet_http_requests_total", method="GET", route="/ping", status="200") == 2
    )
    # prometheus_flask_exporter's own series, on both endpoints.
    duration = "flask_http_request_duration_seconds_count"
    for samples in (ours, theirs):
        assert value(samples, duration, method="GET", path="/ping", status="200") == 2
    assert exporter is not None


def test_a_failing_metric_never_breaks_the_request(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(registry)

    def broken(*args: object) -> None:
        raise RuntimeError("metrics backend broken")

    monkeypatch.setattr(metrics._Series, "observe_request", broken)
    monkeypatch.setattr(metrics._Series, "flush_breakers", broken)
    response = app.test_client().get("/items/5")
    assert response.status_code == 200
    assert response.get_json() == {"id": 5}
    assert app.test_client().get("/metrics").status_code == 200


# -- breakers -----------------------------------------------------------------------------


def breaker(
    clock: FakeClock, wall: FakeClock, name: str = "grn", **options: object
) -> CircuitBreaker:
    return CircuitBreaker(name=name, clock=clock, wall_clock=wall, **options)  # type: ignore[arg-type]


def fail(target: CircuitBreaker) -> None:
    with pytest.raises(ZeroDivisionError):
        target.call(lambda: 1 / 0)


def test_breaker_counters_are_exported_as_they_are(
    registry: CollectorRegistry, clock: FakeClock
) -> None:
    app = make_app(registry)
    wall = FakeClock(EPOCH)
    grn = breaker(clock, wall, failure_threshold=2, recovery_timeout=30, slow_call_duration=5)
    for _ in range(3):
        grn.call(lambda: None)
    permit = grn.acquire()
    clock.advance(6)  # a slow success
    permit.success()
    grn.acquire().ignore()
    fail(grn)
    fail(grn)  # opens
    for _ in range(4):
        with pytest.raises(CircuitBreakerError):
            grn.call(lambda: None)
    samples = scrape(app)
    calls = "gennet_breaker_calls_total"
    assert value(samples, calls, breaker="grn", outcome="success") == 4
    assert value(samples, calls, breaker="grn", outcome="failure") == 2
    assert value(samples, calls, breaker="grn", outcome="ignored") == 1
    assert value(samples, calls, breaker="grn", outcome="rejected") == 4
    assert value(samples, "gennet_breaker_slow_calls_total", breaker="grn") == 1
    transitions = "gennet_breaker_transitions_total"
    assert value(samples, transitions, breaker="grn", from_state="closed", to_state="open") == 1
    assert value(samples, "gennet_breaker_state", breaker="grn", state="open") == 1
    assert value(samples, "gennet_breaker_state", breaker="grn", state="closed") == 0
    assert value(samples, "gennet_breaker_state", breaker="grn", state="half_open") == 0
    # Scraped again with nothing new: the same totals, not twice them.
    again = scrape(app)
    assert value(again, calls, breaker="grn", outcome="success") == 4
    assert value(again, transitions, breaker="grn", from_state="closed", to_state="open") == 1


def test_an_idle_open_breaker_shows_the_wall_clock_time_of_its_next_trial(
    registry: CollectorRegistry, clock: FakeClock
) -> None:
    app = make_app(registry)
    wall = FakeClock(EPOCH)
    grn = breaker(clock, wall, failure_threshold=1, recovery_timeout=30)
    fail(grn)
    retry_at = "gennet_breaker_retry_at_seconds"
    assert value(scrape(app), retry_at, breaker="grn") == pytest.approx(EPOCH + 30)
    clock.advance(20)
    wall.advance(20)
    assert value(scrape(app), retry_at, breaker="grn") == pytest.approx(EPOCH + 30)
    clock.advance(11)
    wall.advance(11)
    samples = scrape(app)  # past it: HALF_OPEN, no trial scheduled
    assert value(samples, retry_at, breaker="grn") == 0
    assert value(samples, "gennet_breaker_state", breaker="grn", state="half_open") == 1
    transitions = "gennet_breaker_transitions_total"
    assert value(samples, transitions, breaker="grn", from_state="open", to_state="half_open") == 1


def test_transitions_between_two_copies_are_all_counted(
    registry: CollectorRegistry, clock: FakeClock
) -> None:
    app = make_app(registry)
    wall = FakeClock(EPOCH)
    grn = breaker(clock, wall, failure_threshold=1, recovery_timeout=1)
    for _ in range(5):  # CLOSED -> OPEN -> HALF_OPEN -> CLOSED, five times
        fail(grn)
        clock.advance(1)
        wall.advance(1)
        grn.call(lambda: None)
    samples = scrape(app)
    transitions = "gennet_breaker_transitions_total"
    for old, new in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
        assert value(samples, transitions, breaker="grn", from_state=old, to_state=new) == 5


def test_a_breaker_made_again_with_the_same_name_adds_to_its_totals(
    registry: CollectorRegistry, clock: FakeClock
) -> None:
    app = make_app(registry)
    wall = FakeClock(EPOCH)
    first = breaker(clock, wall)
    first.call(lambda: None)
    scrape(app)
    second = breaker(clock, wall)
    second.call(lambda: None)
    second.call(lambda: None)
    samples = scrape(app)
    assert value(samples, "gennet_breaker_calls_total", breaker="grn", outcome="success") == 3
    assert first is not second


def test_no_storage_gauge_without_a_shared_storage(
    registry: CollectorRegistry, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only this test's breaker is alive in the process: a breaker with a shared
    # storage that an earlier test still holds would rightly add the gauge.
    monkeypatch.setattr(circuit_breaker_module, "_live_breakers", weakref.WeakSet())
    app = make_app(registry)
    breaker(clock, FakeClock(EPOCH)).call(lambda: None)
    samples = scrape(app)
    assert not series_of(samples, "gennet_breaker_storage_up")
    assert not series_of(samples, "gennet_breaker_fleet_state")


# -- ServiceSession -------------------------------------------------------------------------


@responses.activate
def test_client_calls_are_counted_by_service_method_and_status(registry: CollectorRegistry) -> None:
    # The downstream's own code is not one of this library's: declared to be exported.
    app = make_app(registry, GENNET_METRICS_EXTRA_CODES=["NETWORK_NOT_FOUND"])
    base = "http://grn.test"
    responses.get(f"{base}/ok", json={"fine": True})
    responses.get(
        f"{base}/missing",
        status=404,
        json={
            "error": {
                "code": "NETWORK_NOT_FOUND",
                "type": "NotFoundError",
                "message": "no",
                "metadata": {},
            }
        },
    )
    responses.get(f"{base}/html", status=502, body="<html>bad gateway</html>")
    responses.get(f"{base}/down", body=requests.ConnectionError("refused"))
    session = ServiceSession(
        base_url=base, service_name="grn", retries=0, circuit_breaker_threshold=50
    )
    for _ in range(3):
        session.get("/ok")
    session.get("/missing")
    session.get("/html")
    with pytest.raises(requests.ConnectionError):
        session.get("/down")
    strict = ServiceSession(
        base_url=base,
        service_name="grn",
        retries=0,
        raise_errors=True,
        circuit_breaker_threshold=50,
    )
    with pytest.raises(NotFoundError):
        strict.get("/missing")
    with pytest.raises(ServiceUnavailableError):  # and a requests.ConnectionError
        strict.get("/down")
    samples = scrape(app)
    total = "gennet_client_requests_total"
    assert value(samples, total, service="grn", method="GET", status="200") == 3
    assert value(samples, total, service="grn", method="GET", status="404") == 2
    assert value(samples, total, service="grn", method="GET", status="502") == 1
    # The same error type with and without raise_errors.
    assert value(samples, total, service="grn", method="GET", status="ConnectionError") == 2
    downstream = "gennet_client_downstream_errors_total"
    assert value(samples, downstream, service="grn", code="NETWORK_NOT_FOUND") == 2
    # No envelope: the code raise_errors would raise (a 502 is a ServiceUnavailableError).
    assert value(samples, downstream, service="grn", code="SERVICE_UNAVAILABLE") == 1
    count = "gennet_client_request_duration_seconds_count"
    assert value(samples, count, service="grn", method="GET") == 8


@responses.activate
def test_a_refused_call_is_counted_with_its_error_type(registry: CollectorRegistry) -> None:
    app = make_app(registry)
    responses.get("http://qual.test/x", status=503)
    session = ServiceSession(
        base_url="http://qual.test", service_name="qual", retries=0, circuit_breaker_threshold=1
    )
    session.get("/x")
    with pytest.raises(CircuitBreakerError):
        session.get("/x")
    samples = scrape(app)
    total = "gennet_client_requests_total"
    assert value(samples, total, service="qual", method="GET", status="503") == 1
    assert value(samples, total, service="qual", method="GET", status="CircuitBreakerError") == 1
    assert value(samples, "gennet_breaker_calls_total", breaker="qual", outcome="rejected") == 1


@responses.activate
def test_hostile_downstream_codes_do_not_grow_the_series(registry: CollectorRegistry) -> None:
    app = make_app(registry)
    base = "http://liar.test"
    session = ServiceSession(
        base_url=base, service_name="liar", retries=0, use_circuit_breaker=False
    )
    for n in range(400):
        code = f"CODE_{n}" if n % 2 else f"<script>{n}</script>"
        responses.get(
            f"{base}/e{n}",
            status=500,
            json={"error": {"code": code, "type": "X", "message": "m", "metadata": {}}},
        )
        session.get(f"/e{n}")
    samples = scrape(app)
    codes = {s["code"] for s in series_of(samples, "gennet_client_downstream_errors_total")}
    assert OTHER in codes
    assert len(codes) <= metrics._MAX_LABEL_VALUES + 1
    assert not any("<script>" in code for code in codes)
    total = sum(
        v for (name, _), v in samples.items() if name == "gennet_client_downstream_errors_total"
    )
    assert total == 400


@responses.activate
def test_a_call_a_hook_makes_is_counted_and_a_redirect_is_part_of_its_call(
    registry: CollectorRegistry,
) -> None:
    app = make_app(registry)
    base = "http://hooked.test"
    responses.get(f"{base}/moved", status=302, headers={"Location": f"{base}/item"})
    responses.get(f"{base}/item", json={"token": "stale"})
    responses.get(f"{base}/token", json={"token": "fresh"})
    session = ServiceSession(base_url=base, service_name="hooked", retries=0)

    def refresh(response: requests.Response, **kwargs: object) -> None:
        if response.request.path_url == "/item":  # a call of the hook's own
            session.get("/token")

    session.hooks["response"].append(refresh)
    session.get("/moved")
    samples = scrape(app)
    total = "gennet_client_requests_total"
    # The redirected call once (its last answer), the hook's call once.
    assert value(samples, total, service="hooked", method="GET", status="200") == 2
    count = "gennet_client_request_duration_seconds_count"
    assert value(samples, count, service="hooked", method="GET") == 2


@responses.activate
def test_a_session_subclass_overriding_send_runs_it_once(registry: CollectorRegistry) -> None:
    make_app(registry)
    responses.get("http://sub.test/x", json={})
    sent: list[str] = []

    class Logged(ServiceSession):
        def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
            sent.append(request.url or "")
            return super().send(request, **kwargs)

    Logged(base_url="http://sub.test").get("/x")
    assert sent == ["http://sub.test/x"]


def test_a_breaker_made_per_request_cannot_grow_the_series_past_the_cap(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics, "_MAX_BREAKERS", 50)
    app = make_app(registry)
    made = [CircuitBreaker(name=f"per-request-{n}") for n in range(80)]
    for each in made:
        each.call(lambda: None)
    samples = scrape(app)
    names = {s["breaker"] for s in series_of(samples, "gennet_breaker_calls_total")}
    # Other tests' breakers still alive may share names: at most 50, never all 80.
    assert 0 < len(names) <= 50
    assert "more than 50 names" in caplog.text


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    spec = importlib.util.spec_from_file_location("metrics_without_extra", metrics.__file__)
    assert spec is not None and spec.loader is not None
    with pytest.raises(ImportError, match=r"pip install 'gennet_sync\[prometheus\]'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


# -- bounded labels across recycled workers, gone breakers, forks ---------------------------


@responses.activate
def test_junk_codes_never_crowd_out_the_services_own_codes(registry: CollectorRegistry) -> None:
    app = make_app(registry)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("bug")

    @app.get("/relay/<code>")
    def relay(code: str) -> str:
        # A view re-raising a downstream's code: the code is the caller's text.
        raise ServiceUnavailableError("downstream said no", code=code)

    base = "http://evil.test"
    session = ServiceSession(base_url=base, service_name="evil", retries=0)
    for n in range(300):
        responses.get(
            f"{base}/x{n}",
            status=400,
            json={"error": {"code": f"JUNK_{n}", "type": "X", "message": "x"}},
        )
        session.get(f"/x{n}")
    client = app.test_client()
    for n in range(300):
        client.get(f"/relay/ATTACK_{n}")
    client.get("/relay/NOT_FOUND")
    client.get("/boom")
    samples = scrape(app)
    errors = "gennet_http_errors_total"
    own = {s["code"] for s in series_of(samples, errors)}
    assert own == {OTHER, "NOT_FOUND", "INTERNAL_SERVER_ERROR"}
    assert (
        value(
            samples, errors, code="INTERNAL_SERVER_ERROR", status="500", method="GET", route="/boom"
        )
        == 1
    )
    downstream = {s["code"] for s in series_of(samples, "gennet_client_downstream_errors_total")}
    assert downstream == {OTHER}


def test_an_apps_own_exception_class_defined_late_keeps_its_code(
    registry: CollectorRegistry,
) -> None:
    app = make_app(registry)
    late: list[type[ServiceUnavailableError]] = []

    @app.get("/quota")
    def quota() -> str:
        raise late[0]("no quota")

    app.test_client().get("/items/0")  # the known codes are looked up once already

    class QuotaGone(ServiceUnavailableError):
        code = "QUOTA_GONE"

    late.append(QuotaGone)
    app.test_client().get("/quota")
    codes = {s["code"] for s in series_of(scrape(app), "gennet_http_errors_total")}
    assert "QUOTA_GONE" in codes


def test_extra_codes_must_be_codes(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="GENNET_METRICS_EXTRA_CODES"):
        make_app(registry, GENNET_METRICS_EXTRA_CODES=["<script>"])


def test_a_gone_breakers_gauges_are_removed_and_its_counters_kept(
    registry: CollectorRegistry, clock: FakeClock
) -> None:
    app = make_app(registry)
    grn = get_circuit_breaker("old-host:80")
    grn.call(lambda: None)
    grn.open()
    samples = scrape(app)
    assert value(samples, "gennet_breaker_state", breaker="old-host:80", state="open") == 1
    remove_circuit_breaker("old-host:80")
    del grn
    gc.collect()
    samples = scrape(app)
    assert not [
        s for s in series_of(samples, "gennet_breaker_state") if s["breaker"] == "old-host:80"
    ]
    assert not [
        s
        for s in series_of(samples, "gennet_breaker_retry_at_seconds")
        if s["breaker"] == "old-host:80"
    ]
    calls = "gennet_breaker_calls_total"
    assert value(samples, calls, breaker="old-host:80", outcome="success") == 1
    # Made again: its gauges are back.
    again = get_circuit_breaker("old-host:80")
    samples = scrape(app)
    assert value(samples, "gennet_breaker_state", breaker="old-host:80", state="closed") == 1
    assert again.name == "old-host:80"


def test_breaker_names_ever_exported_are_capped_and_checked(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics, "_MAX_BREAKERS", 30)
    app = make_app(registry)
    for round_ in range(5):  # breakers made per request, gone by the next scrape
        made = [CircuitBreaker(name=f"per-request-{round_}-{n}") for n in range(20)]
        for each in made:
            each.call(lambda: None)
        scrape(app)
        del made, each
        gc.collect()
    odd = CircuitBreaker(name="x" * 200)
    odd.call(lambda: None)
    odd2 = CircuitBreaker(name="http://host/with spaces")
    odd2.call(lambda: None)
    samples = scrape(app)
    names = {s["breaker"] for s in series_of(samples, "gennet_breaker_calls_total")}
    assert 0 < len(names) <= 30
    assert all(len(name) <= 128 and " " not in name for name in names)
    assert "not exported to the metrics" in caplog.text


def test_a_forked_child_does_not_export_its_parents_counts_again(
    registry: CollectorRegistry, clock: FakeClock
) -> None:
    # The fork hooks, run in this process: what a gunicorn worker forked from a
    # preloaded master runs (tests/integration/test_metrics_gunicorn.py runs it for real).
    app = make_app(registry)
    wall = FakeClock(EPOCH)
    boot = breaker(clock, wall, name="boot", failure_threshold=1)
    fail(boot)  # made and opened before the fork, never scraped
    metrics._flush_before_fork()
    metrics._reinit_after_fork()
    samples = scrape(app)
    calls = "gennet_breaker_calls_total"
    assert value(samples, calls, breaker="boot", outcome="failure") == 1
    transitions = "gennet_breaker_transitions_total"
    assert value(samples, transitions, breaker="boot", from_state="closed", to_state="open") == 1
    metrics._reinit_after_fork()  # a second worker forked
    clock.advance(1)
    boot.reset()
    boot.call(lambda: None)
    samples = scrape(app)
    assert value(samples, calls, breaker="boot", outcome="failure") == 1
    assert value(samples, calls, breaker="boot", outcome="success") == 1
    assert value(samples, "gennet_breaker_state", breaker="boot", state="closed") == 1


def test_a_path_added_after_init_is_reported_at_the_first_request(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(registry)

    @app.get("/metrics", endpoint="other_metrics")
    def other() -> str:
        return "theirs"

    app.test_client().get("/items/3")
    assert "'other_metrics' also answers GET /metrics" in caplog.text


def test_the_first_request_is_checked_when_an_earlier_app_hook_answers_it(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask("gated_app")
    GenNet(app)

    @app.before_request
    def gate() -> tuple[str, int] | None:  # answers before the metrics' own step
        return ("who are you?", 401) if "X-Auth" not in request.headers else None

    Metrics(app, registry=registry)

    @app.get("/metrics", endpoint="other_metrics")
    def other() -> str:
        return "theirs"

    client = app.test_client()
    assert client.get("/items/3").status_code == 401
    assert caplog.text.count("'other_metrics' also answers GET /metrics") == 1
    client.get("/items/3", headers={"X-Auth": "yes"})
    assert caplog.text.count("'other_metrics' also answers GET /metrics") == 1  # once


def test_gunicorn_without_a_multiprocess_directory_is_reported(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(registry)
    app.test_client().get("/items/3", environ_base={"SERVER_SOFTWARE": "gunicorn/23.0.0"})
    assert "without PROMETHEUS_MULTIPROC_DIR" in caplog.text


# -- the tallies: requests and calls counted in process, copied by the flush ---------------


def bucket_counts(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    """The cumulative bucket counts of one histogram series, by ``le``."""
    found: dict[str, float] = {}
    for (sample, sample_labels), count in samples.items():
        tags = dict(sample_labels)
        le = tags.pop("le", None)
        if sample == f"{name}_bucket" and le is not None and tags == labels:
            found[le] = count
    return found


def test_requests_from_eight_threads_are_counted_exactly_while_copies_run(
    registry: CollectorRegistry,
) -> None:
    app = make_app(registry)
    threads_count, rounds = 8, 250
    done = threading.Event()

    def serve() -> None:
        client = app.test_client()
        for index in range(rounds):
            client.get("/items/0" if index % 5 == 0 else "/items/7")

    def copy_meanwhile() -> None:  # the flush thread and scrapes, as often as they can
        while not done.is_set():
            metrics.flush()

    copier = threading.Thread(target=copy_meanwhile)
    copier.start()
    workers = [threading.Thread(target=serve) for _ in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    done.set()
    copier.join(timeout=60)
    samples = scrape(app)
    route = "/items/<int:item_id>"
    ok, missing = threads_count * rounds * 4 // 5, threads_count * rounds // 5
    total = "gennet_http_requests_total"
    assert value(samples, total, method="GET", route=route, status="200") == ok
    assert value(samples, total, method="GET", route=route, status="404") == missing
    errors = "gennet_http_errors_total"
    assert value(samples, errors, code="NOT_FOUND", status="404", method="GET", route=route) == (
        missing
    )
    count = "gennet_http_request_duration_seconds_count"
    assert value(samples, count, method="GET", route=route) == ok + missing
    buckets = bucket_counts(
        samples, "gennet_http_request_duration_seconds", method="GET", route=route
    )
    assert buckets["+Inf"] == ok + missing


@pytest.mark.usefixtures("no_flush_thread")
def test_a_scrape_sees_every_request_before_it_without_waiting_for_the_flush_thread(
    registry: CollectorRegistry,
) -> None:
    app = make_app(registry)
    client = app.test_client()
    for _ in range(7):
        client.get("/items/9")
    client.get("/items/1")
    # Counted, not yet copied into prometheus-client's values...
    copied = registry.get_sample_value(
        "gennet_http_requests_total",
        {"method": "GET", "route": "/items/<int:item_id>", "status": "200"},
    )
    assert copied is None
    # ...which the scrape does before answering.
    samples = scrape(app)
    route = "/items/<int:item_id>"
    total = "gennet_http_requests_total"
    assert value(samples, total, method="GET", route=route, status="200") == 7
    assert value(samples, total, method="GET", route=route, status="422") == 1
    errors = "gennet_http_errors_total"
    assert (
        value(samples, errors, code="VALIDATION_ERROR", status="422", method="GET", route=route)
        == 1
    )


# Durations exact in binary, one on a bucket's bound (le is inclusive), one past the last.
DURATIONS = (0.00390625, 0.25, 0.375, 2.0, 12.0)
CUMULATIVE = {
    "0.005": 1.0,
    "0.01": 1.0,
    "0.025": 1.0,
    "0.05": 1.0,
    "0.075": 1.0,
    "0.1": 1.0,
    "0.25": 2.0,
    "0.5": 3.0,
    "0.75": 3.0,
    "1.0": 3.0,
    "2.5": 4.0,
    "5.0": 4.0,
    "7.5": 4.0,
    "10.0": 4.0,
    "+Inf": 5.0,
}


@responses.activate
def test_histogram_buckets_and_sums_are_exact(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(1024.0)
    monkeypatch.setattr(metrics, "perf_counter", clock)
    app = make_app(registry)

    @app.get("/wait/<int:index>")
    def wait(index: int) -> dict[str, int]:
        clock.advance(DURATIONS[index])
        return {"index": index}

    client = app.test_client()
    for index in range(len(DURATIONS)):
        assert client.get(f"/wait/{index}").status_code == 200

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        clock.advance(DURATIONS[int((request.url or "").rsplit("/", 1)[1])])
        return 200, {}, "{}"

    responses.add_callback(responses.GET, re.compile(r"http://timed\.test/\d"), callback=answer)
    session = ServiceSession(base_url="http://timed.test", service_name="timed", retries=0)
    for index in range(len(DURATIONS)):
        session.get(f"/{index}")
    samples = scrape(app)
    server = "gennet_http_request_duration_seconds"
    assert bucket_counts(samples, server, method="GET", route="/wait/<int:index>") == CUMULATIVE
    assert value(samples, f"{server}_sum", method="GET", route="/wait/<int:index>") == sum(
        DURATIONS
    )
    client_series = "gennet_client_request_duration_seconds"
    assert bucket_counts(samples, client_series, service="timed", method="GET") == CUMULATIVE
    assert value(samples, f"{client_series}_sum", service="timed", method="GET") == sum(DURATIONS)
    assert (
        value(samples, "gennet_client_requests_total", service="timed", method="GET", status="200")
        == 5
    )


def test_a_request_an_earlier_hook_answered_is_counted_but_not_timed(
    registry: CollectorRegistry,
) -> None:
    app = Flask("early")
    GenNet(app)

    @app.before_request
    def maintenance() -> tuple[str, int] | None:
        return ("down for maintenance", 503) if request.path == "/busy" else None

    Metrics(app, registry=registry)  # its step runs after the app's hook: skipped
    app.add_url_rule("/busy", "busy", lambda: "never")
    app.add_url_rule("/fine", "fine", lambda: "fine")
    client = app.test_client()
    assert client.get("/busy").status_code == 503
    assert client.get("/busy").status_code == 503
    assert client.get("/fine").status_code == 200
    samples = scrape(app)
    total = "gennet_http_requests_total"
    assert value(samples, total, method="GET", route="/busy", status="503") == 2
    assert value(samples, total, method="GET", route="/fine", status="200") == 1
    count = "gennet_http_request_duration_seconds_count"
    assert value(samples, count, method="GET", route="/fine") == 1
    assert not value(samples, count, method="GET", route="/busy")


def test_counting_that_fails_inside_the_step_leaves_the_response_and_is_logged(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(registry)

    class Broken:
        def append(self, item: object) -> None:
            raise RuntimeError("queue broken")

    # The counting step is bound at init_app: break what it calls, not the method.
    monkeypatch.setattr(metrics._series[id(registry)], "_http_pending", Broken())
    response = app.test_client().get("/items/5", headers={"X-Request-ID": "counted"})
    assert response.status_code == 200
    assert response.get_json() == {"id": 5}
    assert response.headers["X-Request-ID"] == "counted"
    assert "counting a request failed" in caplog.text
    assert "queue broken" in caplog.text


def test_a_copy_that_fails_is_logged_and_the_requests_go_on(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(registry)

    def broken() -> list[float]:
        raise RuntimeError("tally broken")

    monkeypatch.setattr(metrics, "_new_tally", broken)
    client = app.test_client()
    assert client.get("/items/5").status_code == 200
    metrics.flush()
    assert "copying the requests counted failed" in caplog.text
    assert "tally broken" in caplog.text
    assert client.get("/items/6").get_json() == {"id": 6}


@pytest.mark.usefixtures("no_flush_thread")
def test_requests_past_the_waiting_cap_are_counted_without_the_flush_thread(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "_MAX_PENDING", 10)
    app = make_app(registry)
    client = app.test_client()
    for index in range(25):
        assert client.get(f"/items/{index + 2}").status_code == 200
        # Never more than the cap wait in memory for a thread that is late.
        assert len(metrics._series[id(registry)]._http_pending) <= 10
    samples = scrape(app)
    route = "/items/<int:item_id>"
    assert (
        value(samples, "gennet_http_requests_total", method="GET", route=route, status="200") == 25
    )
    count = "gennet_http_request_duration_seconds_count"
    assert value(samples, count, method="GET", route=route) == 25


def test_an_error_code_set_by_hand_that_cannot_be_hashed_is_counted_as_other(
    registry: CollectorRegistry,
) -> None:
    app = make_app(registry)

    @app.after_request
    def odd_code(response: Response) -> Response:
        if response.status_code == 418:
            response.gennet_error_code = ["TEAPOT"]  # type: ignore[attr-defined]
        return response

    app.add_url_rule("/teapot", "teapot", lambda: ("short and stout", 418))
    client = app.test_client()
    for _ in range(3):
        assert client.get("/teapot").status_code == 418
    samples = scrape(app)
    errors = "gennet_http_errors_total"
    assert value(samples, errors, code=OTHER, status="418", method="GET", route="/teapot") == 3
    count = "gennet_http_request_duration_seconds_count"
    assert value(samples, count, method="GET", route="/teapot") == 3


@pytest.mark.parametrize("seed", range(5))
def test_durations_counted_together_fill_the_buckets_as_observing_each_does(
    seed: int, registry: CollectorRegistry
) -> None:
    chooser = random.Random(seed)
    bounds = [bound for bound in Histogram.DEFAULT_BUCKETS if bound != float("inf")]
    # Exactly on bounds, just either side of them, and anywhere up to past the last.
    durations = [
        chooser.choice(
            [
                chooser.choice(bounds),
                math.nextafter(chooser.choice(bounds), 0.0),
                math.nextafter(chooser.choice(bounds), math.inf),
                chooser.uniform(0.0, 15.0),
            ]
        )
        for _ in range(chooser.randrange(1, 400))
    ]
    histogram = Histogram("each", "observed one by one", registry=registry)
    for duration in durations:
        histogram.observe(duration)
    tally = metrics._new_tally()
    metrics._add_durations(tally, list(durations))
    together = Histogram("together", "counted together", registry=registry)
    metrics._add_observations(together, tally)
    for bucket in [*(str(bound) for bound in bounds), "+Inf"]:
        assert registry.get_sample_value("together_bucket", {"le": bucket}) == (
            registry.get_sample_value("each_bucket", {"le": bucket})
        ), bucket
    assert registry.get_sample_value("together_sum") == pytest.approx(
        registry.get_sample_value("each_sum"), rel=1e-12
    )


def test_a_failing_first_request_check_is_logged_and_the_request_still_timed(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(registry)

    def broken(self: Metrics, request: object) -> None:
        raise RuntimeError("check broken")

    monkeypatch.setattr(Metrics, "_check_served", broken)
    assert app.test_client().get("/items/5").status_code == 200
    assert "checking the app at its first request failed" in caplog.text
    samples = scrape(app)
    route = "/items/<int:item_id>"
    assert (
        value(samples, "gennet_http_request_duration_seconds_count", method="GET", route=route) == 1
    )


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no string for you")


class _Unhashable(str):
    def __hash__(self) -> int:
        raise ValueError("no hash for you")


@pytest.mark.parametrize("odd", [_Unprintable(), _Unhashable("NOT_FOUND")], ids=["str", "hash"])
def test_an_odd_error_code_set_by_hand_costs_no_other_request_its_count(
    registry: CollectorRegistry, odd: object
) -> None:
    app = make_app(registry)

    @app.after_request
    def odd_code(response: Response) -> Response:
        if response.status_code == 418:
            response.gennet_error_code = odd  # type: ignore[attr-defined]
        return response

    app.add_url_rule("/teapot", "teapot", lambda: ("short and stout", 418))
    client = app.test_client()
    for index in range(4):
        client.get(f"/items/{index + 2}")
    assert client.get("/teapot").status_code == 418
    client.get("/items/0")
    samples = scrape(app)
    total = "gennet_http_requests_total"
    route = "/items/<int:item_id>"
    assert value(samples, total, method="GET", route=route, status="200") == 4
    assert value(samples, total, method="GET", route=route, status="404") == 1
    assert value(samples, total, method="GET", route="/teapot", status="418") == 1
    errors = "gennet_http_errors_total"
    code = OTHER if isinstance(odd, _Unprintable) else "NOT_FOUND"
    assert value(samples, errors, code=code, status="418", method="GET", route="/teapot") == 1


def test_codes_equal_as_values_but_labelled_apart_are_counted_apart(
    registry: CollectorRegistry,
) -> None:
    class Code(str, enum.Enum):  # noqa: UP042 - str() of a StrEnum member is its value
        GONE = "NOT_FOUND"

    app = make_app(registry)

    @app.after_request
    def enum_code(response: Response) -> Response:
        if request.args.get("enum"):
            response.gennet_error_code = Code.GONE  # type: ignore[attr-defined]
        return response

    client = app.test_client()
    client.get("/items/0?enum=1")  # first in the queue: must not name the other
    client.get("/items/0")
    client.get("/items/0")
    samples = scrape(app)
    errors = "gennet_http_errors_total"
    route = "/items/<int:item_id>"
    assert value(samples, errors, code="NOT_FOUND", status="404", method="GET", route=route) == 2
    # str() of a str Enum member is "Code.GONE": no code this app defines.
    assert value(samples, errors, code=OTHER, status="404", method="GET", route=route) == 1


@pytest.mark.usefixtures("no_flush_thread")
def test_a_scrape_counts_what_a_request_over_the_cap_moves_while_it_copies(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "_MAX_PENDING", 2)
    app = make_app(registry)
    client = app.test_client()
    series = metrics._series[id(registry)]
    taken: list[object] = []

    class Busy(deque):  # type: ignore[type-arg]
        """The queue; its first ``popleft`` lets two more requests finish meanwhile."""

        def popleft(self) -> object:
            item = super().popleft()
            if not taken:
                taken.append(item)
                others = threading.Thread(target=lambda: [client.get("/items/7") for _ in range(2)])
                others.start()
                others.join(timeout=30)
            return item

    monkeypatch.setattr(series, "_http_pending", Busy())
    client.get("/items/5")
    client.get("/items/6")
    assert len(series._http_pending) == 2
    samples = scrape(app)
    assert taken  # the copy did meet the other requests
    route = "/items/<int:item_id>"
    # The two before the scrape, and the two the request over the cap counted.
    assert (
        value(samples, "gennet_http_requests_total", method="GET", route=route, status="200") == 4
    )


def test_a_duration_that_is_not_a_number_puts_no_other_in_the_wrong_bucket() -> None:
    durations = [3.0, math.nan, 0.001, 0.3, 0.005, 0.1]
    together = metrics._new_tally()
    metrics._add_durations(together, list(durations))
    each = metrics._new_tally()
    for duration in durations:
        metrics._add_durations(each, [duration])
    assert together[metrics._TIMED :] == each[metrics._TIMED :]
    # 3.0 s is above the 2.5 s bound and at most 5 s.
    assert together[metrics._TIMED + metrics._BOUNDS.index(5.0)] == 1

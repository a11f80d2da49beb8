"""gennet_sync.tracing with the SDK's in-memory exporter: server and client spans,
their attributes, breaker transitions as events, and nothing at all without an SDK."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from flask import Flask, jsonify, stream_with_context
from flask.testing import FlaskClient
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from werkzeug.test import EnvironBuilder

from gennet_sync import (
    NotFoundError,
    ServiceSession,
    ValidationError,
    setup_error_handlers,
)
from gennet_sync import tracing as gennet_tracing
from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError
from gennet_sync.log_config import TraceContextFilter
from tests.support.clock import FakeClock

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

DOWNSTREAM = "http://downstream:8000"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NOT_FOUND = {
    "error": {
        "code": "NOT_FOUND",
        "type": "NotFoundError",
        "message": "Network with id 'x' not found",
        "metadata": {"resource_type": "Network", "resource_id": "x"},
    }
}


@pytest.fixture
def no_sdk() -> Iterator[None]:
    reset_trace_globals()
    yield
    reset_trace_globals()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider set for this test, exporting to memory."""
    reset_trace_globals()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    reset_trace_globals()


def _of_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind is kind]


def _only(exporter: InMemorySpanExporter, kind: SpanKind) -> ReadableSpan:
    found = _of_kind(exporter, kind)
    assert len(found) == 1, found
    return found[0]


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


class _BufferedClient(FlaskClient):
    """A test client that reads the whole body, so the WSGI body is closed (span ended)."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def _session(**options: Any) -> ServiceSession:
    options.setdefault("service_name", "downstream")
    return ServiceSession(base_url=DOWNSTREAM, **options)


def _app() -> Flask:
    app = Flask(__name__)
    app.test_client_class = _BufferedClient
    setup_error_handlers(app)

    @app.get("/ok")
    def ok() -> Any:
        return jsonify({"ok": True})

    @app.get("/missing")
    def missing() -> Any:
        raise NotFoundError("Network", "x")

    @app.get("/invalid")
    def invalid() -> Any:
        raise ValidationError("bad formula", field="formula")

    @app.get("/crash")
    def crash() -> Any:
        raise RuntimeError("boom")

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[str]:
            yield "a"
            yield "b"

        return app.response_class(stream_with_context(chunks()))

    return app


# -- no SDK: nothing happens -------------------------------------------------------------


@responses.activate
def test_without_an_sdk_nothing_is_traced_or_injected(no_sdk: None) -> None:
    assert not gennet_tracing.tracing_enabled()
    responses.get(f"{DOWNSTREAM}/x", json={})
    _session().get("/x")
    headers = responses.calls[0].request.headers
    assert "traceparent" not in headers and "baggage" not in headers
    response = _app().test_client().get("/missing", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 404
    assert gennet_tracing.current_trace_ids() is None


def test_without_an_sdk_the_wsgi_body_is_the_apps_own(no_sdk: None) -> None:
    # no wrapper around the body: file_wrapper and friends keep working
    seen: list[object] = []
    body = [b"x"]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return body

    result = gennet_tracing.server_call(app, {}, lambda *args: seen.append(args), "id", object())
    assert result is body and seen


# -- server side -------------------------------------------------------------------------


def test_a_server_span_continues_the_callers_trace_with_the_request_id(
    spans: InMemorySpanExporter,
) -> None:
    response = (
        _app()
        .test_client()
        .get("/ok", headers={"traceparent": TRACEPARENT, "X-Request-ID": "req-1"})
    )
    assert response.status_code == 200
    span = _only(spans, SpanKind.SERVER)
    assert span.name == "GET /ok"
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    attributes = _attributes(span)
    assert attributes["gennet.request_id"] == "req-1"
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.route"] == "/ok"
    assert attributes["http.request.method"] == "GET"
    assert "error.type" not in attributes
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    ("path", "status", "type_", "code"),
    [
        ("/missing", 404, "NotFoundError", "NOT_FOUND"),
        ("/invalid", 422, "ValidationError", "VALIDATION_ERROR"),
        ("/nowhere", 404, "NotFound", "NOT_FOUND"),  # werkzeug's, no route
    ],
)
def test_a_4xx_envelope_is_on_the_span_without_an_error_status(
    spans: InMemorySpanExporter, path: str, status: int, type_: str, code: str
) -> None:
    assert _app().test_client().get(path).status_code == status
    span = _only(spans, SpanKind.SERVER)
    attributes = _attributes(span)
    assert attributes["error.type"] == type_
    assert attributes["gennet.error.code"] == code
    assert attributes["http.response.status_code"] == status
    assert span.status.status_code is StatusCode.UNSET  # the client's error, not ours
    assert not [event for event in span.events if event.name == "exception"]


def test_a_5xx_records_the_exception_and_sets_error_status(spans: InMemorySpanExporter) -> None:
    app = _app()
    assert app.test_client().get("/crash").status_code == 500
    span = _only(spans, SpanKind.SERVER)
    attributes = _attributes(span)
    assert attributes["error.type"] == "InternalServerError"
    assert attributes["gennet.error.code"] == "INTERNAL_SERVER_ERROR"
    assert span.status.status_code is StatusCode.ERROR
    (exception,) = [event for event in span.events if event.name == "exception"]
    assert (exception.attributes or {})["exception.type"] == "RuntimeError"
    assert (exception.attributes or {})["exception.message"] == "boom"


def test_a_streamed_body_ends_its_span_once_sent(spans: InMemorySpanExporter) -> None:
    response = _app().test_client().get("/stream", buffered=False)
    assert not _of_kind(spans, SpanKind.SERVER)  # still sending
    assert response.get_data() == b"ab"
    response.close()
    assert _only(spans, SpanKind.SERVER).name == "GET /stream"


def test_with_the_flask_instrumentation_there_is_one_server_span_it_is_theirs_enriched(
    spans: InMemorySpanExporter,
) -> None:
    app = _app()
    FlaskInstrumentor().instrument_app(app)  # type: ignore[no-untyped-call]
    try:
        client = app.test_client()
        assert client.get("/missing", headers={"X-Request-ID": "req-2"}).status_code == 404
        assert client.get("/crash").status_code == 500
    finally:
        FlaskInstrumentor().uninstrument_app(app)  # type: ignore[no-untyped-call]
    missing, crash = _of_kind(spans, SpanKind.SERVER)
    assert missing.instrumentation_scope is not None
    assert missing.instrumentation_scope.name == "opentelemetry.instrumentation.flask"
    assert _attributes(missing)["gennet.request_id"] == "req-2"
    assert _attributes(missing)["gennet.error.code"] == "NOT_FOUND"
    assert _attributes(missing)["error.type"] == "NotFoundError"
    assert _attributes(crash)["gennet.error.code"] == "INTERNAL_SERVER_ERROR"
    assert crash.status.status_code is StatusCode.ERROR
    assert [event.name for event in crash.events] == ["exception"]


# -- client side -------------------------------------------------------------------------


@responses.activate
def test_a_call_is_one_client_span_with_trace_context_and_request_id_injected(
    spans: InMemorySpanExporter,
) -> None:
    responses.get(f"{DOWNSTREAM}/networks", json={"networks": []})
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("parent") as parent:
        token = otel_context.attach(baggage.set_baggage("tenant", "t1"))
        try:
            _session().get("/networks", headers={"X-Request-ID": "req-3"})
        finally:
            otel_context.detach(token)
    client = _only(spans, SpanKind.CLIENT)
    assert client.parent is not None and client.parent.span_id == parent.get_span_context().span_id
    headers = responses.calls[0].request.headers
    context = client.context
    assert headers["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )
    assert headers["baggage"] == "tenant=t1"
    assert headers["X-Request-ID"] == "req-3"
    attributes = _attributes(client)
    assert attributes == {
        "http.request.method": "GET",
        "url.full": f"{DOWNSTREAM}/networks",
        "server.address": "downstream",
        "server.port": 8000,
        "gennet.breaker.name": "downstream",
        "gennet.breaker.state": "closed",
        "http.response.status_code": 200,
    }
    assert client.status.status_code is StatusCode.UNSET


@responses.activate
def test_credentials_never_reach_the_span(spans: InMemorySpanExporter) -> None:
    responses.get("http://user:secret@downstream:8000/x", json={})
    ServiceSession().get("http://user:secret@downstream:8000/x")
    url = _attributes(_only(spans, SpanKind.CLIENT))["url.full"]
    assert "secret" not in url and "user" not in url


@pytest.mark.parametrize("raise_errors", [False, True])
@responses.activate
def test_the_downstream_envelope_code_is_on_the_client_span(
    spans: InMemorySpanExporter, raise_errors: bool
) -> None:
    responses.get(f"{DOWNSTREAM}/networks/x", json=NOT_FOUND, status=404)
    session = _session(raise_errors=raise_errors)
    if raise_errors:
        with pytest.raises(NotFoundError):
            session.get("/networks/x")
    else:
        assert session.get("/networks/x").status_code == 404
    client = _only(spans, SpanKind.CLIENT)
    attributes = _attributes(client)
    assert attributes["gennet.downstream.error.code"] == "NOT_FOUND"
    assert attributes["error.type"] == "404"
    assert attributes["http.response.status_code"] == 404
    assert client.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("raise_errors", [False, True])
@responses.activate
def test_an_error_that_is_no_envelope_has_no_downstream_code(
    spans: InMemorySpanExporter, raise_errors: bool
) -> None:
    responses.get(f"{DOWNSTREAM}/x", body="<html>oops</html>", status=404)
    session = _session(raise_errors=raise_errors)
    if raise_errors:
        with pytest.raises(NotFoundError):
            session.get("/x")
    else:
        session.get("/x")
    attributes = _attributes(_only(spans, SpanKind.CLIENT))
    assert "gennet.downstream.error.code" not in attributes
    assert attributes["error.type"] == "404"


@responses.activate
def test_retries_are_inside_the_one_span_with_the_resend_count(
    spans: InMemorySpanExporter,
) -> None:
    responses.get(f"{DOWNSTREAM}/flaky", status=503)
    responses.get(f"{DOWNSTREAM}/flaky", status=503)
    responses.get(f"{DOWNSTREAM}/flaky", json={"ok": True})
    session = _session()
    session.retry.backoff_factor = 0  # no sleeping in a unit test
    assert session.get("/flaky").status_code == 200
    assert len(responses.calls) == 3
    client = _only(spans, SpanKind.CLIENT)
    assert _attributes(client)["http.request.resend_count"] == 2
    assert _attributes(client)["http.response.status_code"] == 200
    assert client.status.status_code is StatusCode.UNSET


@responses.activate
def test_redirects_are_inside_the_one_span_and_counted(spans: InMemorySpanExporter) -> None:
    responses.get(f"{DOWNSTREAM}/old", status=301, headers={"Location": f"{DOWNSTREAM}/new"})
    responses.get(f"{DOWNSTREAM}/new", json={})
    assert _session().get("/old").status_code == 200
    client = _only(spans, SpanKind.CLIENT)
    assert _attributes(client)["http.request.resend_count"] == 1
    # both hops carried the call's trace context
    assert (
        responses.calls[0].request.headers["traceparent"]
        == (responses.calls[1].request.headers["traceparent"])
    )


@responses.activate
def test_a_transport_failure_is_recorded_with_its_type(spans: InMemorySpanExporter) -> None:
    responses.get(f"{DOWNSTREAM}/x", body=requests.exceptions.ConnectionError("refused"))
    with pytest.raises(requests.exceptions.ConnectionError):
        _session(retries=0).get("/x")
    client = _only(spans, SpanKind.CLIENT)
    assert _attributes(client)["error.type"] == "ConnectionError"
    assert "gennet.downstream.error.code" not in _attributes(client)
    assert client.status.status_code is StatusCode.ERROR
    assert [event.name for event in client.events] == ["exception"]


@responses.activate
def test_the_call_that_opens_the_breaker_carries_the_transition_and_the_next_is_refused(
    spans: InMemorySpanExporter,
) -> None:
    responses.get(f"{DOWNSTREAM}/x", status=500)
    session = _session(circuit_breaker_threshold=2, retries=0)
    session.get("/x")
    session.get("/x")
    with pytest.raises(CircuitBreakerError):
        session.get("/x")
    assert len(responses.calls) == 2  # the refused call sent nothing
    first, tripping, refused = _of_kind(spans, SpanKind.CLIENT)
    assert not first.events
    (event,) = tripping.events
    assert event.name == "gennet.breaker.state_change"
    assert dict(event.attributes or {}) == {
        "gennet.breaker.name": "downstream",
        "gennet.breaker.previous_state": "closed",
        "gennet.breaker.state": "open",
        "gennet.breaker.transition_reason": "failure_threshold",
    }
    assert _attributes(tripping)["gennet.breaker.state"] == "open"
    attributes = _attributes(refused)
    assert attributes["error.type"] == "CircuitBreakerError"
    assert attributes["gennet.breaker.state"] == "open"
    assert "http.response.status_code" not in attributes
    assert refused.status.status_code is StatusCode.ERROR


@responses.activate
def test_a_half_open_trial_shows_both_transitions(spans: InMemorySpanExporter) -> None:
    clock = FakeClock()
    responses.get(f"{DOWNSTREAM}/x", status=500)
    session = _session(
        circuit_breaker_threshold=1,
        circuit_breaker_timeout=10,
        circuit_breaker_config={"clock": clock},
        retries=0,
    )
    session.get("/x")
    responses.replace(responses.GET, f"{DOWNSTREAM}/x", json={})
    clock.advance(11)
    session.get("/x")
    trial = _of_kind(spans, SpanKind.CLIENT)[-1]
    moves = [
        (
            (event.attributes or {})["gennet.breaker.previous_state"],
            (event.attributes or {})["gennet.breaker.state"],
            (event.attributes or {})["gennet.breaker.transition_reason"],
        )
        for event in trial.events
    ]
    assert moves == [
        ("open", "half_open", "recovery_timeout"),
        ("half_open", "closed", "trial_succeeded"),
    ]
    assert _attributes(trial)["gennet.breaker.state"] == "closed"


def test_under_threads_a_transition_lands_on_the_span_of_the_thread_that_caused_it(
    spans: InMemorySpanExporter,
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, name="threads")
    gennet_tracing.instrument_breaker(breaker)
    tracer = trace.get_tracer("test")
    both_inside = threading.Barrier(2)

    def succeed() -> None:
        with tracer.start_as_current_span("bystander"):
            both_inside.wait(5)
            with breaker:
                pass
            both_inside.wait(5)

    def fail() -> None:
        with tracer.start_as_current_span("culprit"):
            both_inside.wait(5)
            both_inside.wait(5)
            with pytest.raises(RuntimeError), breaker:
                raise RuntimeError("down")

    threads = [threading.Thread(target=succeed), threading.Thread(target=fail)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    by_name = {span.name: span for span in spans.get_finished_spans()}
    assert not by_name["bystander"].events
    assert [event.name for event in by_name["culprit"].events] == ["gennet.breaker.state_change"]


@responses.activate
def test_with_the_requests_instrumentation_there_is_one_client_span(
    spans: InMemorySpanExporter,
) -> None:
    responses.get(f"{DOWNSTREAM}/old", status=302, headers={"Location": f"{DOWNSTREAM}/new"})
    responses.get(f"{DOWNSTREAM}/new", json={})
    RequestsInstrumentor().instrument()
    try:
        _session().get("/old")
        requests.Session().get(f"{DOWNSTREAM}/new")  # a plain session: theirs, as before
    finally:
        RequestsInstrumentor().uninstrument()
    ours, theirs = _of_kind(spans, SpanKind.CLIENT)
    assert ours.instrumentation_scope is not None
    assert ours.instrumentation_scope.name == "gennet_sync"
    assert theirs.instrumentation_scope is not None
    assert theirs.instrumentation_scope.name == "opentelemetry.instrumentation.requests"
    # the header the downstream sees names our span, not one of theirs
    assert responses.calls[1].request.headers["traceparent"].split("-")[2] == (
        f"{ours.context.span_id:016x}"
    )


# -- across two services -----------------------------------------------------------------


@responses.activate
def test_a_call_through_two_apps_is_one_trace(spans: InMemorySpanExporter) -> None:
    downstream = _app()
    upstream = Flask("upstream")
    upstream.test_client_class = _BufferedClient
    setup_error_handlers(upstream)
    session = _session(raise_errors=True)

    @upstream.get("/front")
    def front() -> Any:
        return session.get("/missing").json()

    def forward(request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        answer = downstream.test_client().get("/missing", headers=dict(request.headers))
        return answer.status_code, {"Content-Type": answer.content_type}, answer.get_data()

    responses.add_callback(responses.GET, f"{DOWNSTREAM}/missing", callback=forward)
    assert upstream.test_client().get("/front").status_code == 404
    inner, outer = _of_kind(spans, SpanKind.SERVER)
    client = _only(spans, SpanKind.CLIENT)
    assert inner.context.trace_id == client.context.trace_id == outer.context.trace_id
    assert client.parent is not None and client.parent.span_id == outer.context.span_id
    assert inner.parent is not None and inner.parent.span_id == client.context.span_id
    assert _attributes(client)["gennet.downstream.error.code"] == "NOT_FOUND"
    assert _attributes(outer)["gennet.error.code"] == "NOT_FOUND"
    assert _attributes(inner)["gennet.request_id"] == _attributes(outer)["gennet.request_id"]


# -- the SDK per process -----------------------------------------------------------------


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: object) -> None:
        self.lines.append(message % args)


class _Server:
    def __init__(self) -> None:
        self.log = _Log()


class _Worker:
    pid = 4242


@pytest.fixture
def unconfigured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (
        "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(gennet_tracing, "_configured", None)
    reset_trace_globals()
    yield
    gennet_tracing.shutdown_tracing()
    reset_trace_globals()


def test_configure_tracing_sets_up_the_sdk_once_with_the_service_and_instance(
    unconfigured: None,
) -> None:
    exporter = InMemorySpanExporter()
    assert gennet_tracing.configure_tracing("svc", exporter=exporter, instance_id="svc-1")
    assert not gennet_tracing.configure_tracing("svc", exporter=exporter)  # once per process
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "svc"
    assert provider.resource.attributes["service.instance.id"] == "svc-1"
    with trace.get_tracer("test").start_as_current_span("work"):
        pass
    gennet_tracing.shutdown_tracing()  # exports what is queued
    assert [span.name for span in exporter.get_finished_spans()] == ["work"]


def test_configure_tracing_does_nothing_without_an_endpoint_or_when_disabled(
    unconfigured: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not gennet_tracing.configure_tracing("svc")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not gennet_tracing.configure_tracing("svc", exporter=InMemorySpanExporter())
    assert not gennet_tracing.tracing_enabled()


def test_the_gunicorn_hook_sets_up_otlp_per_worker_named_by_the_service(
    unconfigured: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("GENNET_SERVICE_NAME", "workflow-service")
    server = _Server()
    gennet_tracing.gunicorn_post_fork(server, _Worker())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    attributes = provider.resource.attributes
    assert attributes["service.name"] == "workflow-service"
    assert "-4242-" in str(attributes["service.instance.id"])
    assert server.log.lines == ["worker 4242: tracing to http://127.0.0.1:4318"]
    gennet_tracing.gunicorn_worker_exit(server, _Worker())
    assert gennet_tracing._configured is None


class _StuckExporter(InMemorySpanExporter):
    """An exporter whose export waits until it is shut down (a collector retried)."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = threading.Event()

    def export(self, spans: Any) -> Any:
        self.stopped.wait(30)
        return super().export(spans)

    def shutdown(self) -> None:
        self.stopped.set()
        super().shutdown()


def test_shutdown_gives_up_on_an_export_that_does_not_end(unconfigured: None) -> None:
    exporter = _StuckExporter()
    gennet_tracing.configure_tracing("svc", exporter=exporter)
    with trace.get_tracer("test").start_as_current_span("work"):
        pass
    stopping = threading.Thread(target=gennet_tracing.shutdown_tracing, args=(0.05,))
    stopping.start()
    stopping.join(10)  # the stuck export alone would take 30 s
    assert not stopping.is_alive()
    assert exporter.stopped.is_set()


@pytest.mark.parametrize(
    "traceparent",
    ["garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "00-" + "a" * 10_000, "\x00\x7f"],
)
def test_a_hostile_traceparent_starts_a_new_trace(
    spans: InMemorySpanExporter, traceparent: str
) -> None:
    response = _app().test_client().get("/ok", headers={"traceparent": traceparent})
    assert response.status_code == 200
    span = _only(spans, SpanKind.SERVER)
    assert span.parent is None
    assert span.context.trace_id != 0


@responses.activate
def test_the_callers_hooks_and_prepared_request_are_left_as_they_were(
    spans: InMemorySpanExporter,
) -> None:
    responses.get(f"{DOWNSTREAM}/x", json={})
    seen: list[int] = []
    session = _session()
    prepared = session.prepare_request(
        requests.Request(
            "GET", "/x", hooks={"response": [lambda r, **_: seen.append(r.status_code)]}
        )
    )
    hooks = prepared.hooks
    for _ in range(2):  # a prepared request sent twice gathers nothing
        session.send(prepared)
    assert seen == [200, 200]
    assert prepared.hooks is hooks and len(hooks["response"]) == 1
    assert len(_of_kind(spans, SpanKind.CLIENT)) == 2


@responses.activate
def test_without_opentelemetry_installed_every_hook_is_a_no_op(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gennet_tracing, "otel_trace", None)  # as when the import failed
    responses.get(f"{DOWNSTREAM}/x", json={})
    _session().get("/x")
    assert _app().test_client().get("/missing").status_code == 404
    assert not gennet_tracing.tracing_enabled()
    assert gennet_tracing.current_trace_ids() is None
    assert "traceparent" not in responses.calls[0].request.headers
    assert not spans.get_finished_spans()


def test_configure_tracing_leaves_a_provider_set_before_it(
    unconfigured: None, caplog: pytest.LogCaptureFixture
) -> None:
    theirs = TracerProvider()
    trace.set_tracer_provider(theirs)
    assert not gennet_tracing.configure_tracing("svc", exporter=InMemorySpanExporter())
    assert trace.get_tracer_provider() is theirs
    assert "already set" in caplog.text


def test_a_url_that_does_not_parse_leaves_no_password_on_the_span() -> None:
    attributes = gennet_tracing._url_attributes("http://user:secret@host:99999999/x")
    assert "secret" not in str(attributes)


class _ServerFileWrapper:
    """A server's wsgi.file_wrapper, as gunicorn's: ``close`` set on the instance."""

    def __init__(self, file: io.BytesIO) -> None:
        self.file = file
        self.close = file.close

    def __iter__(self) -> Iterator[bytes]:
        return iter([self.file.read()])


def test_a_file_response_keeps_the_servers_file_wrapper_and_ends_its_span_on_close(
    spans: InMemorySpanExporter,
) -> None:
    file = io.BytesIO(b"x")
    body = _ServerFileWrapper(file)

    def app(environ: dict[str, Any], start_response: Any) -> _ServerFileWrapper:
        start_response("200 OK", [])
        return body

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/file",
        "wsgi.file_wrapper": _ServerFileWrapper,
    }
    result = gennet_tracing.server_call(app, environ, lambda *args: None, "id", object())
    assert result is body  # the server can still sendfile() it
    assert not spans.get_finished_spans()
    body.close()
    assert file.closed
    assert _only(spans, SpanKind.SERVER).name == "GET"


# -- secrets of signed URLs --------------------------------------------------------------

SIGNED_QUERY = "AWSAccessKeyId=AKIA1&Signature=s3cret1&sig=s3cret2&X-Goog-Signature=s3cret3"
SIGV4_QUERY = (
    "X-Amz-Credential=AKIA1%2F20261129&X-Amz-Security-Token=s3cret4&X-Amz-Signature=s3cret5"
)


def _no_secret(text: object) -> None:
    assert "s3cret" not in str(text) and "AKIA1" not in str(text), text


@responses.activate
def test_signed_url_secrets_never_reach_the_client_span(spans: InMemorySpanExporter) -> None:
    responses.get(f"{DOWNSTREAM}/blob", json={})
    _session().get(f"/blob?{SIGNED_QUERY}&part=2")
    _session().get(f"/blob?X-Amz-Algorithm=AWS4-HMAC-SHA256&{SIGV4_QUERY}")
    signed, sigv4 = (_attributes(span)["url.full"] for span in _of_kind(spans, SpanKind.CLIENT))
    assert signed == (
        f"{DOWNSTREAM}/blob?AWSAccessKeyId=REDACTED&Signature=REDACTED"
        "&sig=REDACTED&X-Goog-Signature=REDACTED&part=2"
    )
    assert sigv4 == (
        f"{DOWNSTREAM}/blob?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED"
        "&X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED"
    )


@responses.activate
def test_signed_url_secrets_never_reach_a_recorded_exception(
    spans: InMemorySpanExporter,
) -> None:
    # requests quotes the URL it failed on in the exception's message.
    failure = requests.exceptions.ConnectionError(
        f"HTTPConnectionPool(host='downstream', port=8000): Max retries exceeded with url:"
        f" /blob?{SIGNED_QUERY} (Caused by NewConnectionError('refused'))"
    )
    responses.get(f"{DOWNSTREAM}/blob", body=failure)
    with pytest.raises(requests.exceptions.ConnectionError):
        _session(retries=0).get(f"/blob?{SIGNED_QUERY}")
    client = _only(spans, SpanKind.CLIENT)
    (event,) = client.events
    attributes = dict(event.attributes or {})
    assert "Signature=REDACTED" in str(attributes["exception.message"])
    _no_secret(attributes["exception.message"])
    _no_secret(attributes["exception.stacktrace"])
    _no_secret(client.status.description)
    _no_secret(_attributes(client))


def test_signed_url_secrets_never_reach_the_server_span(spans: InMemorySpanExporter) -> None:
    app = _app()

    @app.get("/fetch")
    def fetch() -> Any:
        raise RuntimeError(f"could not read https://bucket.example/o?{SIGNED_QUERY}")

    assert app.test_client().get(f"/ok?{SIGNED_QUERY}&page=1").status_code == 200
    assert app.test_client().get("/fetch").status_code == 500
    ok, crashed = _of_kind(spans, SpanKind.SERVER)
    assert _attributes(ok)["url.query"] == (
        "AWSAccessKeyId=REDACTED&Signature=REDACTED&sig=REDACTED&X-Goog-Signature=REDACTED&page=1"
    )
    (event,) = crashed.events
    _no_secret(dict(event.attributes or {}))


# -- a span made elsewhere ---------------------------------------------------------------


def _unsampled_span_middleware(app: Flask) -> trace.SpanContext:
    """A WSGI middleware around ``app`` whose sampler dropped its server span."""
    outer = trace.SpanContext(
        trace_id=0x5B8EFFF798038103D269B633813FC60C,
        span_id=0x051581BF3CB55C13,
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),  # not sampled
    )
    inner = app.wsgi_app

    def middleware(environ: dict[str, Any], start_response: Any) -> Any:
        with trace.use_span(trace.NonRecordingSpan(outer)):
            return inner(environ, start_response)

    app.wsgi_app = middleware  # type: ignore[method-assign]
    return outer


def test_an_outer_middlewares_unsampled_span_is_not_replaced_by_a_root_of_ours(
    spans: InMemorySpanExporter,
) -> None:
    app = _app()
    outer = _unsampled_span_middleware(app)
    seen: list[tuple[str, str] | None] = []

    @app.get("/ids")
    def ids() -> Any:
        seen.append(gennet_tracing.current_trace_ids())
        return jsonify({})

    assert app.test_client().get("/ids").status_code == 200
    assert app.test_client().get("/ok").status_code == 200
    assert not _of_kind(spans, SpanKind.SERVER)  # the middleware chose no span
    assert seen == [(f"{outer.trace_id:032x}", f"{outer.span_id:016x}")]


def test_a_callers_context_a_middleware_only_attached_gets_our_server_span(
    spans: InMemorySpanExporter,
) -> None:
    app = _app()
    inner = app.wsgi_app

    def middleware(environ: dict[str, Any], start_response: Any) -> Any:
        token = otel_context.attach(propagate.extract({"traceparent": TRACEPARENT}))
        try:
            return inner(environ, start_response)
        finally:
            otel_context.detach(token)

    app.wsgi_app = middleware  # type: ignore[method-assign]
    assert app.test_client().get("/ok", headers={"traceparent": TRACEPARENT}).status_code == 200
    server = _only(spans, SpanKind.SERVER)
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name == "gennet_sync"
    assert f"{server.context.trace_id:032x}" == TRACEPARENT.split("-")[1]


# -- the request's span while its body is sent -------------------------------------------


class _Records(logging.Handler):
    """Keeps the records it is given, with the trace IDs the filter put on them."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(TraceContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@responses.activate
def test_a_call_and_a_log_line_in_a_streamed_body_belong_to_the_requests_trace(
    spans: InMemorySpanExporter, records: _Records
) -> None:
    responses.get(f"{DOWNSTREAM}/part", json={})
    app = _app()
    session = _session()

    @app.get("/parts")
    def parts() -> Any:
        def chunks() -> Iterator[str]:
            yield "a"
            session.get("/part")
            logging.getLogger("view").warning("inside the streamed body")
            yield "b"

        return app.response_class(stream_with_context(chunks()))

    assert app.test_client().get("/parts").get_data() == b"ab"
    server = _only(spans, SpanKind.SERVER)
    client = _only(spans, SpanKind.CLIENT)
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    (record,) = [record for record in records.records if record.name == "view"]
    assert record.trace_id == f"{server.context.trace_id:032x}"  # type: ignore[attr-defined]


def test_the_error_line_of_a_request_that_escaped_flask_has_its_trace_ids(
    spans: InMemorySpanExporter, records: _Records
) -> None:
    app = _app()
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.teardown_request
    def fail(_error: BaseException | None) -> None:
        raise RuntimeError("database session would not close")

    statuses: list[str] = []

    def start_response(status: str, *_: Any) -> Any:
        statuses.append(status)

    # Called directly: the test client re-raises the exc_info of a second start_response.
    body = app(EnvironBuilder(path="/ok").get_environ(), start_response)
    b"".join(body)
    getattr(body, "close", lambda: None)()
    assert statuses[-1].startswith("500")
    server = _only(spans, SpanKind.SERVER)
    (record,) = [record for record in records.records if record.levelno == logging.ERROR]
    assert "escaped Flask" in record.getMessage()
    assert record.trace_id == f"{server.context.trace_id:032x}"  # type: ignore[attr-defined]
    assert record.span_id == f"{server.context.span_id:016x}"  # type: ignore[attr-defined]


# -- semantic conventions ----------------------------------------------------------------


def test_a_method_the_conventions_do_not_name_is_http_with_the_original_kept(
    spans: InMemorySpanExporter,
) -> None:
    app = _app()

    @app.route("/cache/<key>", methods=["PURGE"])
    def purge(key: str) -> Any:
        return jsonify({})

    assert app.test_client().open("/cache/k", method="PURGE").status_code == 200
    server = _only(spans, SpanKind.SERVER)
    assert server.name == "HTTP /cache/<key>"
    assert _attributes(server)["http.request.method"] == "_OTHER"
    assert _attributes(server)["http.request.method_original"] == "PURGE"


@responses.activate
def test_a_call_with_a_method_the_conventions_do_not_name_is_named_http(
    spans: InMemorySpanExporter,
) -> None:
    responses.add("PURGE", f"{DOWNSTREAM}/cache/k", json={})
    _session().request("PURGE", "/cache/k")
    client = _only(spans, SpanKind.CLIENT)
    assert client.name == "HTTP"
    assert _attributes(client)["http.request.method_original"] == "PURGE"


@pytest.mark.parametrize(
    ("host", "address", "port"),
    [("[::1]:8000", "::1", 8000), ("[2001:db8::1]", "2001:db8::1", None), ("svc:81", "svc", 81)],
)
def test_the_host_header_gives_the_server_address_and_port(
    spans: InMemorySpanExporter, host: str, address: str, port: int | None
) -> None:
    assert _app().test_client().get("/ok", headers={"Host": host}).status_code == 200
    attributes = _attributes(_only(spans, SpanKind.SERVER))
    assert attributes["server.address"] == address
    assert attributes.get("server.port") == port


def test_an_app_mounted_under_a_prefix_has_the_whole_path(spans: InMemorySpanExporter) -> None:
    client = _app().test_client()
    assert client.get("/ok", base_url="http://localhost/api/v2").status_code == 200
    assert _attributes(_only(spans, SpanKind.SERVER))["url.path"] == "/api/v2/ok"


def test_a_body_that_fails_while_it_is_sent_fails_the_span(spans: InMemorySpanExporter) -> None:
    app = _app()

    @app.get("/rows")
    def rows() -> Any:
        def chunks() -> Iterator[str]:
            yield "a"
            raise ConnectionResetError("the database went away")

        return app.response_class(chunks())

    with pytest.raises(ConnectionResetError):
        app.test_client().get("/rows")
    server = _only(spans, SpanKind.SERVER)
    assert server.status.status_code is StatusCode.ERROR
    assert _attributes(server)["error.type"] == "ConnectionResetError"
    (event,) = server.events
    assert (event.attributes or {})["exception.message"] == "the database went away"


# -- baggage from callers ----------------------------------------------------------------


@responses.activate
def test_with_the_trace_context_propagator_only_a_callers_baggage_is_not_forwarded(
    spans: InMemorySpanExporter,
) -> None:
    # What OTEL_PROPAGATORS=tracecontext sets up (docs/tracing.md, Baggage from callers).
    responses.get(f"{DOWNSTREAM}/x", json={})
    app = _app()
    session = _session()

    @app.get("/forward")
    def forward() -> Any:
        session.get("/x")
        return jsonify({})

    incoming = {"traceparent": TRACEPARENT, "baggage": "user.password=hunter2"}
    default = propagate.get_global_textmap()
    try:
        assert app.test_client().get("/forward", headers=incoming).status_code == 200
        propagate.set_global_textmap(TraceContextTextMapPropagator())
        assert app.test_client().get("/forward", headers=incoming).status_code == 200
    finally:
        propagate.set_global_textmap(default)
    forwarded, kept_out = (call.request.headers for call in responses.calls)
    assert forwarded["baggage"] == "user.password=hunter2"  # the default propagators
    assert "baggage" not in kept_out
    assert kept_out["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]

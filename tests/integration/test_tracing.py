"""Tracing end to end: the example services under gunicorn, exporting OTLP/HTTP.

The workflow and qualitative services run under real gunicorn with
``examples/gunicorn.conf.py`` (the SDK set up per worker after fork) and export
their spans to a receiver this test runs on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals

from examples.launcher import ServiceProcess, free_port
from examples.trace_receiver import OTLPReceiver, ReceivedSpan
from gennet_sync import ServiceSession

OSCILLATOR = {"nodes": {"a": "!b", "b": "a"}}
VERIFY = "/api/v1/workflows/verify"
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as running:
        yield running


def _tracing_env(receiver: OTLPReceiver) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within a tenth of a second
    }


@pytest.fixture
def services(
    receiver: OTLPReceiver, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    qualitative = ServiceProcess(
        "qualitative-service",
        "examples.qualitative_service:create_app()",
        tmp_path,
        workers=2,
        env=_tracing_env(receiver),
    )
    workflow = ServiceProcess(
        "workflow-service",
        "examples.workflow_service:create_app()",
        tmp_path,
        workers=1,  # one breaker, so the test knows when it opens
        env={
            **_tracing_env(receiver),
            "QUALITATIVE_URL": qualitative.base_url,
            "CIRCUIT_BREAKER_THRESHOLD": "2",
            "CIRCUIT_BREAKER_TIMEOUT": "60",
        },
    )
    with qualitative, workflow:
        yield workflow, qualitative


def _of_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.trace_id == trace_id]


def _server_span_for(spans: list[ReceivedSpan], request_id: str) -> ReceivedSpan | None:
    """The workflow service's server span for the request (the downstream's has its ID too)."""
    for span in spans:
        if (
            span.service == "workflow-service"
            and span.kind == SPAN_KIND_SERVER
            and span.attributes.get("gennet.request_id") == request_id
        ):
            return span
    return None


def _log_lines(service: ServiceProcess) -> list[dict[str, object]]:
    lines = []
    for line in service.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_one_request_is_one_trace_across_both_services_with_the_downstream_code(
    services: tuple[ServiceProcess, ServiceProcess], receiver: OTLPReceiver
) -> None:
    workflow, qualitative = services
    response = requests.post(
        f"{workflow.base_url}{VERIFY}",
        json={"network": OSCILLATOR, "formula": "AG(a -> zz)"},
        headers={"X-Request-ID": "trace-e2e-1"},
        timeout=30,
    )
    assert response.status_code == 422

    def whole_trace(spans: list[ReceivedSpan]) -> bool:
        root = _server_span_for(spans, "trace-e2e-1")
        return root is not None and len(_of_trace(spans, root.trace_id)) >= 3

    spans = receiver.wait_for(whole_trace)
    root = _server_span_for(spans, "trace-e2e-1")
    assert root is not None
    trace = _of_trace(spans, root.trace_id)
    by_service = {(span.service, span.kind): span for span in trace}
    assert set(by_service) == {
        ("workflow-service", SPAN_KIND_SERVER),
        ("workflow-service", SPAN_KIND_CLIENT),
        ("qualitative-service", SPAN_KIND_SERVER),
    }
    client = by_service["workflow-service", SPAN_KIND_CLIENT]
    downstream = by_service["qualitative-service", SPAN_KIND_SERVER]
    # server -> client -> the downstream's server, one trace ID
    assert client.parent_span_id == root.span_id
    assert downstream.parent_span_id == client.span_id
    assert client.attributes["gennet.downstream.error.code"] == "VALIDATION_ERROR"
    assert client.attributes["http.response.status_code"] == 422
    assert client.attributes["gennet.breaker.state"] == "closed"
    assert downstream.attributes["gennet.error.code"] == "VALIDATION_ERROR"
    assert downstream.attributes["gennet.request_id"] == "trace-e2e-1"  # forwarded too
    assert root.attributes["http.route"] == VERIFY
    # the SDK was set up in the worker that served, after the fork: never the master
    for span, service in ((root, workflow), (downstream, qualitative)):
        assert span.pid not in (0, service.pid)
        assert f"-{span.pid}-" in span.instance
    # 4xx: the client's mistake, not the server's
    assert STATUS_ERROR not in (root.status_code, downstream.status_code)

    # the access log line of that request joins it to the trace
    logged = [line for line in _log_lines(workflow) if line.get("request_id") == "trace-e2e-1"]
    assert logged
    assert {line["trace_id"] for line in logged} == {root.trace_id}
    assert all(line["service"] == "workflow-service" for line in logged)
    assert all(line["level"] and line["message"] for line in logged)


def test_a_refused_call_shows_the_breaker_in_the_trace(
    services: tuple[ServiceProcess, ServiceProcess], receiver: OTLPReceiver
) -> None:
    workflow, qualitative = services
    qualitative.stop()
    body = {"network": OSCILLATOR, "formula": "a"}
    answers = []
    for number in range(3):
        response = requests.post(
            f"{workflow.base_url}{VERIFY}",
            json=body,
            headers={"X-Request-ID": f"trace-refused-{number}"},
            timeout=30,
        )
        answers.append((response.status_code, response.json()["error"]["type"]))
    assert answers[2] == (503, "CircuitBreakerError")

    def refused_trace(spans: list[ReceivedSpan]) -> bool:
        root = _server_span_for(spans, "trace-refused-2")
        tripped = _server_span_for(spans, "trace-refused-1")
        return (
            root is not None
            and tripped is not None
            and len(_of_trace(spans, root.trace_id)) >= 2
            and len(_of_trace(spans, tripped.trace_id)) >= 2
        )

    spans = receiver.wait_for(refused_trace)
    root = _server_span_for(spans, "trace-refused-2")
    assert root is not None
    (client,) = [span for span in _of_trace(spans, root.trace_id) if span.kind == SPAN_KIND_CLIENT]
    assert client.attributes["error.type"] == "CircuitBreakerError"
    assert client.attributes["gennet.breaker.state"] == "open"
    assert client.attributes["gennet.breaker.name"] == "qualitative-service"
    assert "http.response.status_code" not in client.attributes  # nothing was sent
    assert client.status_code == STATUS_ERROR
    assert root.attributes["error.type"] == "CircuitBreakerError"
    assert root.attributes["gennet.error.code"] == "SERVICE_UNAVAILABLE"
    assert root.status_code == STATUS_ERROR

    # the call that opened the breaker carries the transition
    tripped = _server_span_for(spans, "trace-refused-1")
    assert tripped is not None
    (tripping,) = [
        span for span in _of_trace(spans, tripped.trace_id) if span.kind == SPAN_KIND_CLIENT
    ]
    changes = [attrs for name, attrs in tripping.events if name == "gennet.breaker.state_change"]
    assert changes == [
        {
            "gennet.breaker.name": "qualitative-service",
            "gennet.breaker.previous_state": "closed",
            "gennet.breaker.state": "open",
            "gennet.breaker.transition_reason": "failure_threshold",
        }
    ]
    assert tripping.attributes["http.request.resend_count"] == 2  # the session's retries


def test_a_collector_that_is_down_costs_the_requests_nothing(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    service = ServiceProcess(
        "qualitative-service",
        "examples.qualitative_service:create_app()",
        tmp_path,
        workers=1,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": nowhere, "OTEL_BSP_SCHEDULE_DELAY": "50"},
    )
    with service:
        for _ in range(20):
            started = time.monotonic()
            response = requests.post(
                f"{service.base_url}/ctl/verify",
                json={"network": OSCILLATOR, "formula": "a"},
                timeout=10,
            )
            assert response.status_code == 200
            assert time.monotonic() - started < 5  # generous: the export is not in the way
        stopping = time.monotonic()
    # The last export gives up after SHUTDOWN_TIMEOUT (2 s), not after the exporter's
    # 10 s of retries (which gunicorn's graceful timeout would cut with a SIGKILL).
    assert time.monotonic() - stopping < 8


class _HangingCollector:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                self._held.append(self._listener.accept()[0])

    def __enter__(self) -> _HangingCollector:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._listener.close()
        for connection in self._held:
            connection.close()


_EXITING_WORKER = """
import logging
from opentelemetry import trace
from gennet_sync import tracing

logging.basicConfig()
assert tracing.configure_tracing("svc")
with trace.get_tracer("test").start_as_current_span("last request"):
    pass
tracing.gunicorn_worker_exit(None, None)
print("exiting", flush=True)
"""


def test_a_worker_exits_promptly_when_the_collector_hangs() -> None:
    with _HangingCollector() as collector:
        started = time.monotonic()
        finished = subprocess.run(
            [sys.executable, "-c", _EXITING_WORKER],
            env={
                **os.environ,
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                # The exporter would wait this long for an answer that never comes.
                "OTEL_EXPORTER_OTLP_TIMEOUT": "30",
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        took = time.monotonic() - started
    assert finished.returncode == 0, finished.stderr
    assert "exiting" in finished.stdout
    # SHUTDOWN_TIMEOUT (2 s) plus the interpreter's start, generously; not 30 s.
    assert took < 20, took
    assert "not exported within" in finished.stderr


def test_a_refused_call_to_a_signed_url_keeps_its_secret_off_the_span() -> None:
    reset_trace_globals()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        session = ServiceSession(
            base_url=f"http://127.0.0.1:{free_port()}", service_name="blobs", retries=0
        )
        with pytest.raises(requests.exceptions.ConnectionError) as raised:
            session.get("/o?X-Goog-Signature=s3cret&sig=s3cret&page=2")
        assert "s3cret" in str(raised.value)  # requests quotes the URL it failed on
        (span,) = exporter.get_finished_spans()
        assert span.events, "the exception was recorded"
        for event in span.events:
            assert "s3cret" not in str(dict(event.attributes or {}))
        assert "s3cret" not in str(span.status.description)
        assert "s3cret" not in str(dict(span.attributes or {}))
    finally:
        provider.shutdown()
        reset_trace_globals()

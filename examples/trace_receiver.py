"""An OTLP/HTTP trace receiver on 127.0.0.1, and a span tree printer, for the demo and tests.

What a collector would get from the example services: each ``POST /v1/traces``
(protobuf, gzip or not) is decoded with ``opentelemetry-proto`` and every span kept
with the resource it came from.  Needs ``opentelemetry-proto`` (a test dependency).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["OTLPReceiver", "ReceivedSpan", "span_tree"]

#: ``Span.kind`` values of the OTLP protobuf.
KIND_NAMES: Final = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
#: ``Status.code`` ERROR in the OTLP protobuf.
STATUS_ERROR: Final = 2
#: Attributes the tree shows, in this order, when a span has them.
SHOWN: Final = (
    "http.response.status_code",
    "error.type",
    "gennet.error.code",
    "gennet.downstream.error.code",
    "http.request.resend_count",
    "gennet.breaker.name",
    "gennet.breaker.state",
)


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, its attributes and events decoded to Python values."""

    service: str
    instance: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    status_code: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0
    pid: int = 0

    @property
    def duration_ms(self) -> float:
        """How long the span lasted, in milliseconds."""
        return (self.end_ns - self.start_ns) / 1e6


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OTLPReceiver:
    """Serve OTLP/HTTP on a free 127.0.0.1 port in a thread; use as a context manager.

    Example::

        with OTLPReceiver() as receiver:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
            ...
            spans = receiver.wait_for(lambda spans: len(spans) >= 2)
    """

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver._add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test's output is the spans, not an access log

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self._server.server_port}"

    def _add(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            instance=str(resource.get("service.instance.id", "")),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            status_code=span.status.code,
                            attributes=_attributes(span.attributes),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            pid=int(resource.get("process.pid", 0)),
                            events=[
                                (event.name, _attributes(event.attributes)) for event in span.events
                            ],
                        )
                    )
        with self._lock:
            self._spans.extend(received)

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def wait_for(
        self, condition: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """The spans once ``condition(spans)`` holds; AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if condition(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans received in {timeout:.0f} s: {spans}")
            time.sleep(0.05)

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __iter__(self) -> Iterator[ReceivedSpan]:
        return iter(self.spans())


def span_tree(spans: list[ReceivedSpan], trace_id: str) -> list[str]:
    """The spans of one trace as indented lines, each child under its parent, by start time.

    Example line: ``workflow SERVER POST /api/v1/workflows/verify 12.3 ms ERROR
    http.response.status_code=503 error.type=CircuitBreakerError``; events follow
    their span, marked ``*``.
    """
    mine = sorted((span for span in spans if span.trace_id == trace_id), key=lambda s: s.start_ns)
    ids = {span.span_id for span in mine}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in mine:
        parent = span.parent_span_id if span.parent_span_id in ids else ""
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            indent = "  " * depth
            shown = " ".join(
                f"{name}={span.attributes[name]}" for name in SHOWN if name in span.attributes
            )
            status = " ERROR" if span.status_code == STATUS_ERROR else ""
            lines.append(
                f"{indent}{span.service} {KIND_NAMES.get(span.kind, span.kind)} {span.name} "
                f"{span.duration_ms:.1f} ms{status} {shown}".rstrip()
            )
            for name, attributes in span.events:
                if name == "exception":
                    text = (
                        f"{attributes.get('exception.type')}: {attributes.get('exception.message')}"
                    )
                else:
                    text = " ".join(f"{key}={value}" for key, value in attributes.items())
                lines.append(f"{indent}  * {name} {text}")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return lines

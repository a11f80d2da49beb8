"""gennet_sync.http_client against real servers on 127.0.0.1: werkzeug in a
thread, gunicorn through the launcher."""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import brotli
import pytest
import requests
import zstandard
from flask import Flask, Response, jsonify, redirect, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Response as WerkzeugResponse

from examples.launcher import ServiceProcess, free_port
from gennet_sync import Compression, setup_error_handlers
from gennet_sync.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
)
from gennet_sync.context import reset_request_id, set_request_id
from gennet_sync.exceptions import (
    InternalServerError,
    NotFoundError,
    ServiceUnavailableError,
)
from gennet_sync.http_client import (
    ServiceSession,
    make_retry,
)
from tests.support.clock import FakeClock

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")


def state_of(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state


class TestBreakerUnit:
    def test_a_transport_error_names_the_service_not_the_breaker(self) -> None:
        closed_port = free_port()
        breaker = CircuitBreaker(failure_threshold=5, name="grn-breaker")
        with (
            ServiceSession(
                base_url=f"http://127.0.0.1:{closed_port}",
                service_name="grn",
                circuit_breaker=breaker,
                retries=0,
                raise_errors=True,
            ) as session,
            pytest.raises(ServiceUnavailableError) as caught,
        ):
            session.get("/x")
        assert caught.value.service == "grn"
        assert caught.value.message == "Service 'grn' could not be reached"


class TestRaiseErrorsOption:
    def test_streamed_error_response_is_closed(self, downstream: Downstream) -> None:
        seen: list[requests.Response] = []

        def keep(response: requests.Response, **_kwargs: Any) -> None:
            seen.append(response)

        with (
            ServiceSession(
                base_url=downstream.url, service_name="d", raise_errors=True, retries=0
            ) as session,
            pytest.raises(InternalServerError),
        ):
            session.get("/status/500", stream=True, hooks={"response": keep})
        assert len(seen) == 1
        assert seen[0].raw.closed  # the unread body does not hold its connection


@dataclass
class Downstream:
    """A real HTTP server on 127.0.0.1 and what it saw."""

    url: str
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits[path]


def _downstream_app(state: Downstream) -> Flask:
    app = Flask("downstream")
    setup_error_handlers(app)

    @app.before_request
    def record() -> None:
        with state.lock:
            state.hits[request.path] += 1

    @app.route("/ok", methods=["GET", "POST"])
    def ok() -> Response:
        return jsonify(ok=True)

    @app.route("/status/<int:code>", methods=["GET", "POST"])
    def status(code: int) -> Response:
        response = Response(f"status {code}", status=code, mimetype="text/plain")
        if "retry_after" in request.args:
            response.headers["Retry-After"] = request.args["retry_after"]
        return response

    @app.route("/flaky/<key>/<int:failures>", methods=["GET", "POST", "PUT", "PATCH"])
    def flaky(key: str, failures: int) -> Response:
        if state.count(request.path) <= failures:
            response = Response("busy", status=503)
            if "retry_after" in request.args:
                response.headers["Retry-After"] = request.args["retry_after"]
            return response
        return jsonify(ok=True, attempt=state.count(request.path))

    @app.route("/slow")
    def slow() -> Response:
        time.sleep(float(request.args.get("delay", "1")))
        return jsonify(ok=True)

    @app.route("/headers", methods=["GET", "POST"])
    def headers() -> Response:
        return jsonify(dict(request.headers))

    @app.route("/echo", methods=["POST", "PUT"])
    def echo() -> Response:
        raw = request.get_data()
        encoding = request.headers.get("Content-Encoding")
        body = gzip.decompress(raw) if encoding == "gzip" else raw
        return jsonify(encoding=encoding, wire_length=len(raw), body=json.loads(body))

    @app.route("/redirect/<int:code>", methods=["GET", "POST"])
    def redirect_to(code: int) -> WerkzeugResponse:
        return redirect(request.args.get("to", "/headers"), code=code)

    @app.route("/networks/<network_id>")
    def network(network_id: str) -> Response:
        raise NotFoundError("Network", network_id)

    @app.route("/encoded/<coding>")
    def encoded(coding: str) -> Response:
        data = json.dumps({"coding": coding, "data": "x" * 2000}).encode()
        compress: dict[str, Callable[[bytes], bytes]] = {
            "br": brotli.compress,
            "zstd": lambda raw: zstandard.ZstdCompressor().compress(raw),
            "gzip": gzip.compress,
        }
        response = Response(compress[coding](data), mimetype="application/json")
        response.headers["Content-Encoding"] = coding
        return response

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    state = Downstream(url="")
    server: BaseWSGIServer = make_server(
        "127.0.0.1", 0, _downstream_app(state), threaded=True, request_handler=_QuietHandler
    )
    state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.integration
class TestBreakerIntegration:
    def test_opens_on_503s_and_fails_fast_without_touching_the_server(
        self, downstream: Downstream
    ) -> None:
        with ServiceSession(
            base_url=downstream.url, service_name="down", circuit_breaker_threshold=3
        ) as session:
            for _ in range(3):
                assert session.get("/status/503").status_code == 503
            breaker = session.circuit_breaker
            assert breaker is not None
            assert state_of(breaker) is CircuitState.OPEN
            # Every logical call was retried twice by urllib3 yet counted once.
            assert downstream.count("/status/503") == 9
            assert breaker.metrics().failures == 3
            started = time.monotonic()
            for _ in range(20):
                with pytest.raises(CircuitBreakerError):
                    session.get("/status/503")
            assert time.monotonic() - started < 1
        assert downstream.count("/status/503") == 9

    def test_opens_on_timeouts_and_read_timeouts_are_not_retried(
        self, downstream: Downstream
    ) -> None:
        with ServiceSession(
            base_url=downstream.url,
            service_name="down",
            circuit_breaker_threshold=2,
            timeout=(1.0, 0.2),
        ) as session:
            for _ in range(2):
                with pytest.raises(requests.ReadTimeout):
                    session.get("/slow", params={"delay": "0.6"})
            with pytest.raises(CircuitBreakerError):
                session.get("/slow", params={"delay": "0.6"})
        assert downstream.count("/slow") == 2

    def test_connection_refused_is_one_failure(self) -> None:
        port = free_port()
        with ServiceSession(
            base_url=f"http://127.0.0.1:{port}", service_name="gone", raise_errors=True
        ) as session:
            with pytest.raises(ServiceUnavailableError) as caught:
                session.get("/x")
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.metrics().failures == 1
        assert caught.value.service == "gone"
        assert caught.value.metadata["reason"] == "connection_error"

    def test_recovers_through_half_open(self, downstream: Downstream) -> None:
        clock = FakeClock()
        breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=30, name="d", clock=clock)
        with ServiceSession(base_url=downstream.url, circuit_breaker=breaker, retries=0) as s:
            s.get("/status/500")
            s.get("/status/500")
            assert state_of(breaker) is CircuitState.OPEN
            clock.advance(30)
            assert state_of(breaker) is CircuitState.HALF_OPEN
            s.get("/status/500")  # the trial fails: open again, no second trial
            assert state_of(breaker) is CircuitState.OPEN
            with pytest.raises(CircuitBreakerError):
                s.get("/ok")
            clock.advance(30)
            assert s.get("/ok").json() == {"ok": True}
            assert state_of(breaker) is CircuitState.CLOSED
            assert s.get("/ok").status_code == 200
        assert downstream.count("/ok") == 2
        assert downstream.count("/status/500") == 3

    def test_a_redirect_is_one_call_even_as_the_only_half_open_trial(
        self, downstream: Downstream
    ) -> None:
        clock = FakeClock()
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5, name="d", clock=clock)
        with ServiceSession(base_url=downstream.url, circuit_breaker=breaker, retries=0) as s:
            s.get("/status/503")
            clock.advance(5)
            response = s.get("/redirect/302", params={"to": "/ok"})
        assert response.json() == {"ok": True}
        assert [r.status_code for r in response.history] == [302]
        assert state_of(breaker) is CircuitState.CLOSED
        assert breaker.metrics().calls == 2

    def test_a_redirect_to_another_host_failing_is_not_the_services_failure(
        self, downstream: Downstream
    ) -> None:
        elsewhere = downstream.url.replace("127.0.0.1", "localhost") + "/status/503"
        with ServiceSession(
            base_url=downstream.url, service_name="a", retries=0, circuit_breaker_threshold=1
        ) as session:
            response = session.get("/redirect/302", params={"to": elsewhere})
            assert response.status_code == 503
            breaker = session.circuit_breaker
            assert breaker is not None
            assert state_of(breaker) is CircuitState.CLOSED
            assert breaker.metrics().successes == 1
            assert session.get("/ok").status_code == 200  # "a" still takes calls

    def test_a_redirect_to_another_host_goes_through_that_hosts_breaker(
        self, downstream: Downstream
    ) -> None:
        other_host = downstream.url.replace("http://127.0.0.1", "localhost")
        elsewhere = f"http://{other_host}/status/503"
        with ServiceSession(retries=0, circuit_breaker_threshold=1, raise_errors=True) as session:
            with pytest.raises(ServiceUnavailableError) as caught:
                session.get(f"{downstream.url}/redirect/302", params={"to": elsewhere})
            origin = session.breaker_for(downstream.url)
            other = session.breaker_for(elsewhere)
        assert caught.value.service == other_host
        assert origin is not None and other is not None and origin is not other
        assert state_of(origin) is CircuitState.CLOSED
        assert state_of(other) is CircuitState.OPEN

    def test_a_redirect_to_another_host_that_is_down_names_that_host(
        self, downstream: Downstream
    ) -> None:
        closed_port = free_port()
        elsewhere = f"http://localhost:{closed_port}/ok"
        with ServiceSession(
            base_url=downstream.url, service_name="a", retries=0, raise_errors=True
        ) as session:
            with pytest.raises(ServiceUnavailableError) as caught:
                session.get("/redirect/302", params={"to": elsewhere})
            breaker = session.circuit_breaker
        assert caught.value.service == f"localhost:{closed_port}"
        assert breaker is not None and breaker.failure_count == 0


@pytest.mark.integration
class TestRetriesIntegration:
    def test_idempotent_call_is_retried_until_it_succeeds(self, downstream: Downstream) -> None:
        with ServiceSession(base_url=downstream.url, service_name="down") as session:
            response = session.get("/flaky/a/2")
            assert response.json() == {"ok": True, "attempt": 3}
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.metrics().successes == 1
            assert session.circuit_breaker.metrics().failures == 0

    def test_post_is_not_retried(self, downstream: Downstream) -> None:
        with ServiceSession(base_url=downstream.url, service_name="down") as session:
            assert session.post("/flaky/b/1").status_code == 503
            assert session.patch("/flaky/c/1").status_code == 503
            assert session.put("/flaky/d/1").status_code == 200  # PUT is idempotent
        assert downstream.count("/flaky/b/1") == 1
        assert downstream.count("/flaky/c/1") == 1
        assert downstream.count("/flaky/d/1") == 2

    def test_methods_to_retry_can_be_named_in_any_case(self, downstream: Downstream) -> None:
        retry = make_retry(2, allowed_methods=["get", "Post"])
        with ServiceSession(base_url=downstream.url, service_name="down", retries=retry) as s:
            assert s.post("/flaky/post/1").status_code == 200
            assert s.patch("/flaky/patch/1").status_code == 503
        assert downstream.count("/flaky/post/1") == 2
        assert downstream.count("/flaky/patch/1") == 1

    def test_retry_after_is_honoured(self, downstream: Downstream) -> None:
        with ServiceSession(base_url=downstream.url, service_name="down") as session:
            started = time.monotonic()
            response = session.get("/flaky/d/1", params={"retry_after": "1"})
            elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert downstream.count("/flaky/d/1") == 2
        assert elapsed >= 0.9

    def test_a_long_retry_after_is_not_waited_for(self, downstream: Downstream) -> None:
        with ServiceSession(
            base_url=downstream.url, service_name="down", raise_errors=True
        ) as session:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailableError) as caught:
                session.get("/status/503", params={"retry_after": "3600"})
            assert time.monotonic() - started < 1
        assert downstream.count("/status/503") == 1
        assert caught.value.retry_after == 3600
        assert caught.value.headers["Retry-After"] == "3600"

    def test_a_retry_after_just_over_the_configured_cap_is_not_waited_for(
        self, downstream: Downstream
    ) -> None:
        retry = make_retry(2, retry_after_max=1)
        with ServiceSession(base_url=downstream.url, service_name="down", retries=retry) as s:
            started = time.monotonic()
            response = s.get("/status/503", params={"retry_after": "2"})
            elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert downstream.count("/status/503") == 1
        assert elapsed < 1.5

    def test_a_retry_after_that_is_not_a_number_is_retried_without_waiting(
        self, downstream: Downstream
    ) -> None:
        with ServiceSession(base_url=downstream.url, service_name="down") as session:
            response = session.get("/flaky/e/1", params={"retry_after": "\u00b2"})
        assert response.status_code == 200
        assert downstream.count("/flaky/e/1") == 2

    def test_no_retries(self, downstream: Downstream) -> None:
        with ServiceSession(base_url=downstream.url, service_name="down", retries=0) as session:
            assert session.get("/status/502").status_code == 502
        assert downstream.count("/status/502") == 1


@pytest.mark.integration
class TestTransportIntegration:
    def test_redirect_hops_carry_request_id_and_user_agent(self, downstream: Downstream) -> None:
        token = set_request_id("trace-42")
        try:
            with ServiceSession(base_url=downstream.url, service_name="d", caller="orders") as s:
                response = s.get("/redirect/302")
        finally:
            reset_request_id(token)
        seen = response.json()
        assert seen["X-Request-Id"] == "trace-42"
        assert seen["User-Agent"].startswith("orders gennet_sync/")

    def test_compressed_body_reaches_the_server_and_survives_a_307(
        self, downstream: Downstream
    ) -> None:
        payload = {"formula": "AG(p)", "nodes": list(range(1000))}
        with ServiceSession(base_url=downstream.url, service_name="d", compress_requests=True) as s:
            direct = s.post("/echo", json=payload).json()
            redirected = s.post("/redirect/307", params={"to": "/echo"}, json=payload).json()
            after_303 = s.post("/redirect/303", json=payload).json()
        assert direct["encoding"] == "gzip" and direct["body"] == payload
        assert direct["wire_length"] < len(json.dumps(payload))
        assert redirected["encoding"] == "gzip" and redirected["body"] == payload
        # A 303 turns the POST into a GET without a body, and so without Content-Encoding.
        assert "Content-Encoding" not in after_303

    def test_compression_both_ways_with_a_gennet_sync_service(self) -> None:
        app = Flask("compressing")
        setup_error_handlers(app)
        Compression(app, min_size=512)

        @app.post("/echo")
        def echo() -> Response:
            return jsonify(request.get_json())

        payload = {"nodes": [f"gene{i}" for i in range(2000)]}
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            with ServiceSession(
                base_url=f"http://127.0.0.1:{server.server_port}",
                service_name="compressing",
                compress_requests=True,
            ) as session:
                response = session.post("/echo", json=payload)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        assert response.status_code == 200
        assert response.request.headers["Content-Encoding"] == "gzip"
        # The service picks the best coding this client advertises; urllib3 decodes it.
        assert response.headers["Content-Encoding"] in {"zstd", "br"}
        assert response.json() == payload

    @pytest.mark.parametrize("coding", ["br", "zstd", "gzip"])
    def test_compressed_responses_are_decoded(self, downstream: Downstream, coding: str) -> None:
        with ServiceSession(base_url=downstream.url, service_name="d") as s:
            response = s.get(f"/encoded/{coding}")
        assert response.json()["coding"] == coding


# =========================================================================== gunicorn


def create_port_app() -> Flask:
    """gunicorn app: tells each caller which client port it came from."""
    app = Flask("ports")
    barriers: dict[int, threading.Barrier] = {}
    lock = threading.Lock()

    @app.route("/port")
    def port() -> Response:
        return jsonify(port=int(request.environ["REMOTE_PORT"]))

    @app.route("/barrier/<int:parties>")
    def barrier(parties: int) -> Response:
        # Holds each request until `parties` are in flight at once: that many
        # connections are open together.
        with lock:
            waiting = barriers.setdefault(parties, threading.Barrier(parties, timeout=10))
        waiting.wait()
        return jsonify(port=int(request.environ["REMOTE_PORT"]))

    return app


def create_service_b() -> Flask:
    """gunicorn app: service B, which raises the library's errors."""
    app = Flask("service_b")
    setup_error_handlers(app)

    @app.route("/networks/<network_id>")
    def network(network_id: str) -> Response:
        if network_id == "known":
            return jsonify(id="known")
        raise NotFoundError("Network", network_id, metadata={"lookup": ["cache", "db"]})

    @app.route("/whoami")
    def whoami() -> Response:
        return jsonify(request_id=request.headers.get("X-Request-ID"))

    return app


def create_service_a() -> Flask:
    """gunicorn app: service A, which calls B and lets B's errors propagate."""
    app = Flask("service_a")
    setup_error_handlers(app)
    session = ServiceSession(
        base_url=os.environ["SERVICE_B_URL"],
        service_name="service-b",
        raise_errors=True,
        caller="service-a",
    )

    @app.route("/relay/networks/<network_id>")
    def relay(network_id: str) -> Response:
        return jsonify(b=session.get(f"/networks/{network_id}").json())

    @app.route("/relay/whoami")
    def relay_whoami() -> Response:
        return jsonify(b=session.get("/whoami").json())

    return app


@dataclass
class Gunicorn:
    url: str
    process: ServiceProcess


@pytest.fixture(scope="module")
def gunicorn_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Gunicorn]]:
    started: list[ServiceProcess] = []

    def start(app: str, env: dict[str, str] | None = None, threads: int = 4) -> Gunicorn:
        # gunicorn's own defaults, not the examples' settings file: no worker
        # recycling (max_requests) under a test that counts client ports.
        service = ServiceProcess(
            app.partition(":")[2].removesuffix("()"),
            app,
            tmp_path_factory.mktemp("gunicorn"),
            workers=1,
            threads=threads,
            env=env,
            config=None,
            options=["--worker-class", "gthread", "--keep-alive", "30"],
            health_path=None,
        )
        started.append(service)
        service.start()
        # The worker imports the app after booting (slowly on a busy machine).
        service.wait_ready(timeout=50)
        return Gunicorn(url=service.base_url, process=service)

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def port_server(gunicorn_factory: Callable[..., Gunicorn]) -> Gunicorn:
    return gunicorn_factory("tests.integration.test_http_client:create_port_app()", threads=40)


def _threads_on_one_session(
    server: Gunicorn, caplog: pytest.LogCaptureFixture, *, threads: int, **options: Any
) -> list[str]:
    """``threads`` concurrent calls on one session, then 3 more; the pool warnings logged."""
    ports: list[int] = []
    errors: list[BaseException] = []
    with ServiceSession(base_url=server.url, service_name="ports", **options) as session:

        def call() -> None:
            try:
                ports.append(session.get(f"/barrier/{threads}").json()["port"])
            except BaseException as error:
                errors.append(error)

        with caplog.at_level(logging.WARNING, logger="urllib3"):
            workers = [threading.Thread(target=call) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=20)
        later = [session.get("/port").json()["port"] for _ in range(3)]
    assert errors == []
    assert len(set(ports)) == threads  # all in flight at once, one connection each
    if "pool_maxsize" not in options:
        assert set(later) <= set(ports)  # kept in the pool and reused
    return [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()]


@pytest.mark.integration
def test_32_threads_share_one_session_without_pool_warnings(
    port_server: Gunicorn, caplog: pytest.LogCaptureFixture
) -> None:
    assert _threads_on_one_session(port_server, caplog, threads=32) == []


@pytest.mark.integration
def test_a_small_pool_would_warn(port_server: Gunicorn, caplog: pytest.LogCaptureFixture) -> None:
    # The control for the test above: the warning is real and would be caught.
    assert _threads_on_one_session(port_server, caplog, threads=8, pool_maxsize=2) != []


@pytest.mark.integration
def test_forked_child_makes_its_own_connections(port_server: Gunicorn) -> None:
    server = port_server
    with ServiceSession(base_url=server.url, service_name="ports") as session:
        first = session.get("/port").json()["port"]
        assert session.get("/port").json()["port"] == first  # pooled, kept alive
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one call, report its port, leave at once
            status = 1
            try:
                os.close(read_end)
                ports = [session.get("/port").json()["port"] for _ in range(2)]
                os.write(write_end, json.dumps(ports).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            child_ports = json.loads(reader.read() or b"null")
        _, exit_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(exit_status) == 0
        # The parent's connection is untouched by the child and still in use.
        assert session.get("/port").json()["port"] == first
    assert child_ports is not None
    assert first not in child_ports
    assert child_ports[0] == child_ports[1]  # the child pools its own connection


@pytest.mark.integration
def test_error_envelope_travels_from_b_through_a_unchanged(
    gunicorn_factory: Callable[..., Gunicorn],
) -> None:
    service_b = gunicorn_factory("tests.integration.test_http_client:create_service_b()")
    service_a = gunicorn_factory(
        "tests.integration.test_http_client:create_service_a()", {"SERVICE_B_URL": service_b.url}
    )
    with requests.Session() as client:
        from_b = client.get(f"{service_b.url}/networks/abc123")
        from_a = client.get(f"{service_a.url}/relay/networks/abc123")
        found = client.get(f"{service_a.url}/relay/networks/known")
        traced = client.get(f"{service_a.url}/relay/whoami", headers={"X-Request-ID": "trace-7"})
    assert from_b.status_code == from_a.status_code == 404
    assert from_a.headers["Content-Type"] == "application/json"
    expected = from_b.json()
    expected["error"]["metadata"]["service"] = "service-b"
    assert from_a.json() == expected
    assert from_a.json()["error"] == {
        "code": "NOT_FOUND",
        "type": "NotFoundError",
        "message": "Network with id 'abc123' not found",
        "metadata": {
            "resource_type": "Network",
            "resource_id": "abc123",
            "lookup": ["cache", "db"],
            "service": "service-b",
        },
    }
    assert found.json() == {"b": {"id": "known"}}
    assert traced.json() == {"b": {"request_id": "trace-7"}}
    assert traced.headers["X-Request-ID"] == "trace-7"

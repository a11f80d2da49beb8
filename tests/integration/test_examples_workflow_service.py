"""The workflow service: forwarding to the qualitative service through ServiceSession."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask, jsonify
from flask.testing import FlaskClient

from examples.launcher import free_port
from examples.qualitative_service import create_app as create_qualitative_app
from examples.workflow_service import EXTENSION_KEY, create_app
from gennet_sync.redis_storage import RedisStorage
from tests.support.clock import FakeClock
from tests.support.redis_server import RedisServer
from tests.support.servers import serve_app

OSCILLATOR = {"nodes": {"a": "!b", "b": "a"}}
VERIFY = "/api/v1/workflows/verify"


def workflow_app(qualitative_url: str, clock: FakeClock | None = None, **config: Any) -> Flask:
    settings: dict[str, Any] = {
        "TESTING": True,
        "QUALITATIVE_URL": qualitative_url,
        # a breaker of this test's own: the registry is process-wide
        "QUALITATIVE_SERVICE_NAME": f"qualitative-{uuid.uuid4().hex[:8]}",
        "CIRCUIT_BREAKER_THRESHOLD": 2,
        "CIRCUIT_BREAKER_TIMEOUT": 30,
        **config,
    }
    if clock is not None:
        settings["CIRCUIT_BREAKER_CONFIG"] = {"clock": clock}
    return create_app(settings)


@pytest.fixture
def qualitative_url() -> Iterator[str]:
    with serve_app(create_qualitative_app()) as url:
        yield url


@pytest.fixture
def make_client() -> Iterator[Any]:
    apps: list[Flask] = []

    def make(url: str, clock: FakeClock | None = None, **config: Any) -> FlaskClient:
        app = workflow_app(url, clock, **config)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions[EXTENSION_KEY].close()


def dead_url() -> str:
    """A URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def test_health_does_not_depend_on_the_downstream(make_client: Any) -> None:
    client = make_client(dead_url())
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "service": "workflow-service"}


@pytest.mark.integration
def test_answer_of_the_qualitative_service_is_returned(
    make_client: Any, qualitative_url: str
) -> None:
    client = make_client(qualitative_url)
    response = client.post(VERIFY, json={"network": OSCILLATOR, "formula": "AG(AF a)"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["holds"] is True
    assert body["states"] == 4


@pytest.mark.integration
def test_downstream_422_comes_back_as_the_same_envelope(
    make_client: Any, qualitative_url: str
) -> None:
    client = make_client(qualitative_url)
    response = client.post(VERIFY, json={"network": OSCILLATOR, "formula": "AG(a -> zz)"})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["type"] == "ValidationError"
    assert error["message"] == "Unknown node 'zz' in the formula"
    assert error["metadata"]["unknown_node"] == "zz"
    assert error["metadata"]["position"] == 8
    assert error["metadata"]["service"].startswith("qualitative-")


@pytest.mark.integration
def test_client_errors_never_open_the_breaker(make_client: Any, qualitative_url: str) -> None:
    client = make_client(qualitative_url)
    for _ in range(5):
        assert client.post(VERIFY, json={"network": OSCILLATOR, "formula": "("}).status_code == 422
    assert client.get("/api/v1/workflows/breaker").get_json()["state"] == "closed"
    assert client.post(VERIFY, json={"network": OSCILLATOR, "formula": "a"}).status_code == 200


def test_unreachable_service_is_a_503_with_retry_after(make_client: Any) -> None:
    client = make_client(dead_url())
    response = client.post(VERIFY, json={"network": OSCILLATOR, "formula": "a"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    error = response.get_json()["error"]
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert error["type"] == "ServiceUnavailableError"
    assert error["metadata"]["reason"] == "connection_error"


def test_open_breaker_answers_at_once_and_recovers_after_its_timeout(
    make_client: Any,
) -> None:
    clock = FakeClock()
    port = free_port()
    client = make_client(f"http://127.0.0.1:{port}", clock, CIRCUIT_BREAKER_TIMEOUT=30)
    body = {"network": OSCILLATOR, "formula": "AG(AF a)"}
    for _ in range(2):  # the threshold
        failed = client.post(VERIFY, json=body)
        assert failed.get_json()["error"]["type"] == "ServiceUnavailableError"

    started = time.monotonic()
    refused = client.post(VERIFY, json=body)
    assert time.monotonic() - started < 1.0
    assert refused.status_code == 503
    error = refused.get_json()["error"]
    assert error["type"] == "CircuitBreakerError"
    assert error["metadata"]["state"] == "open"
    assert refused.headers["Retry-After"] == "30"
    view = client.get("/api/v1/workflows/breaker").get_json()
    assert (view["state"], view["failures"], view["rejections"]) == ("open", 2, 1)

    clock.advance(20)
    assert client.post(VERIFY, json=body).headers["Retry-After"] == "10"

    # the service comes back on the same port; after the timeout a trial goes through
    with serve_app(create_qualitative_app(), port):
        assert client.post(VERIFY, json=body).status_code == 503  # still open
        clock.advance(10)
        assert client.get("/api/v1/workflows/breaker").get_json()["state"] == "half_open"
        trial = client.post(VERIFY, json=body)
        assert trial.status_code == 200
        assert trial.get_json()["holds"] is True
        assert client.get("/api/v1/workflows/breaker").get_json()["state"] == "closed"


def test_downstream_5xx_counts_as_a_failure(make_client: Any) -> None:
    broken = Flask("broken")

    @broken.post("/ctl/verify")
    def crash() -> Any:
        return jsonify(
            {"error": {"code": "X", "type": "Boom", "message": "no", "metadata": {}}}
        ), 500

    with serve_app(broken) as url:
        client = make_client(url)
        first = client.post(VERIFY, json={"network": OSCILLATOR, "formula": "a"})
        assert first.status_code == 500
        assert first.get_json()["error"]["message"] == "no"
        client.post(VERIFY, json={"network": OSCILLATOR, "formula": "a"})
        third = client.post(VERIFY, json={"network": OSCILLATOR, "formula": "a"})
        assert third.get_json()["error"]["type"] == "CircuitBreakerError"


@pytest.mark.integration
def test_through_real_servers_end_to_end(qualitative_url: str) -> None:
    app = workflow_app(qualitative_url)
    try:
        with serve_app(app) as workflow_url, requests.Session() as session:
            response = session.post(
                f"{workflow_url}{VERIFY}",
                json={"network": OSCILLATOR, "formula": "EF(a & b)", "initial": {"a": False}},
                headers={"X-Request-ID": "demo-request-1"},
                timeout=10,
            )
            assert response.status_code == 200
            assert response.headers["X-Request-ID"] == "demo-request-1"
            assert response.json()["witness"]["path"][-1] == {"a": True, "b": True}
    finally:
        app.extensions[EXTENSION_KEY].close()


@pytest.mark.integration
def test_breaker_state_is_shared_through_redis(make_client: Any, redis_server: RedisServer) -> None:
    prefix = f"wf-{uuid.uuid4().hex[:8]}"
    name = f"qualitative-{prefix}"
    storage = RedisStorage.from_url(redis_server.url, prefix=prefix)
    # another worker process, as far as Redis can tell
    other_worker = RedisStorage.from_url(redis_server.url, prefix=prefix)
    try:
        client = make_client(
            dead_url(), QUALITATIVE_SERVICE_NAME=name, CIRCUIT_BREAKER_CONFIG={"storage": storage}
        )
        assert client.get("/api/v1/workflows/breaker").get_json()["shared_state"] == "closed"
        for _ in range(2):  # the threshold
            client.post(VERIFY, json={"network": OSCILLATOR, "formula": "a"})
        view = client.get("/api/v1/workflows/breaker").get_json()
        assert view["state"] == "open"
        assert view["shared_state"] == "open"
        seen_elsewhere = other_worker.load(name)
        assert seen_elsewhere is not None
        assert seen_elsewhere.state == "open"
    finally:
        storage.close()
        other_worker.close()


def test_breaker_view_without_shared_storage_has_no_shared_state(make_client: Any) -> None:
    view = make_client(dead_url()).get("/api/v1/workflows/breaker").get_json()
    assert view["shared_state"] is None
    assert view["state"] == "closed"


@pytest.mark.parametrize("body", [b"null", b"[]", b'"text"', b"7"])
def test_a_body_that_is_json_but_not_an_object_is_the_downstream_422(
    make_client: Any, qualitative_url: str, body: bytes
) -> None:
    # JSON null used to be forwarded as no body at all: a misleading 415.
    client = make_client(qualitative_url)
    response = client.post(VERIFY, data=body, content_type="application/json")
    assert response.status_code == 422
    assert response.get_json()["error"]["metadata"]["fields"] == {
        "_schema": ["Invalid input type."]
    }


@pytest.mark.parametrize("answer", ["<html>ok</html>", '{"holds": tru'])
def test_a_2xx_answer_that_is_not_json_is_a_502(make_client: Any, answer: str) -> None:
    garbled = Flask("garbled")

    @garbled.post("/ctl/verify")
    def reply() -> Any:
        return answer, 200, {"Content-Type": "application/json"}

    with serve_app(garbled) as url:
        response = make_client(url).post(VERIFY, json={"network": OSCILLATOR, "formula": "a"})
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "BAD_GATEWAY"
    assert "not JSON" in error["message"]


def test_a_body_that_is_not_json_is_refused_here_without_calling_downstream(
    make_client: Any,
) -> None:
    client = make_client(dead_url())  # a forwarded call would be a 503
    wrong_type = client.post(VERIFY, data=b"formula=a", content_type="text/plain")
    assert wrong_type.status_code == 415
    garbled = client.post(VERIFY, data=b'{"formula": ', content_type="application/json")
    assert garbled.status_code == 400
    assert garbled.get_json()["error"]["code"] == "BAD_REQUEST"
    assert client.get("/api/v1/workflows/breaker").get_json()["failures"] == 0


def test_a_downstream_slower_than_qualitative_timeout_is_a_503(make_client: Any) -> None:
    release = threading.Event()
    stuck = Flask("stuck")

    @stuck.post("/ctl/verify")
    def hang() -> Any:
        release.wait(timeout=10)
        return jsonify({"holds": True})

    with serve_app(stuck) as url:
        try:
            client = make_client(url, QUALITATIVE_TIMEOUT=0.3)
            started = time.monotonic()
            response = client.post(VERIFY, json={"network": OSCILLATOR, "formula": "a"})
            elapsed = time.monotonic() - started
        finally:
            release.set()
    assert response.status_code == 503
    assert response.get_json()["error"]["metadata"]["reason"] == "timeout"
    assert elapsed < 3


@pytest.mark.integration
def test_settings_fall_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, qualitative_url: str
) -> None:
    monkeypatch.setenv("QUALITATIVE_URL", qualitative_url)
    monkeypatch.setenv("QUALITATIVE_SERVICE_NAME", f"qualitative-env-{uuid.uuid4().hex[:8]}")
    app = create_app({"TESTING": True})
    try:
        response = app.test_client().post(
            VERIFY, json={"network": OSCILLATOR, "formula": "AG(AF a)"}
        )
    finally:
        app.extensions[EXTENSION_KEY].close()
    assert response.status_code == 200
    assert response.get_json()["holds"] is True

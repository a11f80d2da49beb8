"""The envelope over a real HTTP server (headers, streamed bodies, log records),
breaker storage shared through a real redis-server, and memory measured in a
child Python."""

from __future__ import annotations

import http.client
import json
import logging
import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from flask import Flask, g, request

from gennet_sync import (
    ServiceUnavailableError,
    current_request_id,
    setup_error_handlers,
)
from gennet_sync.exceptions import MAX_FIELD_ERRORS
from tests.support.error_app import make_app
from tests.support.redis_server import RedisServer
from tests.support.servers import serve_app


@pytest.fixture
def client() -> Any:
    return make_app().test_client()


@pytest.mark.parametrize("expose", [False, True])
def test_a_crash_in_teardown_is_still_the_envelope_over_a_real_server(
    expose: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(GENNET_EXPOSE_ERRORS=expose)

    @app.teardown_request
    def close_database(_error: BaseException | None) -> None:
        if request.path == "/request-id":
            raise RuntimeError("password=hunter2 teardown")

    with caplog.at_level(logging.ERROR, logger="gennet_sync"), serve_app(app) as url:
        response = requests.get(f"{url}/request-id", headers={"X-Request-ID": "req-9"}, timeout=5)
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Request-ID"] == "req-9"
    body = response.json()
    assert set(body["error"]) == {"code", "type", "message", "metadata"}
    assert body["error"]["code"] == "INTERNAL_SERVER_ERROR"
    assert ("hunter2" in response.text) is expose
    [record] = [r for r in caplog.records if r.name == "gennet_sync.error_handler"]
    assert record.request_id == "req-9"  # type: ignore[attr-defined]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


@pytest.fixture
def live_url() -> Iterator[str]:
    with serve_app(make_app()) as url:
        yield url


def test_over_a_real_http_server_errors_are_json_with_headers(live_url: str) -> None:
    with requests.Session() as session:
        crash = session.get(f"{live_url}/crash", timeout=5)
        busy = session.get(f"{live_url}/busy", timeout=5)
        wrong = session.post(f"{live_url}/networks/x", timeout=5)
    assert crash.status_code == 500
    assert crash.headers["Content-Type"] == "application/json"
    assert crash.json()["error"]["message"] == "Internal server error"
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "7"
    assert wrong.status_code == 405 and "GET" in wrong.headers["Allow"]
    for response in (crash, busy, wrong):
        assert len(response.headers["X-Request-ID"]) == 32


def test_breaker_storage_from_flask_config_is_shared_by_registry_breakers(
    redis_server: RedisServer,
) -> None:
    from gennet_sync.circuit_breaker import (
        clear_circuit_breakers,
        get_circuit_breaker,
        set_default_storage,
    )
    from gennet_sync.redis_storage import RedisStorage

    app = Flask("shared")
    app.config["GENNET_BREAKER_STORAGE"] = redis_server.url
    try:
        setup_error_handlers(app)
        breaker = get_circuit_breaker("config-storage-test", failure_threshold=1)
        assert isinstance(breaker.storage, RedisStorage)
        breaker.open()
        # Another process's view (a second storage on the same server) sees it open.
        other = RedisStorage.from_url(redis_server.url)
        shared = other.load("config-storage-test")
        assert shared is not None and shared.state == "open"
    finally:
        set_default_storage(None)
        clear_circuit_breakers()


def test_a_streamed_body_sees_the_request_id_until_the_server_has_sent_it() -> None:
    from flask import stream_with_context

    app = Flask("streaming")
    setup_error_handlers(app)

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[str]:
            yield f"first={current_request_id()};"
            yield f"last={current_request_id()}"

        return stream_with_context(chunks())

    with serve_app(app) as url, requests.Session() as session:
        response = session.get(f"{url}/stream", headers={"X-Request-ID": "stream-7"}, timeout=5)
    assert response.text == "first=stream-7;last=stream-7"
    assert response.headers["X-Request-ID"] == "stream-7"
    # And through the test client, the ID is unbound once the body is closed.
    body = app.test_client().get("/stream", headers={"X-Request-ID": "s-8"})
    assert body.get_data(as_text=True) == "first=s-8;last=s-8"
    assert current_request_id() is None


_FORGED_PATH = "/forge/x%0D%0A2026-01-01%20ERROR%20forged%0Aline%1B%5B31m%E2%80%A8%C2%85end%5C"


def _one_line(text: str) -> bool:
    return not any(mark in text for mark in ("\r", "\n", "\x1b", "\u2028", "\x85", "\x0b"))


@pytest.mark.parametrize("where", ["view", "after_request", "teardown", "our_5xx"])
def test_a_path_with_encoded_line_breaks_is_one_escaped_log_record(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    @app.before_request
    def forge() -> None:  # no route matches a path with a line break: fail before routing
        if where == "view":
            raise RuntimeError("boom")
        if where == "our_5xx":
            raise ServiceUnavailableError(f"store {request.path} is down")

    @app.after_request
    def crash_after(response: Any) -> Any:
        # Once: the hook runs again on the error response.
        if where == "after_request" and not g.get("crashed_after"):
            g.crashed_after = True
            raise RuntimeError("boom after")
        return response

    @app.teardown_request
    def crash_teardown(_error: BaseException | None) -> None:
        if where == "teardown" and request.path.startswith("/forge"):
            raise RuntimeError("boom teardown")

    with caplog.at_level(logging.ERROR), serve_app(app) as url:
        port = int(url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", _FORGED_PATH)
        status = connection.getresponse().status
        connection.close()
    assert status == (503 if where == "our_5xx" else 500)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert _one_line(message), message
    # The path is still there to read, escaped: the CR/LF pair as \r\n, ESC as \x1b.
    assert "x\\r\\n2026-01-01 ERROR forged\\nline\\x1b[31m\\u2028\\x85end\\\\" in message


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [("30", "30"), (timedelta(seconds=12.5), "13"), ("in a while", None), (math.nan, None)],
)
def test_a_503_stays_a_503_whatever_retry_after_it_was_given(
    retry_after: Any, header: str | None
) -> None:
    app = make_app()

    @app.get("/down")
    def down() -> str:
        raise ServiceUnavailableError("GRN store is down", retry_after=retry_after)

    with serve_app(app) as url:
        response = requests.get(f"{url}/down", timeout=5)
    assert response.status_code == 503  # "30" was a 500: the header failed to build
    assert response.headers.get("Retry-After") == header
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"


_MILLION_KEYS_CHILD = """
import json, sys, time, tracemalloc
import marshmallow
from flask import Flask
from gennet_sync import setup_error_handlers

class Strict(marshmallow.Schema):
    class Meta:
        unknown = marshmallow.RAISE
    name = marshmallow.fields.String(required=True)

keys = int(sys.argv[1])
try:
    Strict().load({"name": "x", **{f"key{i:07d}": 1 for i in range(keys)}})
except marshmallow.ValidationError as error:
    built = error

app = Flask("bounded")
setup_error_handlers(app)

@app.get("/")
def view():
    raise built

client = app.test_client()
tracemalloc.start()
started = time.perf_counter()
response = client.get("/")
elapsed = time.perf_counter() - started
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"peak": peak, "seconds": elapsed, "size": len(response.data),
                  "status": response.status_code, "body": response.get_json()}))
"""


def test_rendering_a_422_for_a_million_unknown_keys_costs_what_is_kept() -> None:
    # Measured in a child process: the render alone, the ValidationError built
    # beforehand (marshmallow's own cost is not ours).  Before the bounds this
    # render took ~6 s, 29 MB of response and hundreds of MB of peak memory.
    keys = 1_000_000
    child = subprocess.run(
        [sys.executable, "-c", _MILLION_KEYS_CHILD, str(keys)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured = json.loads(child.stdout)
    assert measured["status"] == 422
    assert measured["size"] < 8 * 1024  # KBs, not 29 MB
    assert measured["peak"] < 2 * 1024 * 1024  # traced peak of the render: a few hundred KB
    assert measured["seconds"] < 30  # does not hang (measured: milliseconds)
    error = measured["body"]["error"]
    assert len(error["metadata"]["fields"]) == MAX_FIELD_ERRORS
    assert error["metadata"]["fields_omitted"] == keys - MAX_FIELD_ERRORS
    assert error["message"].endswith(f"Unknown field. (and {keys - 1} more)")


def test_forked_workers_draw_different_request_ids() -> None:
    # gunicorn forks its workers from one arbiter: IDs drawn after the fork must
    # differ between the processes (the generator is reseeded in each child).
    import os

    from gennet_sync.context import new_request_id

    new_request_id()  # the parent has drawn before forking, as an arbiter's app may
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next IDs and leave at once
        os.close(read_end)
        os.write(write_end, " ".join(new_request_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write_end)
    parent_ids = {new_request_id() for _ in range(50)}
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    assert len(child_ids) == 50
    assert not parent_ids & child_ids

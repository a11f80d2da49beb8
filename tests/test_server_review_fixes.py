"""Server-side defects found by an adversarial review, each pinned by a test: a
chunked gzip body with a conflicting Content-Length, huge integers, rendering
costs past the depth limit, and request text in a logged traceback."""

from __future__ import annotations

import gzip
import io
import logging
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from flask import Flask, request

from gennet_sync import Compression, GenNetException, ServiceUnavailableError, setup_error_handlers
from gennet_sync.exceptions import MAX_RETRY_AFTER, json_safe, retry_after_seconds
from tests.conftest import serve_app


def _decoding_app() -> Flask:
    app = Flask(__name__)
    setup_error_handlers(app)
    Compression(app)

    @app.post("/data")
    def data() -> dict[str, int]:
        return {"n": len(request.get_data())}

    return app


@pytest.mark.integration
def test_a_chunked_gzip_body_with_a_conflicting_content_length_is_decoded_whole() -> None:
    # Transfer-Encoding overrides Content-Length (RFC 9112 §6.3): werkzeug's server
    # passes both on, and the decoder read only Content-Length bytes: a 200 with
    # half the body.  (gunicorn refuses such a request itself.)
    first, second = gzip.compress(b"A" * 100), gzip.compress(b"B" * 100)
    body = first + second
    with serve_app(_decoding_app()) as base_url:
        port = urlsplit(base_url).port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(first)
                + b"%x\r\n" % len(body)
                + body
                + b"\r\n0\r\n\r\n"
            )
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert reply.rstrip().endswith(b'{"n":200}'), reply[-200:]


def test_a_huge_integer_retry_after_is_dropped_and_the_503_stays_a_503() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/down")
    def down() -> str:
        raise ServiceUnavailableError("down", retry_after=10**5000)

    response = app.test_client().get("/down")
    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert response.get_json()["error"]["metadata"] == {}


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (MAX_RETRY_AFTER, MAX_RETRY_AFTER),
        (MAX_RETRY_AFTER + 1, None),
        (10**400, None),
        ("1e300", None),
        (1e300, None),
        ("30", 30),
    ],
)
def test_retry_after_keeps_at_most_ten_digits_of_seconds(given: object, kept: object) -> None:
    assert retry_after_seconds(given) == kept


def test_a_huge_integer_in_metadata_is_rendered_by_its_size() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/states")
    def states() -> str:
        raise GenNetException("too many states", metadata={"states": 2**20000, "ok": 2**64})

    response = app.test_client().get("/states")
    metadata = response.get_json()["error"]["metadata"]
    assert metadata == {"states": "<integer of about 6021 digits>", "ok": 2**64}


class _CountingList(list[int]):
    """A list that counts how often it is turned into text."""

    printed = 0

    def __repr__(self) -> str:
        _CountingList.printed += 1
        return super().__repr__()

    __str__ = __repr__


@pytest.fixture
def counting() -> Iterator[type[_CountingList]]:
    _CountingList.printed = 0
    yield _CountingList


@pytest.mark.parametrize("levels", range(26, 36))
def test_a_container_past_the_depth_limit_is_summed_up_not_printed(
    counting: type[_CountingList], levels: int
) -> None:
    # Whichever level the limit falls on, the big list is never turned into text.
    deep: list[object] = []
    inner = deep
    for _ in range(levels):
        nested: list[object] = []
        inner.append(nested)
        inner = nested
    inner.append(counting(range(1_000_000)))
    text = repr(json_safe({"x": deep}))
    assert counting.printed == 0
    assert len(text) < 1000
    if levels == 30:  # the big list itself sits at the limit
        assert "<_CountingList of 1000000 items>" in text


def test_a_cycle_is_summed_up_not_printed(counting: type[_CountingList]) -> None:
    cycle: dict[str, object] = {"items": counting(range(1_000_000))}
    cycle["self"] = cycle
    rendered = json_safe(cycle)
    assert counting.printed == 0
    assert rendered["self"] == "<dict of 2 items>"
    assert len(rendered["items"]) == 101  # 100 items and the count of the rest


def test_bytes_are_cut_before_they_are_printed() -> None:
    rendered = json_safe({"body": b"\x00" * 20_000_000})
    assert rendered["body"].endswith("(20000000 bytes)")
    assert len(rendered["body"]) < 1100


def test_request_text_in_an_exception_message_cannot_start_a_log_line() -> None:
    forged = "2026-11-29 12:00:00,000 INFO gennet_sync.auth login ok user=admin"
    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/n/<name>")
    def view(name: str) -> str:
        try:
            raise KeyError(name)
        except KeyError as error:
            raise RuntimeError(f"cannot load network {name}") from error

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    package_logger = logging.getLogger("gennet_sync")
    package_logger.addHandler(handler)
    try:
        response = app.test_client().get(f"/n/x%0D%0A{forged.replace(' ', '%20')}")
    finally:
        package_logger.removeHandler(handler)
    assert response.status_code == 500
    lines = stream.getvalue().splitlines()
    assert not [line for line in lines if line.startswith(forged)], lines
    # Both exceptions of the chain are in the record, each message on one line.
    assert sum("login ok" in line for line in lines) == 3, lines  # path, KeyError, RuntimeError
    assert any(line.startswith("RuntimeError: cannot load network x\\r\\n2026") for line in lines)
    assert any("The above exception was the direct cause" in line for line in lines)
    assert any(line.startswith('  File "') for line in lines)  # the stack is kept as it is

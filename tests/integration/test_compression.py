"""gennet_sync.compression over a real HTTP server, both directions."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask, request

from gennet_sync import Compression, setup_error_handlers
from gennet_sync.compression import compress_bytes
from tests.support.compression import BODY, RAW_BODY, decode, make_app
from tests.support.servers import serve_app

# ---------------------------------------------------------------- request bodies


# ---------------------------------------------------------------- over real HTTP


@pytest.fixture
def live_server() -> Iterator[str]:
    app = make_app()
    app.config["MAX_CONTENT_LENGTH"] = 2 * 1024 * 1024
    with serve_app(app) as base_url:
        yield base_url


@pytest.mark.integration
def test_over_http_both_directions(live_server: str, gzip_bomb: bytes) -> None:
    with requests.Session() as session:
        body = compress_bytes(RAW_BODY, "gzip")
        response = session.post(
            f"{live_server}/echo",
            data=body,
            headers={
                "Content-Encoding": "gzip",
                "Content-Type": "application/json",
                "Accept-Encoding": "gzip",
            },
        )
        assert response.status_code == 200
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.json()["received"] == BODY  # requests undoes the gzip itself
        chunked = session.post(
            f"{live_server}/echo",
            data=iter([body[:100], body[100:]]),  # Transfer-Encoding: chunked, no Content-Length
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert chunked.json()["received"] == BODY
        bomb = session.post(
            f"{live_server}/count", data=gzip_bomb, headers={"Content-Encoding": "gzip"}
        )
        assert bomb.status_code == 413
        assert bomb.json()["error"]["code"] == "REQUEST_ENTITY_TOO_LARGE"
        streamed = session.get(
            f"{live_server}/stream", headers={"Accept-Encoding": "br"}, stream=True
        )
        with streamed:
            assert streamed.headers["Content-Encoding"] == "br"
            raw = streamed.raw.read(decode_content=False)
        lines = decode(raw, "br").decode().splitlines()
        assert [json.loads(line)["chunk"] for line in lines] == [0, 1, 2, 3, 4]


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

"""gennet_sync.compression over a real HTTP server, both directions."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

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

"""The app and payloads the compression tests share, and a decoder for every coding."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
from backports import zstd
from flask import Flask, Response, request, stream_with_context

from gennet_sync import Compression, setup_error_handlers
from gennet_sync.compression import REQUEST_CONTENT_ENCODING_KEY

__all__ = ["BODY", "PAYLOAD", "RAW_BODY", "decode", "make_app"]


#: A JSON answer large enough to be compressed.
PAYLOAD = {"nodes": [{"id": f"gene-{i}", "weight": i * 0.5} for i in range(400)]}


def decode(data: bytes, coding: str) -> bytes:
    """``data`` decoded from content coding ``coding`` (gzip, deflate, br or zstd)."""
    if coding == "gzip":
        return zlib.decompress(data, 31)
    if coding == "deflate":
        return zlib.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    if coding == "zstd":
        return bytes(zstd.decompress(data))
    raise AssertionError(coding)


def make_app(**options: Any) -> Flask:
    """An app with :class:`~gennet_sync.Compression` (``options``) and routes that answer
    large, small and streamed bodies, echo a request body and count its bytes."""
    app = Flask(__name__)
    setup_error_handlers(app)
    Compression(app, **options)

    @app.get("/data")
    def data() -> dict[str, Any]:
        return PAYLOAD

    @app.get("/small")
    def small() -> dict[str, str]:
        return {"ok": "yes"}

    @app.post("/echo")
    def echo() -> dict[str, Any]:
        body = request.get_json()
        return {
            "received": body,
            "encoding_seen": request.headers.get("Content-Encoding"),
            "encoding_sent": request.environ.get(REQUEST_CONTENT_ENCODING_KEY),
        }

    @app.post("/count")
    def count() -> dict[str, int]:
        total = 0
        for _ in range(100_000):
            chunk = request.stream.read(8192)
            if not chunk:
                break
            total += len(chunk)
        return {"bytes": total}

    @app.get("/stream")
    def stream() -> Response:
        def generate() -> Iterator[str]:
            for i in range(5):
                yield json.dumps({"chunk": i, "pad": "x" * 600}) + "\n"

        return Response(stream_with_context(generate()), mimetype="application/x-ndjson")

    return app


#: A request body, and its JSON bytes.
BODY = {"formula": "AG(p)", "genes": list(range(300))}


RAW_BODY = json.dumps(BODY).encode()

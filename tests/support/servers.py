"""Real servers in the test process, and the binaries integration tests need."""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator

from flask import Flask
from werkzeug.serving import make_server

__all__ = ["require_binary", "serve_app"]


def require_binary(name: str) -> str:
    """Path of executable ``name``; fails the test with a clear message when missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is required by this test but is not installed "
            f"(.ci/run installs it; locally: apt-get install {name})"
        )
    return path


@contextlib.contextmanager
def serve_app(app: Flask, port: int = 0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a thread; yields its base URL.

    ``port`` 0 takes a free one; a given port lets a test bring a service back.
    """
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

"""Shared fixtures.  Fixtures that need a real binary (redis-server, gunicorn,
chromium) fail, never skip, when it is missing."""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from werkzeug.serving import make_server

from tests.redis_server import RedisServer


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


def _started_redis_server() -> RedisServer:
    # A free port can be taken between choosing and binding it: try a few.
    for attempt in range(3):
        server = RedisServer()
        try:
            server.start()
        except RuntimeError:
            server.stop()
            if attempt == 2:
                raise
        else:
            return server
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free 127.0.0.1 port, shared by the session.

    Tests sharing it use their own key prefix and must leave it running; a test
    that kills or pauses Redis uses ``disposable_redis_server`` instead.
    """
    server = _started_redis_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def disposable_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to kill, pause and restart."""
    server = _started_redis_server()
    try:
        yield server
    finally:
        server.stop()


class FakeClock:
    """A monotonic clock the test moves by hand (inject it as ``clock=``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

"""A real redis-server for the tests, through the one launcher (``examples/launcher.py``).

:class:`RedisServer` is :class:`~examples.launcher.RedisProcess` with what a
test fixture wants on top: a private directory of its own, removed on
:meth:`~RedisServer.stop`, and a :meth:`~RedisServer.start` that returns only
once the server answers ``PING`` and does nothing when it already runs (a
test that failed half-way may have left it up or down).  A missing binary is
an error, never a skip.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from examples.launcher import RedisProcess, StartupError

__all__ = ["RedisServer", "started_redis_server"]

#: Seconds a starting redis-server gets to answer PING (a loaded machine is slow).
_START_TIMEOUT = 10.0


class RedisServer(RedisProcess):
    """One redis-server on a fixed port, restartable on that port.

    Example::

        server = started_redis_server()
        client = redis.Redis.from_url(server.url)
        server.kill()      # Redis is gone: connections are refused
        server.start()     # back, empty, on the same port
        server.stop()

    Args:
        port: Port to bind; a free one by default.
        args: More redis-server options, e.g. ``["--maxmemory", "1mb"]``.
    """

    def __init__(self, port: int | None = None, args: Sequence[str] = ()) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="gennet-redis-")
        super().__init__(Path(self._dir.name), port=port, args=args)

    def start(self) -> None:
        """Start the server (again) on :attr:`port` and wait until it answers PING."""
        if self.running:
            return
        super().start()
        self.wait_ready(_START_TIMEOUT)

    def stop(self, timeout: float = 10.0, *, quick: bool = False) -> None:
        """Stop the server and remove its directory."""
        super().stop(timeout, quick=quick)
        self._dir.cleanup()


def started_redis_server(args: Sequence[str] = ()) -> RedisServer:
    """A running :class:`RedisServer` on a free port.

    A free port can be taken between choosing and binding it: a few tries.
    """
    for attempt in range(3):
        server = RedisServer(args=args)
        try:
            server.start()
        except StartupError:
            server.stop()
            if attempt == 2:
                raise
        else:
            return server
    raise AssertionError("unreachable")

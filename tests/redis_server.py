"""A real ``redis-server`` on a free 127.0.0.1 port, for integration tests.

:class:`RedisServer` starts the binary with persistence off, waits until it
answers ``PING``, and can kill, pause (SIGSTOP: a Redis that accepts
connections but never answers), resume and restart it on the same port.  A
missing binary is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "free_port"]

_START_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_server_binary() -> str:
    path = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server is required by the Redis storage tests but is not installed "
            "(.ci/run installs it; locally: apt-get install redis-server, or set "
            "REDIS_SERVER=/path/to/redis-server)"
        )
    return path


def _ping(port: int, timeout: float = 0.2) -> bool:
    """Whether a Redis on ``port`` answers PING, with a raw socket (no client state)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on a fixed port, restartable on that port.

    Example::

        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            server.kill()      # Redis is gone: connections are refused
            server.start()     # back, empty, on the same port
    """

    def __init__(self, port: int | None = None) -> None:
        self.binary = _redis_server_binary()
        self.port = port if port is not None else free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="gennet-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server (again) on :attr:`port` and wait until it answers PING."""
        if self.running:
            return
        log = Path(self._dir.name) / "redis.log"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--logfile",
                str(log),
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                text = log.read_text(errors="replace") if log.exists() else "(no log)"
                raise RuntimeError(
                    f"redis-server did not start on 127.0.0.1:{self.port}:\n{text[-2000:]}"
                )
            time.sleep(0.01)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): what a crash looks like to clients."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused process must die too
            process.kill()
        process.wait(timeout=_START_TIMEOUT)

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it still accepts connections, never answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server and remove its directory."""
        self.kill()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

"""Start and stop real servers for the demo, the tests and the benchmarks: gunicorn
and redis-server.  This is the one place that spawns them.

Every process is started in a session (process group) of its own, so stopping
it stops its children too (a gunicorn master and its workers), and its output
goes to a log file rather than a pipe nobody reads::

    with ServiceProcess("grn", "examples.grn_service:create_app()", log_dir) as grn:
        requests.get(f"{grn.base_url}/health", timeout=5)

Only 127.0.0.1 is used; ports are free ones the OS hands out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import requests

__all__ = [
    "EXAMPLES_DIR",
    "GUNICORN_CONFIG",
    "ManagedProcess",
    "RedisProcess",
    "ServiceProcess",
    "StartupError",
    "free_port",
]

EXAMPLES_DIR: Final = Path(__file__).resolve().parent
#: The gunicorn settings file every example service is started with.
GUNICORN_CONFIG: Final = EXAMPLES_DIR / "gunicorn.conf.py"
_PROJECT_ROOT: Final = EXAMPLES_DIR.parent


class StartupError(RuntimeError):
    """A process exited or never became ready; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ManagedProcess:
    """A subprocess in its own process group, logging to a file; stopped as a group.

    Example::

        process = ManagedProcess("sleeper", ["sleep", "60"], Path("/tmp"))
        process.start()
        process.stop()

    Args:
        name: Name for messages and the log file.
        command: The command line.
        log_dir: Directory of the log file ``<name>.log`` (appended to on restarts).
        env: Extra environment variables.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.log_path = log_dir / f"{name}.log"
        self.env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process ID (the group's ID too), while started."""
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the process (its readiness is checked by :meth:`wait_ready`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._close_log()
        self._log = self.log_path.open("ab")
        environment = {**os.environ, **self.env}
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=_PROJECT_ROOT,
            start_new_session=True,
        )

    def is_ready(self) -> bool:
        """Whether the process answers; subclasses probe their protocol."""
        return self.running

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until :meth:`is_ready`.

        Raises:
            StartupError: It exited, or was not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise StartupError(f"{self.name} exited during startup\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.05)
        raise StartupError(f"{self.name} not ready after {timeout:.0f} s\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0, *, quick: bool = False) -> None:
        """Stop the process group; SIGKILL it after ``timeout`` seconds; idempotent.

        Args:
            timeout: Seconds to wait before killing.
            quick: Send SIGINT (gunicorn and redis-server: shut down now, without
                waiting for requests and idle keep-alive connections) instead of
                SIGTERM (gunicorn: graceful shutdown).
        """
        process = self._process
        if process is not None:
            self._signal_group(signal.SIGINT if quick else signal.SIGTERM)
            # A paused (SIGSTOP) group only acts on the signal once it runs again.
            self._signal_group(signal.SIGCONT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                process.wait(timeout)
            # Workers left behind by a master that died first go with the group.
            self._signal_group(signal.SIGKILL)
            self._process = None
        self._close_log()

    def kill(self, timeout: float = 10.0) -> None:
        """Kill the process group at once (SIGKILL): what a crash looks like to clients.

        Idempotent; :meth:`start` brings it back with the same command (same port).
        """
        process = self._process
        if process is None:
            return
        self._signal_group(signal.SIGKILL)
        process.wait(timeout)
        self._process = None

    def pause(self) -> None:
        """Freeze the process group (SIGSTOP): connections are accepted, never answered."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused process group run again (SIGCONT)."""
        self._signal_group(signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> None:
        """Kill the process and start it again (same command, same port); wait until ready.

        Raises:
            StartupError: It did not become ready within ``timeout`` seconds.
        """
        self.kill()
        self.start()
        self.wait_ready(timeout)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the group has already exited
            os.killpg(self._process.pid, sig)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log file, indented, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "    (no log)"
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class ServiceProcess(ManagedProcess):
    """A Flask app served by gunicorn with :data:`GUNICORN_CONFIG` on 127.0.0.1.

    Ready when ``GET /health`` answers 200.

    Example::

        service = ServiceProcess("qualitative", "examples.qualitative_service:create_app()",
                                 log_dir, workers=2)
        service.start(); service.wait_ready()
        requests.post(f"{service.base_url}/ctl/verify", json=..., timeout=10)
        service.stop()

    Args:
        name: Name for messages and the log file.
        app: gunicorn's app spec, ``module:factory()``.
        log_dir: Where the log file goes.
        port: Port to bind; a free one by default (kept across restarts).
        workers: gunicorn worker processes.
        threads: Threads per (gthread) worker.
        env: Extra environment variables for the service.
        config: gunicorn settings file; None runs gunicorn with its own defaults
            (a sync worker, no preloading) plus ``options``.
        options: More gunicorn command-line options, e.g.
            ``["--worker-class", "gthread", "--keep-alive", "30"]``.
        health_path: Path whose 200 means ready; None: any HTTP answer (for an
            app without a health endpoint).
    """

    def __init__(
        self,
        name: str,
        app: str,
        log_dir: Path,
        *,
        port: int | None = None,
        workers: int = 2,
        threads: int = 4,
        env: Mapping[str, str] | None = None,
        config: Path | None = GUNICORN_CONFIG,
        options: Sequence[str] = (),
        health_path: str | None = "/health",
    ) -> None:
        self.port = port or free_port()
        self.workers = workers
        self.health_path = health_path
        settings = [] if config is None else ["--config", str(config)]
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            *settings,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--name",
            name,
            *options,
            app,
        ]
        service_env = {"GENNET_SERVICE_NAME": name, "PYTHONUNBUFFERED": "1", **(env or {})}
        super().__init__(name, command, log_dir, service_env)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def is_ready(self) -> bool:
        try:
            # A fresh connection each time: a kept-alive one could hide a restart.
            response = requests.get(
                f"{self.base_url}{self.health_path or '/'}",
                timeout=1.0,
                headers={"Connection": "close"},
            )
        except requests.RequestException:
            return False
        with response:
            return self.health_path is None or response.status_code == 200


class RedisProcess(ManagedProcess):
    """A throwaway redis-server on 127.0.0.1: no persistence, a free port.

    Example::

        with RedisProcess(log_dir) as redis_server:
            os.environ["GENNET_BREAKER_STORAGE"] = redis_server.url

    It can be killed, paused (SIGSTOP: a Redis that accepts connections but
    never answers), resumed and restarted empty on the same port
    (:meth:`~ManagedProcess.kill`, :meth:`~ManagedProcess.pause`,
    :meth:`~ManagedProcess.resume`, :meth:`~ManagedProcess.restart`).

    Args:
        log_dir: Where the log file goes; also redis-server's working directory.
        port: Port to bind; a free one by default (kept across restarts).
        args: More redis-server options, e.g. ``["--maxmemory", "1mb"]``.
        name: Name for messages and the log file.

    Raises:
        StartupError: When ``redis-server`` is not installed (the ``REDIS_SERVER``
            environment variable may name the binary).
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        name: str = "redis",
    ) -> None:
        executable = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if executable is None:
            raise StartupError(
                "redis-server is not installed (apt-get install redis-server, "
                "or set REDIS_SERVER=/path/to/redis-server)"
            )
        self.port = port or free_port()
        command = [
            executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(log_dir),
            "--daemonize",
            "no",
            *args,
        ]
        super().__init__(name, command, log_dir)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

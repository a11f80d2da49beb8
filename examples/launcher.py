"""Start and stop real servers for the demo, the tests and the benchmarks: gunicorn,
redis-server and prometheus.  This is the one place that spawns them.

Every process is started in a session (process group) of its own, so stopping
it stops its children too (a gunicorn master and its workers), and its output
goes to a log file rather than a pipe nobody reads::

    with ServiceProcess("grn", "examples.grn_service:create_app()", log_dir) as grn:
        requests.get(f"{grn.base_url}/health", timeout=5)

Only 127.0.0.1 is used; ports are free ones the OS hands out.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import requests

__all__ = [
    "EXAMPLES_DIR",
    "GUNICORN_CONFIG",
    "ManagedProcess",
    "ProcessGroup",
    "PrometheusProcess",
    "RedisClusterProcesses",
    "RedisNodeProcess",
    "RedisProcess",
    "RedisSentinelProcesses",
    "ServiceProcess",
    "StartupError",
    "free_cluster_port",
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


class PrometheusProcess(ManagedProcess):
    """A throwaway Prometheus server on 127.0.0.1 scraping the given targets every second.

    Example::

        with PrometheusProcess(log_dir, {"workflow": [workflow.base_url]}) as prometheus:
            requests.get(f"{prometheus.base_url}/api/v1/query", params={"query": "up"})

    Args:
        log_dir: Where the log file, its settings file and its database go.
        jobs: Scrape targets by job name, as base URLs (``http://127.0.0.1:8000``);
            each is scraped at ``/metrics``.
        rule_files: Rule files it loads (alerting rules).
        port: Port to bind; a free one by default.

    Raises:
        StartupError: When ``prometheus`` is not installed (Debian's ``prometheus``
            package; the ``PROMETHEUS`` environment variable may name the binary).
    """

    def __init__(
        self,
        log_dir: Path,
        jobs: Mapping[str, Sequence[str]],
        *,
        rule_files: Sequence[Path] = (),
        port: int | None = None,
    ) -> None:
        executable = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
        if executable is None:
            raise StartupError(
                "prometheus is not installed (apt-get install prometheus, "
                "or set PROMETHEUS=/path/to/prometheus)"
            )
        self.port = port or free_port()
        settings = log_dir / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write it.
        settings.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(path) for path in rule_files],
                    "scrape_configs": [
                        {
                            "job_name": job,
                            "static_configs": [
                                {"targets": [url.split("://", 1)[-1] for url in urls]}
                            ],
                        }
                        for job, urls in jobs.items()
                    ],
                }
            )
        )
        command = [
            executable,
            f"--config.file={settings}",
            f"--storage.tsdb.path={log_dir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        super().__init__("prometheus", command, log_dir)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def is_ready(self) -> bool:
        try:
            response = requests.get(f"{self.base_url}/-/ready", timeout=1.0)
        except requests.RequestException:
            return False
        with response:
            return response.status_code == 200


def free_cluster_port() -> int:
    """A free 127.0.0.1 port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue  # the OS hands out ports up to 60999: this one has no bus port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise StartupError("no free port pair (port, port + 10000) found on 127.0.0.1")


def _redis_client(port: int) -> Any:
    """A redis-py client of one local server (or sentinel): short timeouts, no retries."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def _wait_for(
    condition: Callable[[], bool], what: str, processes: Sequence[ManagedProcess], timeout: float
) -> None:
    """Poll ``condition`` until true; :class:`StartupError` with every log after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # a server still starting refuses or times out: poll again
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"  {p.name}:\n{p.log_tail(15)}" for p in processes)
            raise StartupError(f"{what} not reached after {timeout:.0f} s\n{logs}")
        time.sleep(0.1)


class RedisNodeProcess(RedisProcess):
    """A redis-server of a Cluster or Sentinel setup: a name and log of its own, extra settings.

    Example::

        node = RedisNodeProcess("replica", log_dir, extra=["--replicaof", "127.0.0.1", "6379"])

    Args:
        name: Name for messages and the log file (several nodes share ``log_dir``).
        log_dir: Where the log file, and the node's own files, go.
        port: Port to bind; a free one by default (kept across restarts).
        extra: More ``redis-server`` arguments (``--option value`` pairs).
    """

    def __init__(
        self, name: str, log_dir: Path, *, port: int | None = None, extra: Sequence[str] = ()
    ) -> None:
        super().__init__(log_dir, port=port)
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        work_dir = log_dir / name
        work_dir.mkdir(parents=True, exist_ok=True)
        # A replica syncs at once, not after redis-server's 5 s wait for more replicas.
        self.command = [
            *self.command,
            "--dir",
            str(work_dir),
            "--repl-diskless-sync-delay",
            "0",
            *extra,
        ]

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the server at once (paused or not): what a crashed host looks like."""
        super().kill(timeout)
        self._close_log()


class ProcessGroup(abc.ABC):
    """Several processes started and stopped together, as a context manager.

    ``with`` starts them all and stops every one on the way out; when starting
    fails halfway, those already started are stopped before the error propagates.
    """

    @abc.abstractmethod
    def start(self) -> None:
        """Start every process and wait until the group is ready."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every process (idempotent; never raises for one that is gone)."""

    def __enter__(self) -> Self:
        try:
            self.start()
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


class RedisClusterProcesses(ProcessGroup):
    """A Redis Cluster on 127.0.0.1: ``primaries`` nodes, each with ``replicas``.

    Built with ``redis-cli --cluster create``; ready when every node reports
    ``cluster_state:ok`` and every replica is in sync.  A killed primary's
    replica takes over after ``node_timeout`` ms (then some); a restarted node
    rejoins with the slots (or the role) its ``nodes.conf`` remembers.

    Example::

        with RedisClusterProcesses(log_dir) as cluster:
            storage = RedisStorage(cluster.url)

    Args:
        log_dir: Where the nodes' logs and files go.
        primaries: Primary nodes (3 at least, as ``redis-cli`` demands).
        replicas: Replicas per primary.
        node_timeout: ``cluster-node-timeout`` (ms): how long a node may be
            unreachable before it is failed (and failed over).

    Raises:
        StartupError: When redis-server or redis-cli is missing, or the cluster
            does not form (the message has every node's log).
    """

    def __init__(
        self, log_dir: Path, *, primaries: int = 3, replicas: int = 0, node_timeout: int = 1000
    ) -> None:
        self.log_dir = log_dir
        cli = shutil.which("redis-cli")
        if cli is None:
            raise StartupError("redis-cli is not installed (Debian: apt-get install redis-tools)")
        self._cli = cli
        self.replicas = replicas
        self.nodes = [
            RedisNodeProcess(
                f"cluster-{index}",
                log_dir,
                port=(port := free_cluster_port()),
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-node-timeout",
                    str(node_timeout),
                    # A replica that lost its primary a while ago still takes over.
                    "--cluster-replica-validity-factor",
                    "0",
                ],
            )
            for index in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port>,...`` naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> None:
        """Start every node, create the cluster and wait until it is ready."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready()
        command = [
            self._cli,
            "--cluster",
            "create",
            *(f"127.0.0.1:{node.port}" for node in self.nodes),
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        ]
        created = subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False, cwd=self.log_dir
        )
        if created.returncode != 0:
            raise StartupError(
                f"redis-cli --cluster create failed ({created.returncode}):\n"
                f"{created.stdout}{created.stderr}"
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and its replicas are in sync.

        Raises:
            StartupError: Not so within ``timeout`` seconds (with every log).
        """
        _wait_for(self._ready, "cluster_state:ok on every node", self.nodes, timeout)

    def _ready(self) -> bool:
        for node in self.nodes:
            if not node.running:
                continue
            client = _redis_client(node.port)
            try:
                if client.cluster("INFO")["cluster_state"] != "ok":
                    return False
                replication = client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
            finally:
                client.close()
        return True

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> None:
        """Wait until no node names ``old_port`` a primary and the cluster is ready again.

        Raises:
            StartupError: No failover within ``timeout`` seconds (with every log).
        """

        def failed_over() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                client = _redis_client(node.port)
                try:
                    slots = client.execute_command("CLUSTER SLOTS")
                finally:
                    client.close()
                if any(int(entry[2][1]) == old_port for entry in slots):
                    return False
            return self._ready()

        _wait_for(failed_over, f"a failover of port {old_port}", self.nodes, timeout)

    def primary_of(self, key: str) -> RedisNodeProcess:
        """The node that holds ``key``'s slot now (asked of any running node)."""
        for node in self.nodes:
            if not node.running:
                continue
            client = _redis_client(node.port)
            try:
                slot = int(client.cluster("KEYSLOT", key))
                for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                    if int(start) <= slot <= int(end):
                        port = int(primary[1])
                        return next(n for n in self.nodes if n.port == port)
            finally:
                client.close()
        raise StartupError(f"no running node knows the slot of {key!r}")

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        for node in self.nodes:
            node.stop(quick=True)


class RedisSentinelProcesses(ProcessGroup):
    """A Redis primary, its replica and ``sentinels`` sentinels on 127.0.0.1.

    The sentinels (``redis-server --sentinel``, what Debian's redis-sentinel
    runs) watch the primary as ``service``, fail it over to the replica
    ``down_after`` ms after it stops answering, and agree on it with a quorum
    of 1.  Ready when every sentinel names the primary and knows the replica,
    and the replica is in sync.

    Example::

        with RedisSentinelProcesses(log_dir) as setup:
            storage = RedisStorage(setup.url)
            setup.primary.kill()  # the replica is promoted after ~down_after ms

    Args:
        log_dir: Where the logs, the sentinels' config files and data go.
        service: The name the sentinels give the primary.
        sentinels: How many sentinels watch it.
        down_after: ``down-after-milliseconds``.

    Raises:
        StartupError: When redis-server is missing, or the setup does not
            become ready (the message has every log).
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        service: str = "gennet",
        sentinels: int = 1,
        down_after: int = 500,
    ) -> None:
        self.service = service
        primary = RedisNodeProcess("sentinel-primary", log_dir)
        replica = RedisNodeProcess(
            "sentinel-replica",
            log_dir,
            extra=["--replicaof", "127.0.0.1", str(primary.port)],
        )
        #: The two data nodes; which of them is the primary changes with failovers.
        self.servers = [primary, replica]
        self.sentinels: list[RedisNodeProcess] = []
        for index in range(sentinels):
            port = free_port()
            config = log_dir / f"sentinel-{index}.conf"
            # A sentinel rewrites its config file (what it learns, failovers included).
            config.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f'dir "{log_dir}"\n'
                f"sentinel monitor {service} 127.0.0.1 {primary.port} 1\n"
                f"sentinel down-after-milliseconds {service} {down_after}\n"
                f"sentinel failover-timeout {service} 10000\n"
                f"sentinel parallel-syncs {service} 1\n"
            )
            process = RedisNodeProcess(f"sentinel-{index}", log_dir, port=port)
            process.command = [process.command[0], str(config), "--sentinel"]
            self.sentinels.append(process)

    @property
    def sentinel_ports(self) -> list[int]:
        """The sentinels' ports."""
        return [sentinel.port for sentinel in self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<port>,.../<service>/0``."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    @property
    def processes(self) -> list[ManagedProcess]:
        """Every process of the setup."""
        return [*self.servers, *self.sentinels]

    def primary_port(self) -> int:
        """The port of the primary the first answering sentinel names now."""
        for port in self.sentinel_ports:
            client = _redis_client(port)
            try:
                address = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.service)
            except Exception:  # this sentinel is down: ask the next
                continue
            finally:
                client.close()
            if address:
                return int(address[1])
        raise StartupError(f"no sentinel names a primary for {self.service!r}")

    @property
    def primary(self) -> RedisNodeProcess:
        """The data node the sentinels name the primary now."""
        port = self.primary_port()
        return next(server for server in self.servers if server.port == port)

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> None:
        """Wait until the sentinels name a primary other than ``old_port`` and it acts as one.

        Raises:
            StartupError: No failover within ``timeout`` seconds (with every log).
        """

        def promoted() -> bool:
            port = self.primary_port()
            if port == old_port:
                return False
            client = _redis_client(port)
            try:
                return bool(client.info("replication")["role"] == "master")
            finally:
                client.close()

        _wait_for(promoted, f"a primary other than port {old_port}", self.processes, timeout)

    def start(self) -> None:
        """Start the primary, the replica and the sentinels; wait until they are ready."""
        for server in self.servers:
            server.start()
        for server in self.servers:
            server.wait_ready()
        # A sentinel learns of replicas from the primary's INFO, which it asks for
        # at once and then every 10 s: a replica in sync by then is known at once.
        _wait_for(self._replica_in_sync, "the replica in sync", self.servers, 30.0)
        for sentinel in self.sentinels:
            sentinel.start()
        for sentinel in self.sentinels:
            sentinel.wait_ready()
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every sentinel names a running primary that has an in-sync replica.

        Raises:
            StartupError: Not so within ``timeout`` seconds (with every log).
        """
        _wait_for(self._ready, "a primary with an in-sync replica", self.processes, timeout)

    def _ready(self) -> bool:
        ports = set()
        for port in self.sentinel_ports:
            client = _redis_client(port)
            try:
                address = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.service)
                replicas = client.execute_command("SENTINEL REPLICAS", self.service)
            finally:
                client.close()
            ports.add(int(address[1]))
            # The sentinel must know a replica it can promote.
            usable = [
                r for r in replicas if "s_down" not in _flags(r) and "disconnected" not in _flags(r)
            ]
            if not usable:
                return False
        if len(ports) != 1:
            return False
        primary = next(server for server in self.servers if server.port in ports)
        return primary.running and self._replica_in_sync(primary.port)

    def _replica_in_sync(self, port: int | None = None) -> bool:
        """Whether the primary (on ``port``; the first server by default) has an online replica."""
        client = _redis_client(self.servers[0].port if port is None else port)
        try:
            replication = client.info("replication")
        finally:
            client.close()
        return bool(
            replication["role"] == "master"
            and replication.get("connected_slaves", 0) >= 1
            and replication.get("slave0", {}).get("state") == "online"
        )

    def stop(self) -> None:
        """Stop every process (idempotent)."""
        for process in self.processes:
            process.stop(quick=True)


def _flags(replica: Any) -> str:
    """The ``flags`` of a ``SENTINEL REPLICAS`` entry (a dict, or a flat name/value list)."""
    if isinstance(replica, dict):
        return str(replica.get("flags", ""))
    fields = dict(zip(replica[::2], replica[1::2], strict=True))
    return str(fields.get("flags", ""))

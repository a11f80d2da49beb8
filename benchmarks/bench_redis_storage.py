"""What sharing breaker state through Redis costs per call, against pybreaker's.

Runs against a real redis-server (started on a free 127.0.0.1 port, or the one
``--redis-url`` names) and compares, side by side in one process with
interleaved rounds:

- gennet_sync, memory storage (the default)
- gennet_sync, :class:`~gennet_sync.redis_storage.RedisStorage` on one server
- gennet_sync, ``RedisStorage`` through Redis Sentinel (a primary, its replica
  and a sentinel) and on a Redis Cluster (three primaries), both started here
  (``--no-topologies``: not)
- pybreaker, memory storage
- pybreaker, ``CircuitRedisStorage``

on three paths: a successful call in CLOSED, a failed call in CLOSED (threshold
never reached), and a rejected call in OPEN; plus the round trips of the one
call that trips the breaker.  Round trips are counted by the client's
connection (``send_packed_command``: one per request written, a pipeline being
one), commands by what it packs; what a Lua script runs inside Redis is not a
round trip and is not counted.

Usage::

    .venv/bin/python -m benchmarks.bench_redis_storage [--quick] [--redis-url URL] [--no-topologies]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pybreaker
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from examples.launcher import RedisClusterProcesses, RedisProcess, RedisSentinelProcesses
from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError
from gennet_sync.redis_storage import RedisClient, RedisStorage

__all__ = ["main"]

NEVER = 10**9  # a failure threshold no benchmark reaches


class CountingConnection(redis.Connection):
    """Counts requests written (round trips) and commands packed, per class."""

    round_trips = 0
    commands = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).round_trips += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        type(self).commands += 1
        super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        type(self).commands += len(commands)
        return super().pack_commands(commands)  # type: ignore[no-untyped-call]


def counter_class(base: type[redis.Connection] = redis.Connection) -> type[CountingConnection]:
    """A connection class of its own (so its counts are its own), counting on top of ``base``."""
    bases = (CountingConnection,) if base is redis.Connection else (CountingConnection, base)
    return type("Counter", bases, {"round_trips": 0, "commands": 0})


#: What every benchmarked client gets: short timeouts, no retries.
QUICK: dict[str, Any] = {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}


def sentinel_client(
    setup: RedisSentinelProcesses,
) -> tuple[RedisClient, type[CountingConnection]]:
    """The primary the sentinels name, through counting connections."""
    counter = counter_class(SentinelManagedConnection)
    sentinels = [("127.0.0.1", port) for port in setup.sentinel_ports]
    quick = {**QUICK, "retry": Retry(NoBackoff(), 0)}
    sentinel = Sentinel(sentinels, sentinel_kwargs=quick)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(  # type: ignore[no-untyped-call]
        setup.service, connection_class=counter, **quick
    )
    return client, counter


def cluster_client(
    cluster: RedisClusterProcesses,
) -> tuple[RedisClient, type[CountingConnection]]:
    """A cluster client whose connections to every node count."""
    counter = counter_class()
    client = RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", node.port) for node in cluster.nodes],  # type: ignore[no-untyped-call]
        retry=Retry(NoBackoff(), 0),
        **QUICK,
    )
    # A cluster client takes no connection class: its node pools are given one,
    # emptied of the connections the topology discovery made.
    for node in client.get_nodes():  # type: ignore[no-untyped-call]
        pool = node.redis_connection.connection_pool
        pool.reset()
        pool.connection_class = counter
    return client, counter


def counting_client(url: str) -> tuple[redis.Redis, type[CountingConnection]]:
    counter = counter_class()
    kwargs = redis.ConnectionPool.from_url(url).connection_kwargs
    pool = redis.ConnectionPool(
        connection_class=counter,
        host=kwargs.get("host", "127.0.0.1"),
        port=kwargs.get("port", 6379),
        db=kwargs.get("db", 0),
        password=kwargs.get("password"),
        retry=Retry(NoBackoff(), 0),
        **QUICK,
    )
    return redis.Redis(connection_pool=pool), counter


def ok() -> int:
    return 1


class DownstreamError(Exception):
    pass


def fail() -> int:
    raise DownstreamError("downstream failed")


@dataclass
class Contender:
    """One breaker implementation on one path."""

    label: str
    call: Callable[[], None]
    counter: type[CountingConnection] | None = None
    timings: list[float] = field(default_factory=list)
    round_trips: int = 0
    commands: int = 0
    calls: int = 0

    def run(self, calls: int) -> None:
        call = self.call
        trips_before = self.counter.round_trips if self.counter else 0
        commands_before = self.counter.commands if self.counter else 0
        started = time.perf_counter_ns()
        for _ in range(calls):
            call()
        elapsed = time.perf_counter_ns() - started
        self.timings.append(elapsed / calls)
        self.calls += calls
        if self.counter is not None:
            self.round_trips += self.counter.round_trips - trips_before
            self.commands += self.counter.commands - commands_before


def gennet_call(breaker: CircuitBreaker, func: Callable[[], int]) -> Callable[[], None]:
    def call() -> None:
        with suppress(DownstreamError, CircuitBreakerError):
            breaker.call(func)

    return call


def pybreaker_call(
    breaker: pybreaker.CircuitBreaker, func: Callable[[], int]
) -> Callable[[], None]:
    def call() -> None:
        with suppress(DownstreamError, pybreaker.CircuitBreakerError):
            breaker.call(func)

    return call


#: Builds a counted client: one server, Sentinel or Cluster.
ClientFactory = Callable[[], tuple[RedisClient, type[CountingConnection]]]


class Setup:
    """Builds the breakers for a path, each with its own keys and counter.

    Args:
        url: The one Redis server's URL.
        topologies: More gennet_sync contenders: label -> counted client factory
            (Sentinel, Cluster).
    """

    def __init__(self, url: str, topologies: dict[str, ClientFactory] | None = None) -> None:
        self.url = url
        self.topologies = topologies or {}
        self.closers: list[Callable[[], None]] = []

    def gennet_memory(self, threshold: int) -> CircuitBreaker:
        return CircuitBreaker(threshold, 60.0, name=f"bench-{uuid.uuid4().hex[:8]}")

    def gennet_redis(
        self, threshold: int, factory: ClientFactory | None = None
    ) -> tuple[CircuitBreaker, type[CountingConnection]]:
        client, counter = (factory or (lambda: counting_client(self.url)))()
        storage = RedisStorage(client, prefix=f"bench:{uuid.uuid4().hex[:8]}")
        self.closers.append(client.close)
        breaker = CircuitBreaker(threshold, 60.0, name="svc", storage=storage)
        return breaker, counter

    def pybreaker_memory(self, threshold: int) -> pybreaker.CircuitBreaker:
        return pybreaker.CircuitBreaker(fail_max=threshold, reset_timeout=60)

    def pybreaker_redis(
        self, threshold: int
    ) -> tuple[pybreaker.CircuitBreaker, type[CountingConnection]]:
        client, counter = counting_client(self.url)
        self.closers.append(client.close)
        storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, client, namespace=f"bench-{uuid.uuid4().hex[:8]}"
        )
        breaker = pybreaker.CircuitBreaker(
            fail_max=threshold, reset_timeout=60, state_storage=storage
        )
        return breaker, counter

    def contenders(self, path: str) -> list[Contender]:
        threshold = 5 if path == "rejection" else NEVER
        func = ok if path == "success" else fail
        gm = self.gennet_memory(threshold)
        gr, gr_counter = self.gennet_redis(threshold)
        others = {
            label: self.gennet_redis(threshold, factory)
            for label, factory in self.topologies.items()
        }
        pm = self.pybreaker_memory(threshold)
        pr, pr_counter = self.pybreaker_redis(threshold)
        if path == "rejection":
            for gennet in (gm, gr, *(breaker for breaker, _ in others.values())):
                gennet.open()
            for py in (pm, pr):
                py.open()
        return [
            Contender("gennet_sync memory", gennet_call(gm, func)),
            Contender("gennet_sync Redis", gennet_call(gr, func), gr_counter),
            *(
                Contender(label, gennet_call(breaker, func), counter)
                for label, (breaker, counter) in others.items()
            ),
            Contender("pybreaker memory", pybreaker_call(pm, func)),
            Contender("pybreaker Redis", pybreaker_call(pr, func), pr_counter),
        ]

    def close(self) -> None:
        for close in self.closers:
            close()


def trip_round_trips(setup: Setup, threshold: int = 3) -> dict[str, tuple[int, int]]:
    """Round trips and commands of the single call that trips each Redis-backed breaker."""
    gennet, gennet_counter = setup.gennet_redis(threshold)
    others = {
        label: setup.gennet_redis(threshold, factory) for label, factory in setup.topologies.items()
    }
    py, py_counter = setup.pybreaker_redis(threshold)
    measured: dict[str, tuple[int, int]] = {}
    for label, call, counter in (
        ("gennet_sync Redis", gennet_call(gennet, fail), gennet_counter),
        *(
            (label, gennet_call(breaker, fail), counter)
            for label, (breaker, counter) in others.items()
        ),
        ("pybreaker Redis", pybreaker_call(py, fail), py_counter),
    ):
        for _ in range(threshold - 1):
            call()
        trips, commands = counter.round_trips, counter.commands
        call()
        measured[label] = (counter.round_trips - trips, counter.commands - commands)
    for breaker in (gennet, *(breaker for breaker, _ in others.values())):
        assert breaker.state.value == "open", breaker.state
    assert py.current_state == pybreaker.STATE_OPEN, py.current_state
    return measured


def bench_path(setup: Setup, path: str, rounds: int, calls: int) -> list[Contender]:
    contenders = setup.contenders(path)
    for contender in contenders:  # warm-up: connections made, scripts loaded
        contender.run(max(10, calls // 20))
        contender.timings.clear()
        contender.round_trips = contender.commands = contender.calls = 0
    for round_number in range(rounds):
        # Rotate who goes first so no contender always runs on a cold cache.
        shift = round_number % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            contender.run(calls)
    return contenders


def report(path: str, contenders: list[Contender]) -> None:
    floor = statistics.median(contenders[0].timings)
    print(f"\n{path} path (median ns/call over {len(contenders[0].timings)} rounds)")
    header = ("breaker", "ns/call", "x gennet mem", "trips/call", "cmds/call")
    print("  {:<22} {:>10} {:>13} {:>11} {:>10}".format(*header))
    for contender in contenders:
        median = statistics.median(contender.timings)
        if contender.counter is None:
            trips = cmds = "-"
        else:
            trips = f"{contender.round_trips / contender.calls:.3f}"
            cmds = f"{contender.commands / contender.calls:.3f}"
        ratio = median / floor
        print(f"  {contender.label:<22} {median:>10.0f} {ratio:>13.2f} {trips:>11} {cmds:>10}")
    by_label = {c.label: statistics.median(c.timings) for c in contenders}
    print(
        f"  gennet Redis / gennet memory: "
        f"{by_label['gennet_sync Redis'] / by_label['gennet_sync memory']:.2f}x; "
        f"pybreaker Redis / gennet Redis: "
        f"{by_label['pybreaker Redis'] / by_label['gennet_sync Redis']:.1f}x"
    )


@contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    with (
        tempfile.TemporaryDirectory(prefix="bench-redis-") as log_dir,
        RedisProcess(Path(log_dir)) as server,
    ):
        yield server.url


@contextmanager
def topologies(start: bool) -> Iterator[dict[str, ClientFactory]]:
    """A Sentinel setup and a Cluster started in a temporary directory (none if not ``start``)."""
    if not start:
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory, ExitStack() as stack:
        sentinel = stack.enter_context(RedisSentinelProcesses(Path(directory) / "sentinel"))
        cluster = stack.enter_context(RedisClusterProcesses(Path(directory) / "cluster"))
        yield {
            "gennet_sync Sentinel": lambda: sentinel_client(sentinel),
            "gennet_sync Cluster": lambda: cluster_client(cluster),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    parser.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    parser.add_argument(
        "--no-topologies",
        action="store_true",
        help="skip Redis Sentinel and Redis Cluster (otherwise started here)",
    )
    args = parser.parse_args(argv)
    rounds, calls = (5, 400) if args.quick else (15, 2000)

    with redis_url(args.redis_url) as url, topologies(not args.no_topologies) as more:
        setup = Setup(url, more)
        try:
            print(f"Redis at {url}; {rounds} rounds x {calls} calls per contender and path")
            for path in ("success", "failure", "rejection"):
                # Failed pybreaker calls through Redis cost ~1 ms: fewer of them.
                path_calls = calls if path == "success" else max(50, calls // 4)
                report(path, bench_path(setup, path, rounds, path_calls))
            print("\nthe call that trips (threshold 3): round trips / commands")
            for label, (trips, commands) in trip_round_trips(setup).items():
                print(f"  {label:<22} {trips:>3} / {commands}")
        finally:
            setup.close()


if __name__ == "__main__":
    main()

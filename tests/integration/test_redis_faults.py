"""The shared breaker under Redis faults, end to end: real gunicorn, real redis-server.

A gateway service (``tests/support/fault_gateway.py``, two gunicorn workers sharing one
breaker through Redis) relays every call to a downstream served by this test.
Each test trips the breaker fleet-wide, lets one worker start a HALF_OPEN trial
and holds that call at the downstream; then it breaks Redis (out of memory,
hung, killed and restarted, flushed) or SIGKILLs the worker running the trial,
lets the trial end, heals Redis and the downstream, and measures how long the
fleet takes to flow again.  Every answer a caller gets is the downstream's 200
or the 503 error envelope: never a 500, never a dropped connection (except the
call in the worker that was killed).

The bounds asserted here are the ones README's "Sharing breaker state" section
states.  Measured times are printed (``pytest -s``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis
import requests

from examples.launcher import ServiceProcess
from gennet_sync.circuit_breaker import TRIAL_LEASE_MARGIN
from tests.support.fault_gateway import Downstream
from tests.support.redis_server import RedisServer, started_redis_server
from tests.support.servers import serve_app

pytestmark = pytest.mark.integration

#: The gateway's read timeout: a trial can run 1 + READ_TIMEOUT s (its total limit).
READ_TIMEOUT = 8.0
#: How long the fleet keeps a trial's slot for a worker that never reports.
LEASE = 1.0 + READ_TIMEOUT + TRIAL_LEASE_MARGIN
#: The workers' storage: sync every 0.1 s, probe a failed Redis every 0.2-0.5 s.
#: Socket timeouts of 1 s, so that a loaded machine does not turn a slow reply
#: into "unavailable" (and a local decision) where the test needs the fleet's.
STORAGE_OPTIONS = (
    "sync_interval=0.1&retry_backoff=0.2&max_retry_backoff=0.5"
    "&socket_timeout=1&socket_connect_timeout=1"
)
#: Seconds after Redis is healthy again within which calls flow (README states
#: it): the storage's longest backoff (0.5 s), a sync (0.1 s) and one trial,
#: with room for a loaded machine.  Below LEASE: no lease ran out to free it.
FLOW_BOUND = 5.0
#: Consecutive 200s that count as "calls flow again".
FLOWING = 20
BREAKER = "fault-downstream"


@dataclass
class Fleet:
    """The gateway, its downstream and Redis; every answer a caller got."""

    gateway: ServiceProcess
    downstream: Downstream
    redis_server: RedisServer
    answers: list[tuple[int, str]] = field(default_factory=list)

    @property
    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, socket_timeout=2)

    def call(self) -> int:
        """One call through the gateway (a new connection: either worker may take it)."""
        response = requests.get(
            f"{self.gateway.base_url}/relay", timeout=30, headers={"Connection": "close"}
        )
        code = ""
        if response.status_code != 200:
            code = response.json()["error"]["code"]
        self.answers.append((response.status_code, code))
        return response.status_code

    def assert_no_raw_error(self) -> None:
        statuses = {answer for answer in self.answers if answer[0] != 200}
        assert statuses <= {(503, "SERVICE_UNAVAILABLE")}, statuses

    def calls_during(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.call()
            time.sleep(0.05)

    def trip(self) -> None:
        """Trip the breaker fleet-wide (the OPEN key is in Redis)."""
        self.downstream.failing = True
        with self.admin as admin:
            deadline = time.monotonic() + 20
            while not admin.exists(f"gennet:cb:{{{BREAKER}}}:open"):
                assert time.monotonic() < deadline, "the fleet never tripped"
                self.call()
                time.sleep(0.05)

    def start_trial(self) -> threading.Thread:
        """Once the OPEN period is over, a call becomes a trial and is held downstream."""
        self.downstream.holding = True

        def call_until_held() -> None:
            while not self.downstream.held.is_set():
                try:
                    self.call()
                except requests.ConnectionError:
                    return  # the worker running the trial was killed
                time.sleep(0.05)

        caller = threading.Thread(target=call_until_held, daemon=True)
        caller.start()
        assert self.downstream.held.wait(timeout=20), "no call reached the downstream"
        return caller

    def trial_in_flight(self) -> threading.Thread:
        """Trip the fleet and hold its trial call at the downstream.

        A worker that found Redis slow a moment ago (the previous test broke it)
        decides alone, and its call is no fleet trial: it fails, and we try again.
        """
        for _ in range(5):
            self.trip()
            caller = self.start_trial()
            with self.admin as admin:
                if admin.zcard(f"gennet:cb:{{{BREAKER}}}:trials") == 1:
                    return caller
            self.finish_trial(caller, fails=True)
        raise AssertionError("no call held at the downstream was the fleet's trial")

    def finish_trial(self, caller: threading.Thread, *, fails: bool) -> None:
        self.downstream.failing = fails
        self.downstream.release.set()
        caller.join(timeout=20)
        self.downstream.reset()

    def seconds_until_flowing(self, since: float, timeout: float = 60.0) -> float:
        """Seconds from ``since`` to the first of FLOWING consecutive 200s."""
        first_ok: float | None = None
        streak = 0
        deadline = time.monotonic() + timeout
        while streak < FLOWING:
            assert time.monotonic() < deadline, f"calls did not flow again in {timeout} s"
            at = time.monotonic()
            if self.call() == 200:
                first_ok = at if streak == 0 else first_ok
                streak += 1
            else:
                streak = 0
                time.sleep(0.05)
        assert first_ok is not None
        return first_ok - since


@pytest.fixture(scope="module")
def fault_redis() -> Iterator[RedisServer]:
    """A redis-server of this module's own: the tests break it on purpose."""
    server = started_redis_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fleet_parts(
    fault_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, Downstream]]:
    downstream = Downstream()
    with serve_app(downstream.app) as downstream_url:
        gateway = ServiceProcess(
            "fault-gateway",
            "tests.support.fault_gateway:create_app()",
            tmp_path_factory.mktemp("fault-gateway"),
            workers=2,
            threads=4,
            env={
                "GENNET_BREAKER_STORAGE": f"{fault_redis.url}?{STORAGE_OPTIONS}",
                "FAULT_DOWNSTREAM_URL": downstream_url,
                "FAULT_READ_TIMEOUT": str(READ_TIMEOUT),
            },
        )
        gateway.start()
        try:
            gateway.wait_ready(timeout=60)
            yield gateway, downstream
        finally:
            downstream.release.set()
            gateway.stop()


@pytest.fixture
def fleet(fleet_parts: tuple[ServiceProcess, Downstream], fault_redis: RedisServer) -> Fleet:
    gateway, downstream = fleet_parts
    downstream.reset()
    fault_redis.start()  # a test that failed half-way may have left it down
    fault_redis.resume()
    with redis.Redis.from_url(fault_redis.url) as admin:
        admin.config_set("maxmemory", 0)
        admin.flushall()
    fleet = Fleet(gateway, downstream, fault_redis)
    fleet.seconds_until_flowing(time.monotonic())  # every worker CLOSED again
    fleet.answers.clear()
    return fleet


def out_of_memory(fleet: Fleet) -> Callable[[], None]:
    with fleet.admin as admin:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)

    def lift() -> None:
        with fleet.admin as admin:
            admin.config_set("maxmemory", 0)

    return lift


def hung(fleet: Fleet) -> Callable[[], None]:
    fleet.redis_server.pause()
    return fleet.redis_server.resume


def killed(fleet: Fleet) -> Callable[[], None]:
    fleet.redis_server.kill()
    return fleet.redis_server.start  # empty, on the same port


def flushed(fleet: Fleet) -> Callable[[], None]:
    with fleet.admin as admin:
        admin.flushall()
    return lambda: None


@pytest.mark.parametrize(
    ("fault", "trial_fails"),
    [
        (out_of_memory, True),
        (out_of_memory, False),
        (hung, True),
        (hung, False),
        (killed, True),
        (flushed, True),
    ],
    ids=[
        "oom-trial-fails",
        "oom-trial-succeeds",
        "hung-trial-fails",
        "hung-trial-succeeds",
        "killed-restarted",
        "flushall",
    ],
)
def test_calls_flow_again_soon_after_a_redis_fault_during_a_trial(
    fleet: Fleet, fault: Callable[[Fleet], Callable[[], None]], trial_fails: bool
) -> None:
    trial = fleet.trial_in_flight()
    heal = fault(fleet)
    # The trial's outcome (set_open or set_closed, then the release) meets the fault.
    fleet.finish_trial(trial, fails=trial_fails)
    fleet.calls_during(1.0)  # callers keep calling while Redis is broken
    heal()
    healed_at = time.monotonic()
    flowing_after = fleet.seconds_until_flowing(healed_at)
    print(f"\n{fault.__name__} (trial fails: {trial_fails}): flowing {flowing_after:.2f} s after")
    fleet.assert_no_raw_error()
    assert flowing_after < FLOW_BOUND


def test_a_worker_killed_mid_trial_holds_the_fleet_back_for_its_call_timeout_not_a_minute(
    fleet: Fleet,
) -> None:
    trial = fleet.trial_in_flight()
    os.kill(fleet.downstream.held_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    fleet.finish_trial(trial, fails=False)  # the downstream is healthy from now on
    flowing_after = fleet.seconds_until_flowing(killed_at)
    print(f"\nworker SIGKILLed mid-trial: flowing {flowing_after:.2f} s after (lease {LEASE} s)")
    fleet.assert_no_raw_error()
    # The dead worker's lease (its call's timeout plus the margin) runs out; before the
    # trial lease followed the call, it ran for max_half_open_wait (60 s).
    assert flowing_after < LEASE + FLOW_BOUND

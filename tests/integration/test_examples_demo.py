"""``python -m examples.demo`` end to end: real services, redis-server, Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support import PROJECT_ROOT
from tests.support.demo import ports_started, run_demo
from tests.support.servers import require_binary


def nothing_listens_on(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.integration
def test_demo_with_redis_tells_the_whole_story_and_cleans_up() -> None:
    require_binary("redis-server")
    result = run_demo()
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "breaker storage: redis" in out
    assert "POST /api/v2/networks -> 201" in out
    assert "AF(x & !y) from {'x': False, 'y': False} -> 200, holds=False" in out
    assert "counterexample: x=0 y=0 -> x=0 y=1" in out
    assert "-> 422 VALIDATION_ERROR from service 'qualitative-service'" in out
    assert "503 ServiceUnavailableError: Service 'qualitative-service' could not be reached" in out
    assert "503 CircuitBreakerError: breaker open, call not attempted" in out
    assert "with the shared breaker" in out
    assert "(Redis: open)" in out
    assert "(Redis: closed)" in out
    assert "the half-open trial -> 200" in out
    # The summary read back from the services' /metrics.
    assert "What the services' /metrics saw" in out
    assert re.search(r"grn +CONFLICT +409: 1\n", out), out
    assert re.search(r"workflow +qualitative-service: closed -> open: [1-9]", out), out
    assert "Story complete: all 6 steps happened as told" in out
    ports = ports_started(out)
    assert len(ports) == 4  # three services and redis-server
    assert all(nothing_listens_on(port) for port in ports)


@pytest.mark.integration
def test_demo_without_redis_says_breakers_are_per_worker_and_traces_the_failing_calls() -> None:
    result = run_demo("--no-redis", "--trace")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "breaker storage: in-memory per worker process (--no-redis)" in result.stdout
    assert "each worker counts its own" in result.stdout
    assert "Story complete" in result.stdout
    # --trace: the span trees, the client span indented under the server span
    lines = result.stdout.splitlines()
    start = lines.index(
        next(line for line in lines if "trace of the failed call that opened a breaker" in line)
    )
    server, *_, client = [line for line in lines[start + 1 : start + 4] if " workflow " in line]
    assert "SERVER POST /api/v1/workflows/verify" in server
    assert "CLIENT POST" in client
    assert len(client) - len(client.lstrip()) > len(server) - len(server.lstrip())
    assert "http.request.resend_count=2" in client
    assert "gennet.breaker.transition_reason=failure_threshold" in result.stdout
    refused = lines.index(next(line for line in lines if "trace of the first refused call" in line))
    assert "error.type=CircuitBreakerError gennet.breaker.name=qualitative-service" in (
        "\n".join(lines[refused : refused + 6])
    )
    ports = ports_started(result.stdout)
    assert len(ports) == 3
    assert all(nothing_listens_on(port) for port in ports)


@pytest.mark.integration
def test_ctrl_c_stops_everything_the_demo_started() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "examples.demo", "--no-redis"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as demo:
        assert demo.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("== 2."):
                break
        assert any("started grn on" in line for line in lines), "".join(lines)
        demo.send_signal(signal.SIGINT)
        stdout, stderr = demo.communicate(timeout=60)
    assert demo.returncode == 130, stdout + stderr
    assert "interrupted: everything the demo started has been stopped" in stderr
    ports = ports_started("".join(lines))
    assert all(nothing_listens_on(port) for port in ports)

"""``python -m examples.demo`` end to end, and the pieces it is made of."""

from __future__ import annotations

import io
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from examples.demo import StoryFailed, Timeline, describe_path, rules_from_network
from tests.conftest import require_binary

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.demo", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def ports_started(output: str) -> list[int]:
    line = next(line for line in output.splitlines() if "started grn on" in line)
    return [int(port) for port in re.findall(r" on :(\d+)", line)]


def nothing_listens_on(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_rules_from_a_signed_network() -> None:
    network = {
        "nodes": ["x", "y", "z"],
        "edges": [
            {"source": "x", "target": "y", "sign": -1},
            {"source": "z", "target": "y", "sign": 1},
            {"source": "y", "target": "x", "sign": -1},
        ],
    }
    assert rules_from_network(network) == {"x": "!y", "y": "!x & z", "z": "z"}


def test_describe_path_marks_the_loop() -> None:
    path = [{"x": False, "y": False}, {"x": False, "y": True}]
    assert describe_path(path, 1) == ("x=0 y=0 -> x=0 y=1  (then loops back to state 2 forever)")
    assert describe_path(path, None) == "x=0 y=0 -> x=0 y=1"


def test_timeline_fails_the_story_on_a_broken_expectation() -> None:
    out = io.StringIO()
    timeline = Timeline(out=out)
    timeline.step("Do a thing")
    timeline.event("it happened", latency_ms=1.5)
    timeline.expect(True, "fine")
    with pytest.raises(StoryFailed, match="the breaker opens"):
        timeline.expect(False, "the breaker opens")
    assert "== 1. Do a thing" in out.getvalue()
    assert "it happened  (1.5 ms)" in out.getvalue()


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
    assert "Story complete: all 4 steps happened as told" in out
    ports = ports_started(out)
    assert len(ports) == 4  # three services and redis-server
    assert all(nothing_listens_on(port) for port in ports)


@pytest.mark.integration
def test_demo_without_redis_says_breakers_are_per_worker() -> None:
    result = run_demo("--no-redis")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "breaker storage: in-memory per worker process (--no-redis)" in result.stdout
    assert "each worker counts its own" in result.stdout
    assert "Story complete" in result.stdout
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

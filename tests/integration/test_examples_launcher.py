"""The launcher: process groups, readiness, logs, restarts, with real gunicorn
and redis-server."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import requests

from examples.launcher import (
    ManagedProcess,
    RedisProcess,
    ServiceProcess,
    StartupError,
    free_port,
)
from tests.support.servers import require_binary


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # a parent that ignores SIGTERM's effect on its child: the child must still go
    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid, flush=True); time.sleep(60)"
    )
    process = ManagedProcess("sleeper", [sys.executable, "-c", script], tmp_path)
    process.start()
    try:
        deadline = time.monotonic() + 10
        while not process.log_path.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(process.log_path.read_text().split()[0])
        assert alive(child)
    finally:
        process.stop()
    assert not process.running
    # the child was reparented, not our own: it is gone once killed (or reaped by init)
    assert wait_gone(child)
    process.stop()  # idempotent


@pytest.mark.integration
def test_a_service_that_cannot_boot_reports_its_log(tmp_path: Path) -> None:
    service = ServiceProcess("broken", "examples.no_such_module:create_app()", tmp_path)
    service.start()
    try:
        with pytest.raises(StartupError, match="broken exited during startup") as raised:
            service.wait_ready(timeout=30)
        assert "no_such_module" in str(raised.value)
    finally:
        service.stop()


@pytest.mark.integration
def test_service_process_serves_restarts_on_the_same_port_and_stops(tmp_path: Path) -> None:
    service = ServiceProcess(
        "qualitative", "examples.qualitative_service:create_app()", tmp_path, workers=1
    )
    with service:
        health = requests.get(f"{service.base_url}/health", timeout=5)
        assert health.json()["service"] == "qualitative-service"
        port = service.port
        service.stop()
        assert not service.is_ready()
        service.start()
        service.wait_ready()
        assert service.port == port
        assert service.is_ready()
    assert not service.running
    assert not service.is_ready()
    assert "Booting worker" in service.log_path.read_text()


@pytest.mark.integration
def test_redis_process_answers_ping_and_stops(tmp_path: Path) -> None:
    require_binary("redis-server")
    with RedisProcess(tmp_path) as redis_server:
        assert redis_server.is_ready()
        assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert not redis_server.is_ready()

"""pytest plugin for both runs of requests' own test suite: local only, outcomes recorded.

Loaded with ``-p gennet_suite_run`` (see ``tests/test_requests_suite.py``).

* The run reaches nothing beyond this machine.  requests' suite resolves
  ``httpbin.org`` and made-up host names and connects to an unroutable address
  to provoke a connect timeout; here such a lookup or connection fails at once,
  the same way in both runs, so those tests fail in the plain run and are left
  out of the comparison, whether or not the machine is online.
* Each test's outcome is written, by node ID, to the JSON file named by
  ``GENNET_SUITE_OUTCOMES``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

OUTCOMES_ENV = "GENNET_SUITE_OUTCOMES"

_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_blocked: set[str] = set()


def _is_local(host: object) -> bool:
    """Whether ``host`` (a name, an address or ``None``) stays on this machine."""
    if host is None:  # a wildcard bind
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").split("%", 1)[0]
    if host in ("", "localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # The unspecified address is a wildcard bind or, as a destination, this machine.
    return address.is_loopback or address.is_unspecified


def _local_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_local(host):
        _blocked.add(str(host))
        raise socket.gaierror(
            socket.EAI_NONAME, f"{host!r} not looked up: this test run stays on 127.0.0.1"
        )
    return _getaddrinfo(host, *args, **kwargs)


def _destination_is_local(sock: socket.SocketType, address: Any) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True  # a Unix socket
    return isinstance(address, tuple) and _is_local(address[0])


def _local_connect(self: socket.SocketType, address: Any) -> None:
    if not _destination_is_local(self, address):
        _blocked.add(str(address))
        raise OSError(f"no connection to {address!r}: this test run stays on 127.0.0.1")
    _connect(self, address)


def _local_connect_ex(self: socket.SocketType, address: Any) -> int:
    if not _destination_is_local(self, address):
        _blocked.add(str(address))
        raise OSError(f"no connection to {address!r}: this test run stays on 127.0.0.1")
    return _connect_ex(self, address)


socket.getaddrinfo = _local_getaddrinfo
socket.socket.connect = _local_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _local_connect_ex  # type: ignore[method-assign]

_outcomes: dict[str, dict[str, str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep each test's outcome: its worst phase (setup, call, teardown)."""
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "passed", "message": ""})
    if entry["outcome"] == "failed":
        return
    if report.failed:
        outcome = "failed"
    elif hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    elif report.skipped:
        outcome = "skipped"
    else:
        return
    message = ""
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = f"{report.when}: {crash.message if crash else report.longreprtext}"
    entry.update(outcome=outcome, message=message.splitlines()[0][:300] if message else "")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module that cannot be collected is a failure too, not an absent test."""
    if report.failed:
        _outcomes[report.nodeid or "<collection>"] = {
            "outcome": "error",
            "message": f"collection: {(report.longreprtext.splitlines() or [''])[-1][:300]}",
        }


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the outcomes and the addresses kept off the network."""
    path = os.environ.get(OUTCOMES_ENV)
    if path:
        report = {"outcomes": _outcomes, "blocked": sorted(_blocked)}
        Path(path).write_text(json.dumps(report, indent=1), encoding="utf-8")

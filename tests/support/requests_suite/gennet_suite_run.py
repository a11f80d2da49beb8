"""pytest plugin for both runs of requests' own test suite: local only, outcomes recorded.

Loaded with ``-p gennet_suite_run`` (see ``tests/integration/test_requests_suite.py``).

* The run reaches nothing beyond this machine.  A host name other than
  ``localhost`` is not looked up (requests' suite tries ``httpbin.org`` and
  made-up names): the lookup fails at once.  A connection to an address
  elsewhere (the suite's unroutable ``10.255.255.1``, used to provoke a connect
  timeout) behaves as that address does, unanswered: it times out after the
  socket's timeout, or fails at once when there is none.  Both runs see the
  same, online or not; tests that need the internet fail in the plain run and
  are left out of the comparison.
* Each test's outcome is written, by node ID, to the JSON file named by
  ``GENNET_SUITE_OUTCOMES``.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

OUTCOMES_ENV = "GENNET_SUITE_OUTCOMES"

_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_blocked: set[str] = set()


def _ip_address(host: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address, or ``None`` when it is a name (or not a string)."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return None
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _is_local(host: object) -> bool:
    """Whether ``host`` (a name, an address or ``None``) is this machine."""
    if host is None or host in ("", b"", "localhost", b"localhost"):
        return True  # None and "" are wildcard binds
    address = _ip_address(host)
    # The unspecified address is a wildcard bind or, as a destination, this machine.
    return address is not None and (address.is_loopback or address.is_unspecified)


def _local_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    # An address needs no lookup, so it goes through (connect() decides); a name
    # other than localhost would ask a DNS server.
    if not _is_local(host) and _ip_address(host) is None:
        _blocked.add(str(host))
        raise socket.gaierror(
            socket.EAI_NONAME, f"{host!r} not looked up: this test run stays on 127.0.0.1"
        )
    return _getaddrinfo(host, *args, **kwargs)


def _is_elsewhere(sock: socket.SocketType, address: Any) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False  # a Unix socket
    if isinstance(address, tuple) and _is_local(address[0]):
        return False
    _blocked.add(str(address[0] if isinstance(address, tuple) else address))
    return True


def _local_connect(self: socket.SocketType, address: Any) -> None:
    if _is_elsewhere(self, address):
        timeout = self.gettimeout()
        if not timeout:
            raise OSError(errno.ENETUNREACH, f"{address!r}: this test run stays on 127.0.0.1")
        time.sleep(timeout)  # what an address that never answers does
        raise TimeoutError("timed out")
    _connect(self, address)


def _local_connect_ex(self: socket.SocketType, address: Any) -> int:
    if _is_elsewhere(self, address):
        return errno.ENETUNREACH
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

"""pytest plugin: every session requests' own test suite makes is a ``ServiceSession``.

Loaded with ``-p gennet_session_swap`` into a pytest run of the requests sdist's
tests (see ``tests/test_requests_suite.py``).  It swaps the class before the
suite's modules are imported, so ``requests.Session()``, ``requests.session()``,
``requests.get()`` (``requests.api`` builds ``sessions.Session()``) and the
suite's subclasses of ``requests.Session`` all get a ``ServiceSession`` with no
service name and default settings, as a user swapping the class would.  Each
test starts with an empty breaker registry (see ``_fresh_breakers``).

At the end it writes what the run went through (the class in place and the
calls its breakers recorded) to the JSON file named by ``GENNET_SWAP_REPORT``, so the
calling test can prove the calls really went through ``ServiceSession``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import requests.sessions

from gennet_sync.circuit_breaker import circuit_breaker_metrics, clear_circuit_breakers
from gennet_sync.http_client import ServiceSession

REPORT_ENV = "GENNET_SWAP_REPORT"


def _service_session() -> ServiceSession:
    """``requests.session()``, returning the drop-in."""
    return ServiceSession()


def _swap() -> None:
    requests.Session = ServiceSession  # type: ignore[misc]
    requests.sessions.Session = ServiceSession  # type: ignore[misc]
    requests.session = _service_session
    requests.sessions.session = _service_session


_swap()


FRESH_BREAKERS_ENV = "GENNET_SWAP_FRESH_BREAKERS"
_totals = {"calls": 0, "failures": 0, "rejections": 0}


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    """Each test starts with no breaker, as if it ran in a process of its own.

    Unless ``GENNET_SWAP_FRESH_BREAKERS=0``: the registry's per-host breakers
    outlive a session, so a test's outcome then depends on the failures of the
    tests before it and, once a breaker opened, on how long they took (it stays
    open 60 s).  Within one test the breakers are left alone.
    """
    # A test that puts requests.Session back would silently test requests.
    assert requests.sessions.Session is ServiceSession, "requests.Session was restored"
    fresh = os.environ.get(FRESH_BREAKERS_ENV, "1") != "0"
    if fresh:
        clear_circuit_breakers()
    yield
    if fresh:
        _count_breaker_calls()
        clear_circuit_breakers()


def _count_breaker_calls() -> None:
    for metrics in circuit_breaker_metrics().values():
        _totals["calls"] += metrics.calls
        _totals["failures"] += metrics.failures
        _totals["rejections"] += metrics.rejections


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the class in place and the breakers' counters for the calling test."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    _count_breaker_calls()  # those still registered: all of them without a reset
    session_class = requests.sessions.Session
    report = {
        "session_class": f"{session_class.__module__}.{session_class.__qualname__}",
        **_totals,
    }
    Path(path).write_text(json.dumps(report), encoding="utf-8")

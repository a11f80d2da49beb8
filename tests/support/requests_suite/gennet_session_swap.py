"""pytest plugin: every session requests' own test suite makes is a ``ServiceSession``.

Loaded with ``-p gennet_session_swap`` into a pytest run of the requests sdist's
tests (see ``tests/integration/test_requests_suite.py``).  It swaps the class before the
suite's modules are imported, so ``requests.Session()``, ``requests.session()``,
``requests.get()`` (``requests.api`` builds ``sessions.Session()``) and the
suite's subclasses of ``requests.Session`` all get a ``ServiceSession`` with no
service name and default settings, as a user swapping the class would.  The
breakers live for the whole run, as in one long-lived process.

At the end it writes what the run went through (the class in place and the
calls its breakers admitted and refused) to the JSON file named by ``GENNET_SWAP_REPORT``, so the
calling test can prove the calls really went through ``ServiceSession``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.sessions

from gennet_sync.circuit_breaker import CircuitBreakerError
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


_totals = {"calls": 0, "rejections": 0}


def _count_admissions() -> None:
    """Count every call a breaker admitted or refused, whatever the breaker.

    The breakers live for the whole run, as in one long-lived process: a test's
    outcome may depend on what the tests before it did to a host's breaker.  A
    session's per-host breakers leave the registry when it is closed, so the
    counts are taken where a call is admitted, not from the registry at the end.
    """
    acquire = ServiceSession._acquire_permit

    def counting(self: ServiceSession, *args: Any, **kwargs: Any) -> Any:
        try:
            permit = acquire(self, *args, **kwargs)
        except CircuitBreakerError:
            _totals["rejections"] += 1
            raise
        _totals["calls"] += 1
        return permit

    ServiceSession._acquire_permit = counting  # type: ignore[method-assign]


_count_admissions()


@pytest.fixture(autouse=True)
def _still_swapped() -> None:
    # A test that puts requests.Session back would silently test requests.
    assert requests.sessions.Session is ServiceSession, "requests.Session was restored"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the class in place and the breakers' counters for the calling test."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    session_class = requests.sessions.Session
    report = {
        "session_class": f"{session_class.__module__}.{session_class.__qualname__}",
        **_totals,
    }
    Path(path).write_text(json.dumps(report), encoding="utf-8")

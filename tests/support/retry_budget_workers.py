"""Worker processes whose ServiceSessions share one retry budget through Redis,
and the always-failing service they call.

Each worker is a separate interpreter (spawn) with ``GENNET_BREAKER_STORAGE``
set, as a gunicorn worker would be, calling an always-failing service.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from multiprocessing.synchronize import Barrier as BarrierType

from flask import Flask, Response, jsonify

from gennet_sync import GenNet
from gennet_sync.http_client import ServiceSession, make_retry
from gennet_sync.retry_budget import RetryBudgetConfig

#: Retries urllib3 may make per call; the budget is what keeps them below that.
RETRIES = 3


def failing_service_worker(
    storage_url: str,
    name: str,
    url: str,
    calls: int,
    shared: bool,
    start: BarrierType,
    results: multiprocessing.Queue[dict[str, int]],
) -> None:
    """Make ``calls`` calls to ``url``; report the answers and the budget's counts."""
    os.environ["GENNET_BREAKER_STORAGE"] = storage_url
    session = ServiceSession(
        base_url=url,
        service_name=name,
        use_circuit_breaker=False,  # the budget alone bounds the load
        retries=make_retry(RETRIES, backoff_factor=0, backoff_jitter=0),
        # No ratio: only the allowance of 2 retries a second over 10 s, 20 in
        # all, for the fleet when shared and for each process when not.
        retry_budget=RetryBudgetConfig(ratio=0, min_per_second=2, window=10, shared=shared),
    )
    start.wait()
    answers = [session.get("/x", timeout=10).status_code for _ in range(calls)]
    budget = session._retry_budget
    assert budget is not None
    results.put(
        {
            "answered_503": answers.count(503),
            "retries": budget.retries,
            "shared": int(budget.shared),
            "synced": int(budget.fleet_totals is not None),
        }
    )


class FailingService:
    """A real Flask app answering every request with a 503, counting them."""

    def __init__(self) -> None:
        self.received = 0
        self.lock = threading.Lock()
        self.app = Flask("failing")
        GenNet(self.app)
        self.app.add_url_rule("/x", view_func=self.fail)

    def fail(self) -> tuple[Response, int]:
        with self.lock:
            self.received += 1
        return jsonify(error="down"), 503

"""A service that relays every call to one downstream, for the Redis fault tests.

Run under real gunicorn by ``tests/integration/test_redis_faults.py``, with every worker's
breaker shared through ``GENNET_BREAKER_STORAGE``.  ``GET /relay`` calls
``FAULT_DOWNSTREAM_URL`` + ``/work`` through a ``ServiceSession`` (threshold 1,
open 1 s, timeout ``(1, FAULT_READ_TIMEOUT)`` and a total limit of their sum, no
retries, errors raised): the caller gets the downstream's answer, or the error
envelope (a 503 while the breaker refuses), never anything else.  The worker's PID
rides along in ``X-Worker-Pid`` so a test can kill the very worker a call is running
in.  :class:`Downstream` is the service behind it, served by the test process.
"""

from __future__ import annotations

import os
import threading

from flask import Flask, request

from gennet_sync import ServiceSession, setup_error_handlers

#: Seconds the breaker stays OPEN after a failure (short: the tests wait it out).
OPEN_SECONDS = 1.0


def create_app() -> Flask:
    """The relay app; reads ``FAULT_DOWNSTREAM_URL`` and ``FAULT_READ_TIMEOUT``."""
    app = Flask(__name__)
    setup_error_handlers(app)
    read_timeout = float(os.environ.get("FAULT_READ_TIMEOUT", "4"))
    session = ServiceSession(
        os.environ["FAULT_DOWNSTREAM_URL"],
        service_name="fault-downstream",
        circuit_breaker_threshold=1,
        circuit_breaker_timeout=OPEN_SECONDS,
        timeout=(1.0, read_timeout),
        total_timeout=1.0 + read_timeout,  # the trial's fleet lease follows it
        retries=0,
        raise_errors=True,
    )

    @app.get("/relay")
    def relay() -> dict[str, object]:
        response = session.get("/work", headers={"X-Worker-Pid": str(os.getpid())})
        return {"downstream": response.text, "pid": os.getpid()}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


class Downstream:
    """The service behind the gateway: answers 200 or 503, or holds one call until told."""

    def __init__(self) -> None:
        self.failing = False
        self.holding = False
        self.held = threading.Event()
        self.release = threading.Event()
        self.held_pid = 0
        self._lock = threading.Lock()
        self.app = Flask("fault-downstream")
        self.app.add_url_rule("/work", view_func=self.work)

    def work(self) -> tuple[dict[str, object] | str, int]:
        with self._lock:
            hold = self.holding and not self.held.is_set()
            if hold:
                self.held_pid = int(request.headers["X-Worker-Pid"])
                self.held.set()
        if hold:
            self.release.wait(timeout=60)
        if self.failing:
            envelope = {"code": "SERVICE_UNAVAILABLE", "type": "ServiceUnavailableError"}
            return {"error": {**envelope, "message": "down"}}, 503
        return "ok", 200

    def reset(self) -> None:
        self.failing = self.holding = False
        self.held.clear()
        self.release.clear()

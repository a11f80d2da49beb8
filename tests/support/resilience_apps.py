"""Services for the resilience tests, run under gunicorn by
tests/integration/test_resilience.py.

- ``chain_app()``: one link of a chain of services.  ``CHAIN_NEXT`` set: its
  ``/work`` calls the next link's ``/work``; unset: it works in small steps
  until its deadline passes, appending the time of each step done.  Every link
  appends when it started serving and how long it had.  Times are
  ``time.monotonic()``, one clock for every process on the machine.
- ``front_app()``: ``/slow`` calls ``DOWNSTREAM_URL``'s ``/slow`` through a
  session with a bulkhead of ``BULKHEAD`` slots; ``/health`` calls nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from flask import Flask, Response, jsonify

from gennet_sync import GenNet, ServiceSession
from gennet_sync.deadline import time_left
from gennet_sync.deadline_flask import Deadlines
from gennet_sync.exceptions import DeadlineExceededError

__all__ = ["chain_app", "front_app"]


def _record(path: Path, **event: object) -> None:
    with path.open("a", encoding="utf-8") as log:  # one short write per line: whole lines
        log.write(json.dumps(event) + "\n")


def chain_app() -> Flask:
    """One link of the chain (see the module docstring)."""
    name = os.environ["GENNET_SERVICE_NAME"]
    log = Path(os.environ["CHAIN_LOG"])
    next_url = os.environ.get("CHAIN_NEXT")
    app = Flask(name)
    default = os.environ.get("CHAIN_DEFAULT_DEADLINE")
    app.config["GENNET_DEFAULT_DEADLINE"] = float(default) if default else None
    GenNet(app)
    Deadlines(app)
    session = (
        # Every run of the chain times out: the breaker would open after a few
        # runs, and the tests are about the deadline.
        ServiceSession(
            base_url=next_url,
            service_name=f"{name}-next",
            raise_errors=True,
            circuit_breaker_threshold=1000,
        )
        if next_url
        else None
    )

    @app.get("/health")
    def health() -> Response:
        return jsonify(status="ok")

    @app.get("/work")
    def work() -> Response:
        _record(log, service=name, event="start", at=time.monotonic(), left=time_left())
        if session is not None:
            return jsonify(session.get("/work").json())
        # The last link works for 5 s, in steps, unless its deadline comes first.
        ends = time.monotonic() + 5.0
        while (now := time.monotonic()) < ends:
            left = time_left()
            if left is not None and left <= 0:
                raise DeadlineExceededError("out of time", service=name)
            time.sleep(min(0.02, ends - now, 0.02 if left is None else left))
            _record(log, service=name, event="step", at=time.monotonic())
        return jsonify(done=True)

    return app


def front_app() -> Flask:
    """A service whose calls to a slow downstream go through a bulkhead."""
    app = Flask("front")
    GenNet(app)
    session = ServiceSession(
        base_url=os.environ["DOWNSTREAM_URL"],
        service_name="slow-downstream",
        max_concurrent_calls=int(os.environ["BULKHEAD"]),
        raise_errors=True,
        retries=0,
    )

    @app.get("/health")
    def health() -> Response:
        return jsonify(status="ok")

    @app.get("/slow")
    def slow() -> Response:
        started = time.perf_counter()
        try:
            return jsonify(session.get("/slow").json())
        finally:
            # How long this worker thread was taken by the call, refused or not.
            _record(
                Path(os.environ["FRONT_LOG"]),
                took=time.perf_counter() - started,
                at=time.monotonic(),
            )

    return app

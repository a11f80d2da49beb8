"""The app the metrics tests run under gunicorn: requests, error envelopes and breaker
calls whose totals the tests know exactly."""

from __future__ import annotations

import contextlib
import gc
import os

from flask import Flask

from gennet_sync import CircuitBreaker, ConflictError, GenNet

__all__ = ["BOOT_BREAKER_NAME", "BREAKER_NAME", "TEMPORARY_BREAKER_NAME", "create_app"]

#: The breaker every worker calls through (one per worker process, as breakers are).
BREAKER_NAME = "metrics-downstream"
#: With METRICS_APP_BOOT_FAILURE=1, the breaker of a config service that is down
#: while the app loads: one failing call (which opens it) in the preloaded master.
BOOT_BREAKER_NAME = "metrics-boot-config"
#: A breaker ``POST /temporary`` makes (forced open) and ``DELETE /temporary`` drops.
TEMPORARY_BREAKER_NAME = "metrics-temporary"


def create_app() -> Flask:
    """An app with metrics on: ``/ok``, ``/conflict`` (a 409 envelope), ``/breaker/<outcome>``
    (a call through the breaker that succeeds or fails) and ``/pid`` (which worker answered)."""
    app = Flask("metrics_under_test")
    app.config["GENNET_METRICS_FLUSH_INTERVAL"] = float(
        os.environ.get("GENNET_METRICS_FLUSH_INTERVAL", "0.5")
    )
    GenNet(app, metrics=True)
    # Never opens: the tests count every call's outcome.
    breaker = CircuitBreaker(failure_threshold=1_000_000, name=BREAKER_NAME)

    def fail() -> None:
        raise ConnectionError("downstream refused")

    if os.environ.get("METRICS_APP_BOOT_FAILURE") == "1":
        boot = CircuitBreaker(failure_threshold=1, name=BOOT_BREAKER_NAME)
        with contextlib.suppress(ConnectionError):
            boot.call(fail)
        app.extensions["boot_breaker"] = boot  # kept alive, as a client object would be

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ok")
    def ok() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/conflict")
    def conflict() -> dict[str, bool]:
        raise ConflictError("already there")

    @app.get("/breaker/<outcome>")
    def through_breaker(outcome: str) -> dict[str, str]:
        if outcome == "success":
            breaker.call(lambda: None)
            return {"outcome": "success"}
        try:
            breaker.call(fail)
        except ConnectionError:
            return {"outcome": "failure"}
        raise AssertionError("unreachable")

    temporary: list[CircuitBreaker] = []

    @app.post("/temporary")
    def make_temporary() -> dict[str, str]:
        made = CircuitBreaker(name=TEMPORARY_BREAKER_NAME)
        made.open()
        temporary.append(made)
        return {"state": made.state.value}

    @app.delete("/temporary")
    def drop_temporary() -> dict[str, int]:
        temporary.clear()
        gc.collect()
        return {"left": len(temporary)}

    @app.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": os.getpid()}

    return app

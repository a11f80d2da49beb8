"""The workflow service: verifies formulas by calling the qualitative service.

``POST /api/v1/workflows/verify`` takes the same body as the qualitative
service's ``POST /ctl/verify``, forwards it through a
:class:`~gennet_sync.ServiceSession` and answers with the qualitative service's
answer.  What the session gives it, with no error handling of its own:

- a downstream error (a 422 for a bad formula...) comes back as the same
  envelope, with ``metadata.service`` naming the qualitative service;
- when the qualitative service cannot be reached or does not answer in time,
  a 503 envelope with ``Retry-After``;
- once ``CIRCUIT_BREAKER_THRESHOLD`` calls in a row have failed, the breaker
  opens and the 503 (type ``CircuitBreakerError``) is immediate, with no
  network I/O, until ``CIRCUIT_BREAKER_TIMEOUT`` seconds have passed and one
  trial call is let through.

``GET /api/v1/workflows/breaker`` shows the breaker as this process sees it
(and as Redis holds it, when shared),
and ``GET /health`` answers ``{"status": "ok"}``.

Configuration (Flask config, else the environment variable of the same name):

- ``QUALITATIVE_URL``: base URL of the qualitative service
  (default ``http://127.0.0.1:8001``);
- ``CIRCUIT_BREAKER_THRESHOLD`` (default 5) and ``CIRCUIT_BREAKER_TIMEOUT``
  (seconds, default 30);
- ``QUALITATIVE_TIMEOUT``: seconds to wait for an answer (default 30: a CTL
  check on a 20-node network takes a few seconds);
- ``QUALITATIVE_SERVICE_NAME``: the breaker's name (default ``qualitative-service``);
- ``QUALITATIVE_MAX_CONCURRENT_CALLS``: a bulkhead, at most this many calls to
  the qualitative service at once per worker process (default: none); the next
  one is a 503 ``BULKHEAD_FULL`` at once, so a slow qualitative service cannot
  take every thread (``/health`` keeps answering);
- ``GENNET_DEFAULT_DEADLINE``: seconds a request may take, calls included,
  unless its caller's ``Request-Timeout`` gives less (default 25, below
  gunicorn's worker timeout); past it, a 504 ``DEADLINE_EXCEEDED``;
- ``CIRCUIT_BREAKER_CONFIG`` (Flask config only): more breaker settings, passed
  to ``ServiceSession(circuit_breaker_config=...)`` (``half_open_max_calls``,
  ``clock``...);
- ``GENNET_BREAKER_STORAGE``: ``redis://host:port/db`` shares the breaker
  between all workers and hosts (read by gennet_sync's breaker registry).

Run it with ``gunicorn 'examples.workflow_service:create_app()'``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import BadGateway

from examples.qualitative_service import VerifyRequestSchema
from gennet_sync import (
    OpenAPI,
    ServiceSession,
    ServiceUnavailableError,
    ValidationError,
    doc,
    setup_error_handlers,
)
from gennet_sync.console import BreakerConsole
from gennet_sync.deadline_flask import Deadlines
from gennet_sync.exceptions import DeadlineExceededError
from gennet_sync.health import Health
from gennet_sync.metrics import Metrics

__all__ = ["DEFAULTS", "EXTENSION_KEY", "create_app", "qualitative_session"]

#: Settings and their defaults; each can come from the Flask config or the environment.
DEFAULTS: Final[Mapping[str, str]] = {
    "QUALITATIVE_URL": "http://127.0.0.1:8001",
    "QUALITATIVE_SERVICE_NAME": "qualitative-service",
    "QUALITATIVE_TIMEOUT": "30",
    "CIRCUIT_BREAKER_THRESHOLD": "5",
    "CIRCUIT_BREAKER_TIMEOUT": "30",
    "QUALITATIVE_MAX_CONCURRENT_CALLS": "",
    "GENNET_DEFAULT_DEADLINE": "25",
}
#: Key of this service's session in ``app.extensions``.
EXTENSION_KEY: Final = "workflow_qualitative_session"
#: Retry-After (seconds) for a failed call while the breaker is still closed.
RETRY_AFTER_BEFORE_OPEN: Final = 1


def qualitative_session() -> ServiceSession:
    """The current app's session to the qualitative service."""
    session = current_app.extensions[EXTENSION_KEY]
    assert isinstance(session, ServiceSession)
    return session


@doc(
    body=VerifyRequestSchema,
    calls=[DEFAULTS["QUALITATIVE_SERVICE_NAME"]],
    # The qualitative service's 422 comes back unchanged; BadGateway is raised below.
    errors=[ValidationError, BadGateway],
    tags=["workflows"],
)
def verify() -> Response:
    """Verify a CTL formula through the qualitative service.

    Its answer, or its error envelope, comes back unchanged.

    Raises:
        BadGateway: The qualitative service answered 2xx with a body that is not JSON.
    """
    request.get_json()  # a body that is not JSON is this service's 400 or 415
    session = qualitative_session()
    try:
        # The body as received: ``json=None`` would send no body for a JSON null.
        response = session.post(
            "/ctl/verify",
            data=request.get_data(),
            headers={"Content-Type": "application/json"},
        )
    except ServiceUnavailableError as error:
        if error.retry_after is not None or isinstance(error, DeadlineExceededError):
            raise  # an open breaker or a full bulkhead says when to come back
        # Not reached or no answer in time, breaker still closed: worth a retry soon.
        raise ServiceUnavailableError(
            error.message,
            service=error.service,
            retry_after=RETRY_AFTER_BEFORE_OPEN,
            metadata=error.metadata,
        ) from error
    try:
        answer = response.json()
    except ValueError as error:
        raise BadGateway(
            f"The qualitative service answered {response.status_code} with a body that is not JSON"
        ) from error
    return jsonify(answer)


@doc(tags=["workflows"])
def breaker() -> Response:
    """Show the qualitative service's breaker as this worker process sees it.

    ``state`` is this process's view, which a worker refreshes from a shared
    storage when it next admits a call; ``shared_state`` is what the shared
    storage (Redis) holds now, or ``null`` when breakers are per process.
    """
    circuit = qualitative_session().circuit_breaker
    if circuit is None:
        return jsonify({"enabled": False})
    metrics = circuit.metrics()
    shared = circuit.storage.load(circuit.name) if circuit.storage.shared else None
    return jsonify(
        {
            "enabled": True,
            "name": circuit.name,
            "state": metrics.state.value,
            "shared_state": None if shared is None else shared.state.value,
            "consecutive_failures": metrics.consecutive_failures,
            "failures": metrics.failures,
            "rejections": metrics.rejections,
            "pid": os.getpid(),
        }
    )


@doc(tags=["health"])
def health() -> Response:
    """Report that this service is up, whatever the state of its downstream."""
    return jsonify({"status": "ok", "service": "workflow-service"})


def _setting(app: Flask, name: str) -> str:
    value = app.config.get(name)
    if value is None:
        value = os.environ.get(name) or DEFAULTS[name]
    return str(value)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The workflow service's Flask app.

    Example::

        app = create_app({"QUALITATIVE_URL": "http://127.0.0.1:8001",
                          "CIRCUIT_BREAKER_THRESHOLD": 3, "CIRCUIT_BREAKER_TIMEOUT": 10})

    Args:
        config: Flask configuration over the defaults (see the module docstring).

    Returns:
        The app, with its session to the qualitative service.

    Raises:
        ValueError: A setting that is not a number where one is needed.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    if config:
        app.config.update(config)
    setup_error_handlers(app)
    Metrics(app)  # GET /metrics
    app.config["GENNET_DEFAULT_DEADLINE"] = float(_setting(app, "GENNET_DEFAULT_DEADLINE"))
    Deadlines(app)
    bulkhead = _setting(app, "QUALITATIVE_MAX_CONCURRENT_CALLS")
    session = ServiceSession(
        base_url=_setting(app, "QUALITATIVE_URL"),
        service_name=_setting(app, "QUALITATIVE_SERVICE_NAME"),
        circuit_breaker_threshold=int(_setting(app, "CIRCUIT_BREAKER_THRESHOLD")),
        circuit_breaker_timeout=float(_setting(app, "CIRCUIT_BREAKER_TIMEOUT")),
        timeout=(2.0, float(_setting(app, "QUALITATIVE_TIMEOUT"))),
        circuit_breaker_config=app.config.get("CIRCUIT_BREAKER_CONFIG"),
        raise_errors=True,
        caller="workflow-service",
        max_concurrent_calls=int(bulkhead) if bulkhead else None,
    )
    app.extensions[EXTENSION_KEY] = session
    app.add_url_rule("/api/v1/workflows/verify", "verify", verify, methods=["POST"])
    app.add_url_rule("/api/v1/workflows/breaker", "breaker", breaker, methods=["GET"])
    app.add_url_rule("/health", "health", health, methods=["GET"])
    Health(app)
    BreakerConsole(app)
    OpenAPI(app, title="Workflow service", version="1.0.0")
    return app

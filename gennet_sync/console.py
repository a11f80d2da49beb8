"""A breaker console for operators: every breaker's state as JSON, and a page for browsers.

``GET /gennet/breakers`` answers JSON, or the page (``gennet_sync/static/console.html``,
offline: its CSS and script are inline) to a browser asking for HTML; the page reads
the JSON every few seconds.  ``POST /gennet/breakers/<name>`` with a JSON body
``{"action": ...}`` forces a breaker open, closes, disables or resets it: off unless
the app gives an auth callback.  See ``docs/console.md``.

Example::

    BreakerConsole(app, auth=lambda request: request.headers.get("X-Ops-Token") == TOKEN)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

from flask import Flask, Request, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from gennet_sync.breaker_policy import BreakerStatus
from gennet_sync.circuit_breaker import CircuitBreaker
from gennet_sync.error_handler import app_state
from gennet_sync.exceptions import (
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
    ValidationError,
)
from gennet_sync.health import BreakerSource, breakers_of
from gennet_sync.openapi import doc

__all__ = [
    "ACTIONS",
    "FLEET_ACTIONS",
    "BreakerConsole",
    "ConsoleAuth",
    "action_scope",
    "breaker_view",
]

#: Decides whether a request may use the console: ``True`` allows it, ``False``
#: is a 403 (known, not allowed), ``None`` a 401 (not authenticated).  It may
#: also raise a gennet_sync exception of its own (a 401 with ``WWW-Authenticate``).
ConsoleAuth: TypeAlias = Callable[[Request], bool | None]

#: The POST actions and the breaker method each calls (``close`` and ``reset``
#: both close the breaker in its NORMAL mode, forgetting its counts).
ACTIONS: Final[Mapping[str, Callable[[CircuitBreaker], None]]] = {
    "force_open": CircuitBreaker.open,
    "close": CircuitBreaker.reset,
    "reset": CircuitBreaker.reset,
    "disable": CircuitBreaker.disable,
    "metrics_only": CircuitBreaker.metrics_only,
}

#: The actions a shared storage carries to every process (``breaker.open()`` and
#: ``reset()`` write the fleet's state).  The others change a breaker's mode,
#: which the storage does not hold: they act on the process that got the POST.
FLEET_ACTIONS: Final = frozenset({"force_open", "close", "reset"})

_FEATURE = "console"
_PAGE = "console.html"
#: Longest JSON body a POST may have: ``{"action": "metrics_only"}`` is 26 bytes.
_MAX_ACTION_BODY = 1024


@functools.cache
def _page() -> tuple[bytes, str]:
    """The page's bytes and a Content-Security-Policy allowing exactly its inline code."""
    page = importlib.resources.files("gennet_sync").joinpath("static", _PAGE).read_bytes()
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, allowed in hashes.items():
        for body in re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, re.S):
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            allowed.append(f"'sha256-{digest}'")
    policy = (
        "default-src 'none'; connect-src 'self'; img-src 'self' data:; "
        f"script-src {' '.join(hashes['script'])}; style-src {' '.join(hashes['style'])}; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return page, policy


def action_scope(action: str, breaker: CircuitBreaker) -> str:
    """``"fleet"`` when ``action`` on ``breaker`` reaches every process, else ``"process"``.

    Under gunicorn each worker has its own breaker: an action reaches the other
    workers only through a shared storage, and only for :data:`FLEET_ACTIONS`.

    Example::

        action_scope("disable", breaker)  # "process": other workers keep their mode
    """
    return "fleet" if action in FLEET_ACTIONS and breaker.storage.shared else "process"


def breaker_view(status: BreakerStatus, now: float) -> dict[str, Any]:
    """One breaker as the console's JSON shows it (``now``: wall-clock time of the reading).

    Example::

        view = breaker_view(breaker.status(), time.time())
        assert view["state"] in ("closed", "open", "half_open")
    """
    metrics = status.metrics
    retry_in = None if status.retry_at is None else max(0.0, status.retry_at - now)
    return {
        "name": metrics.name,
        "state": metrics.state.value,
        "mode": metrics.mode.value,
        "fleet_state": None if status.fleet_state is None else status.fleet_state.value,
        "fleet_checked_at": status.fleet_checked_at,
        "storage_up": status.storage_up,
        "calls": metrics.calls,
        "successes": metrics.successes,
        "failures": metrics.failures,
        "ignored": metrics.ignored,
        "rejections": metrics.rejections,
        "slow_calls": metrics.slow_calls,
        "consecutive_failures": metrics.consecutive_failures,
        "failure_rate": metrics.failure_rate,
        "slow_call_rate": metrics.slow_call_rate,
        "window_calls": metrics.window_calls,
        "retry_at": status.retry_at,
        "retry_in": retry_in,
        "transitions": [
            {
                "from": change.old_state.value,
                "to": change.new_state.value,
                "reason": change.reason.value,
                "at": change.at,
            }
            for change in status.transitions
        ],
    }


class BreakerConsole:
    """The breaker console as a Flask extension (see the module's docstring).

    ``GET`` on the console's path answers JSON (``{"generated_at", "actions",
    "breakers": [...]}``, see :func:`breaker_view`), or the HTML page when the
    client prefers ``text/html``.  ``POST <path>/<name>`` with
    ``Content-Type: application/json`` and ``{"action": "force_open" | "close" |
    "disable" | "metrics_only" | "reset"}`` acts on that breaker (in this process;
    in every process with a shared storage for :data:`FLEET_ACTIONS`; the answer's
    ``scope`` and ``pid`` say which): only with an
    ``auth`` callback that allows the request (else a 403 envelope), and never
    from an HTML form (a body that is not JSON is a 415).  The routes are left
    out of the OpenAPI document; errors are envelopes.

    Example::

        console = BreakerConsole(auth=ops_only, view_auth=ops_only)

        def create_app():
            app = Flask(__name__)
            console.init_app(app)
            return app

    Args:
        app: The app, or ``None`` to call :meth:`init_app` later.
        breakers: Which breakers to show (see :data:`~gennet_sync.health.BreakerSource`);
            by default the process registry's and every ``@circuit_breaker``'s
            still in use.
        auth: Allows the POST actions (:data:`ConsoleAuth`); ``None`` turns them off.
        view_auth: Guards the GET views too, when given; without it anyone who
            can reach the app reads the console (a warning is logged at start-up).
        path: Where the console is served; ``GENNET_CONSOLE_PATH`` overrides it.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        breakers: BreakerSource = None,
        auth: ConsoleAuth | None = None,
        view_auth: ConsoleAuth | None = None,
        path: str = "/gennet/breakers",
    ) -> None:
        self._breakers = breakers
        self.auth = auth
        self.view_auth = view_auth
        self.path = path
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the console's routes on ``app`` (and the error envelope if not yet there)."""
        if not app_state(app).claim_feature(_FEATURE, self):
            return
        path = str(app.config.get("GENNET_CONSOLE_PATH") or self.path).rstrip("/")
        if not path.startswith("/"):
            raise ValueError(f"GENNET_CONSOLE_PATH must start with '/', not {path!r}")
        if self.view_auth is None:
            # Open reading is the default (like /health/ready, which shows the same
            # names); say so where a production deployment will notice it.
            app.logger.warning(
                "breaker console: GET %s shows every breaker's name, state and counts to "
                "anyone who can reach the app; pass view_auth= to restrict it",
                path,
            )
        app.add_url_rule(path, "gennet_console", _console_view)
        app.add_url_rule(
            f"{path}/<path:name>", "gennet_console_action", _action_view, methods=["POST"]
        )

    # -- views --------------------------------------------------------------------

    def view_response(self) -> Response:
        """What ``GET`` on the console answers: the page or the JSON, by ``Accept``."""
        if self.view_auth is not None:
            _authorise(self.view_auth)
        wanted = request.accept_mimetypes.best_match(
            ["application/json", "text/html"], default="application/json"
        )
        if wanted == "text/html":
            page, policy = _page()
            response = current_app.response_class(page, mimetype="text/html")
            response.headers["Content-Security-Policy"] = policy
            response.headers["X-Frame-Options"] = "DENY"
        else:
            response = _json_response(self.snapshot())
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.vary.add("Accept")
        return response

    def snapshot(self) -> dict[str, Any]:
        """The console's JSON body: every breaker, and the actions this console allows."""
        views = []
        for breaker in breakers_of(self._breakers):
            breaker.sync()  # an idle breaker shows what the fleet decided meanwhile
            views.append(breaker_view(breaker.status(), time.time()))
        return {
            "generated_at": time.time(),
            # Under gunicorn each worker answers for itself: say which one did.
            "pid": os.getpid(),
            "actions": sorted(ACTIONS) if self.auth is not None else [],
            "breakers": views,
        }

    def action_response(self, name: str) -> Response:
        """What ``POST <path>/<name>`` answers: the breaker after the action."""
        if self.auth is None:
            raise ForbiddenError(
                "Breaker actions are off: the app enables them with an auth callback",
                code="CONSOLE_ACTIONS_DISABLED",
            )
        _authorise(self.auth)
        if not request.is_json:
            # A browser form cannot send application/json across sites without a
            # CORS preflight: requiring it is what keeps the actions CSRF-safe.
            raise UnsupportedMediaType(
                "Send the action as a JSON body with Content-Type: application/json"
            )
        length = request.content_length
        if length is None or length > _MAX_ACTION_BODY:
            raise RequestEntityTooLarge(
                f"An action body has a Content-Length of at most {_MAX_ACTION_BODY} bytes"
            )
        body = request.get_json()  # malformed JSON: the library's own 400, as for any view
        action = body.get("action") if isinstance(body, dict) else None
        if not isinstance(action, str) or action not in ACTIONS:
            raise ValidationError(
                "action must be one of " + ", ".join(sorted(ACTIONS)),
                field="action",
                metadata={"allowed": sorted(ACTIONS)},
            )
        breaker = next((b for b in breakers_of(self._breakers) if b.name == name), None)
        if breaker is None:
            raise NotFoundError("Circuit breaker", name)
        current_app.logger.warning("breaker console: %s on %r", action, name)
        ACTIONS[action](breaker)
        body = breaker_view(breaker.status(), time.time())
        # Under gunicorn the POST reached one worker: say which, and how far it went.
        body.update(action=action, scope=action_scope(action, breaker), pid=os.getpid())
        return _json_response(body)


def _console() -> BreakerConsole:
    console = app_state(current_app).features[_FEATURE]
    assert isinstance(console, BreakerConsole)
    return console


@doc(hidden=True)
def _console_view() -> Response:
    return _console().view_response()


@doc(hidden=True)
def _action_view(name: str) -> Response:
    return _console().action_response(name)


def _authorise(auth: ConsoleAuth) -> None:
    allowed = auth(request)
    if allowed is None:
        raise UnauthorizedError()
    if allowed is not True:
        raise ForbiddenError()


def _json_response(body: Mapping[str, Any]) -> Response:
    response = current_app.response_class(
        json.dumps(body, separators=(",", ":"), allow_nan=False), mimetype="application/json"
    )
    response.headers["Cache-Control"] = "no-store"
    return response

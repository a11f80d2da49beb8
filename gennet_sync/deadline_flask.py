"""The Flask side of deadlines: each request's budget, from its caller or the app's default.

One step in the shared ``before_request`` hook reads ``Request-Timeout`` and binds
the deadline every ``ServiceSession`` call of the request obeys (see
:mod:`gennet_sync.deadline`).
"""

from __future__ import annotations

import time
from typing import Final

from flask import Flask, Request

from gennet_sync.deadline import DEADLINE_HEADER, bind_request_deadline, parse_budget
from gennet_sync.error_handler import app_state

__all__ = ["Deadlines"]

_FEATURE: Final = "deadlines"
_ENVIRON_KEY: Final = "HTTP_" + DEADLINE_HEADER.upper().replace("-", "_")


class Deadlines:
    """Flask extension: every request gets a time budget that its outgoing calls obey.

    The budget is the caller's ``Request-Timeout`` (seconds left), at most
    ``GENNET_DEFAULT_DEADLINE`` (seconds; also the budget of a request that
    carries none; default ``None``: no budget then, and no cap).  Set it below
    gunicorn's worker timeout, so calls stop before the worker is killed.  The
    clock starts when the request's ``before_request`` steps run.  A
    ``Request-Timeout`` that is not a plain non-negative number of seconds (at
    most a day) is ignored.

    Settings are read when ``init_app`` runs.

    Example::

        app = Flask(__name__)
        app.config["GENNET_DEFAULT_DEADLINE"] = 25
        Deadlines(app)
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Bind each request's deadline before its view runs.

        Raises:
            ValueError: ``GENNET_DEFAULT_DEADLINE`` is not a number of seconds >= 0.
        """
        default = app.config.setdefault("GENNET_DEFAULT_DEADLINE", None)
        if default is not None and (
            isinstance(default, bool) or not isinstance(default, int | float) or not default >= 0
        ):
            raise ValueError(
                f"GENNET_DEFAULT_DEADLINE must be seconds >= 0 or None, got {default!r}"
            )
        state = app_state(app)
        if _FEATURE in state.features:
            return  # it has no settings of its own: set up once is enough
        state.features[_FEATURE] = self
        cap = None if default is None else float(default)

        def bind_deadline(request: Request) -> None:
            budget = parse_budget(request.environ.get(_ENVIRON_KEY))
            if budget is None or (cap is not None and budget > cap):
                budget = cap
            bind_request_deadline(budget, time.monotonic)

        state.add_request_steps(app, before=bind_deadline)

"""Log lines that join requests and traces: a filter, a JSON formatter, a ready config.

:class:`TraceContextFilter` puts ``request_id``, ``trace_id`` and ``span_id`` on
every record; :class:`JsonFormatter` writes each record as one JSON object on one
line; :func:`logging_config` is a ``logging.config.dictConfig`` dictionary (and
gunicorn's ``logconfig_dict``) using both.  Standard library only: see
``docs/tracing.md`` for why not python-json-logger.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Final

from gennet_sync.context import RequestIdFilter
from gennet_sync.tracing import ENVIRON_SPAN_ID, ENVIRON_TRACE_ID, current_trace_ids

__all__ = ["JsonFormatter", "TraceContextFilter", "logging_config"]

#: What a record without a request or a span says in its place.
NONE: Final = "-"

#: gunicorn's access log record carries the WSGI environ as ``{key}e`` atoms in its
#: ``args``: the request's IDs, set while it was served, are read back from there
#: (the access line is written after the request's context is gone).
_ACCESS_ATOMS: Final = (
    ("request_id", "{gennet_sync.request_id}e"),
    ("trace_id", "{" + ENVIRON_TRACE_ID + "}e"),
    ("span_id", "{" + ENVIRON_SPAN_ID + "}e"),
)

#: LogRecord attributes that are the record itself, not ``extra=`` fields.
_RECORD_FIELDS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "request_id", "trace_id", "span_id"}
)


_PRIVATE: Final = ("_", "gennet_")


class TraceContextFilter(RequestIdFilter):
    """:class:`~gennet_sync.RequestIdFilter` that also puts ``trace_id`` and ``span_id``
    (hex, as trace back ends show them) on every record; ``-`` outside a span.

    Example::

        handler.addFilter(TraceContextFilter())
        handler.setFormatter(logging.Formatter("%(trace_id)s %(request_id)s %(message)s"))
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, Mapping) and "{gennet_sync.request_id}e" in args:
            for name, atom in _ACCESS_ATOMS:  # a gunicorn access line
                if not hasattr(record, name):
                    value = args.get(atom)
                    setattr(record, name, value if isinstance(value, str) else NONE)
        super().filter(record)
        if not hasattr(record, "trace_id"):
            ids = current_trace_ids()
            record.trace_id, record.span_id = ids if ids is not None else (NONE, NONE)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback included, escaped).

    Keys, in this order: ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
    ``service``, ``logger``, ``request_id``, ``trace_id``, ``span_id``,
    ``message``, then ``exception`` when there is one, then the record's
    ``extra=`` fields (values JSON cannot encode are written with ``str()``;
    names starting with ``_`` or ``gennet_`` are left out).
    Use it with :class:`TraceContextFilter`; without it the IDs are ``-``.

    Example::

        handler.setFormatter(JsonFormatter(service="workflow-service"))

    Args:
        service: The ``service`` of every line; ``GENNET_SERVICE_NAME`` by default.
    """

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service or os.environ.get("GENNET_SERVICE_NAME") or NONE

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "request_id": getattr(record, "request_id", NONE),
            "trace_id": getattr(record, "trace_id", NONE),
            "span_id": getattr(record, "span_id", NONE),
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            # gennet_* keys are the library's markers for its own handlers, not data.
            if key not in _RECORD_FIELDS and key not in line and not key.startswith(_PRIVATE):
                line[key] = value
        return json.dumps(line, default=_as_text, ensure_ascii=False)


def _as_text(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a value whose str() raises must not lose the line
        return type(value).__name__


def logging_config(
    service: str | None = None, *, level: str = "INFO", json_lines: bool = True
) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dictionary: every line with service, IDs, level.

    The root logger, ``gunicorn.error`` and ``gunicorn.access`` write to stderr
    through :class:`TraceContextFilter` and :class:`JsonFormatter` (or a plain text
    line with the same fields when ``json_lines`` is false).  In a gunicorn config
    module: ``logconfig_dict = logging_config("workflow-service")``.

    Example::

        logging.config.dictConfig(logging_config("workflow-service", level="DEBUG"))

    Args:
        service: The ``service`` of every line; ``GENNET_SERVICE_NAME`` by default.
        level: The root logger's level.
        json_lines: JSON lines (default) or text.

    Returns:
        The dictionary, for ``dictConfig`` or gunicorn's ``logconfig_dict``.
    """
    formatter: dict[str, Any]
    if json_lines:
        formatter = {"()": JsonFormatter, "service": service}
    else:
        formatter = {
            "format": f"%(asctime)s {service or os.environ.get('GENNET_SERVICE_NAME') or NONE} "
            "%(levelname)s [%(request_id)s %(trace_id)s] %(name)s: %(message)s"
        }
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "gennet",
        "filters": ["trace_context"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"trace_context": {"()": TraceContextFilter}},
        "formatters": {"gennet": formatter},
        # gunicorn merges this over its own defaults: its handlers keep their names.
        "handlers": {"console": handler, "error_console": dict(handler)},
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }

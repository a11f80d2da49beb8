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
    ``extra=`` fields (a value JSON cannot encode, NaN and infinities included,
    is written with ``str()``; a field named like one of the keys above is
    written as ``extra.<name>``; names starting with ``_`` or ``gennet_`` are
    left out).  U+0085, U+2028 and U+2029 are escaped too: no record is ever
    more than one line, nor lost to a value it carries.
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
            "message": _message(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            # gennet_* keys are the library's markers for its own handlers, not data.
            if key in _RECORD_FIELDS or key.startswith(_PRIVATE):
                continue
            # extra={"service": ...} must not replace the line's own.
            line[_EXTRA_PREFIX + key if key in line else key] = value
        try:
            text = _dumps(line)
        except (TypeError, ValueError, RecursionError):
            # A value JSON cannot write as it is (a dict with tuple keys, a cycle,
            # NaN): that value as text, the record kept.
            text = _dumps({key: _encodable(value) for key, value in line.items()})
        # JSON allows these unescaped; a reader splitting lines on them would not.
        return text.translate(_LINE_BREAKS)


#: The name an ``extra=`` field takes when it collides with one of the line's keys.
_EXTRA_PREFIX: Final = "extra."
#: Characters some readers take for the end of a line (JavaScript, str.splitlines).
_LINE_BREAKS: Final = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _dumps(line: Mapping[str, Any]) -> str:
    return json.dumps(line, default=_as_text, ensure_ascii=False, allow_nan=False)


def _encodable(value: object) -> object:
    """``value`` when JSON can write it strictly, else its text."""
    try:
        _dumps({"": value})
    except (TypeError, ValueError, RecursionError):
        return _as_text(value)
    return value


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # arguments that do not fit the format: the line is kept anyway
        return f"{_as_text(record.msg)} (arguments not formatted: {_as_text(record.args)})"


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

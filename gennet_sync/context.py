"""Per-request context shared between the Flask side and the requests side.

The error handler sets the current request ID here; ``ServiceSession`` reads it
to forward ``X-Request-ID`` on outgoing calls.  A :class:`contextvars.ContextVar`
works for sync, gthread and gevent workers alike.  No Flask, no requests here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from contextvars import ContextVar, Token
from random import getrandbits

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestIdFilter",
    "current_request_id",
    "is_valid_request_id",
    "new_request_id",
    "reset_request_id",
    "set_request_id",
    "set_request_id_fallback",
]

REQUEST_ID_HEADER = "X-Request-ID"

_request_id: ContextVar[str | None] = ContextVar("gennet_sync_request_id", default=None)
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


_fallback: Callable[[], str | None] | None = None


def current_request_id() -> str | None:
    """The ID of the request being served in this context, or ``None`` outside one."""
    request_id = _request_id.get()
    if request_id is None and _fallback is not None:
        return _fallback()
    return request_id


def set_request_id_fallback(source: Callable[[], str | None] | None) -> None:
    """Where :func:`current_request_id` looks when nothing is bound in this context.

    The Flask side sets it to read the request context, which Flask pushes again
    while a ``stream_with_context`` body is sent, after the request ID itself has
    been unbound.
    """
    global _fallback  # noqa: PLW0603 - one process-wide hook, set once at import
    _fallback = source


def set_request_id(value: str | None) -> Token[str | None]:
    """Bind ``value`` as the current request ID; pass the token to :func:`reset_request_id`."""
    return _request_id.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    """Restore the request ID that was current before :func:`set_request_id`."""
    _request_id.reset(token)


def is_valid_request_id(value: str | None) -> bool:
    """True for 1 to 128 characters of letters, digits, ``.``, ``_`` and ``-``."""
    return value is not None and _VALID_REQUEST_ID.fullmatch(value) is not None


def new_request_id() -> str:
    """A fresh random request ID: a version 4 UUID as 32 hex digits (as ``uuid4().hex``).

    The bits come from :func:`random.getrandbits`, as OpenTelemetry's trace IDs
    do: a request ID correlates log lines, it guards nothing (any client may send
    its own), so it needs to be unique, not unpredictable.  ``random`` is seeded
    from ``os.urandom`` and reseeded in every forked process, so gunicorn workers
    draw different IDs.  This runs for every request that comes without an ID:
    ``uuid.uuid4()`` costs about 2 us, ``os.urandom`` alone a system call
    (0.5 us); this about 0.3 us.
    """
    return (getrandbits(128) & _UUID4_KEEP | _UUID4_SET).to_bytes(16, "big").hex()


# Version 4 (the high nibble of byte 6) and the RFC 4122 variant (the top two
# bits of byte 8), in the 128-bit big-endian number the hex digits spell.
_UUID4_KEEP = ((1 << 128) - 1) & ~(0xF << 76 | 0x3 << 62)
_UUID4_SET = 0x4 << 76 | 0x2 << 62


class RequestIdFilter(logging.Filter):
    """Logging filter that puts the current request ID on every record as ``request_id``.

    Example::

        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(request_id)s %(message)s"))
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True

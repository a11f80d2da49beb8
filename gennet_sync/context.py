"""Per-request context shared between the Flask side and the requests side.

The error handler sets the current request ID here; ``ServiceSession`` reads it
to forward ``X-Request-ID`` on outgoing calls.  A :class:`contextvars.ContextVar`
works for sync, gthread and gevent workers alike.  No Flask, no requests here.
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar, Token

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

    A request ID correlates log lines, it guards nothing (any client may send its
    own), so it needs to be unique, not secret; its bits come from ``os.urandom``
    all the same.  This runs for every request that comes without an ID, so IDs
    are made :data:`_BATCH` at a time (one system call, and a few C calls, for
    all of them) and handed out one by one: about half of what drawing each
    from :func:`random.getrandbits` costs, and ``uuid.uuid4()`` costs about 2 us.
    A forked process (a gunicorn worker) starts without the IDs its parent had
    made, so no two processes hand out the same ones.
    """
    try:
        return _made.popleft()  # atomic: threads never get the same ID
    except IndexError:
        return _make_batch()


#: How many request IDs are made at once.
_BATCH = 64
# The version 4 UUID's marks: the high nibble of byte 6 is the version (4), the top
# two bits of byte 8 the RFC 4122 variant (10); each table maps a byte to its
# value with the mark set.
_VERSION_4 = bytes(byte & 0x0F | 0x40 for byte in range(256))
_RFC_4122_VARIANT = bytes(byte & 0x3F | 0x80 for byte in range(256))
_made: deque[str] = deque()


def _make_batch() -> str:
    """Make :data:`_BATCH` request IDs, keep all but one, return that one."""
    data = bytearray(os.urandom(16 * _BATCH))
    data[6::16] = data[6::16].translate(_VERSION_4)
    data[8::16] = data[8::16].translate(_RFC_4122_VARIANT)
    ids = data.hex(" ", 16).split()  # 32 hex digits each, split in C
    _made.extend(ids[1:])
    return ids[0]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_made.clear)


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

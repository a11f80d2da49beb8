"""Fallbacks: an answer for a call that failed or was refused.

``ServiceSession(fallback=...)`` calls the fallback when a call fails (a
transport error, a failure status, an error raised with ``raise_errors``) or is
refused (breaker open, bulkhead full, no time left); the response it returns, if
any, is the call's answer.  :class:`LastGoodResponse` is a ready one: the last
good answer to each GET, kept in a bounded in-memory cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import requests

__all__ = ["FALLBACK_WARNING", "LastGoodResponse"]

#: The ``Warning`` header of a response served from the cache (RFC 7234's
#: "Response is Stale"), so the caller and its logs can tell.
FALLBACK_WARNING: Final = '110 gennet_sync "Response is Stale"'

# Responses to requests carrying credentials are never kept: another caller of
# the same URL would be served them.
_PRIVATE_HEADERS: Final = ("Authorization", "Cookie", "Proxy-Authorization")


class _Entry:
    __slots__ = ("content", "encoding", "headers", "reason", "status_code", "stored_at")

    def __init__(self, response: requests.Response, stored_at: float) -> None:
        self.status_code = response.status_code
        self.reason = response.reason
        self.headers = dict(response.headers)
        self.content = response.content
        self.encoding = response.encoding
        self.stored_at = stored_at


class LastGoodResponse:
    """A fallback that answers a failed GET with the last good response to its URL.

    Only GET requests without credentials (``Authorization``, ``Cookie``) are
    kept, and only 2xx answers whose body was read (not ``stream=True``) and is
    at most ``max_body`` bytes.  Entries are keyed by URL and ``Accept``; at most
    ``max_entries`` are kept (the least recently used goes first) and an entry
    older than ``max_age`` seconds is never served.  A served response carries
    ``Warning: 110 gennet_sync "Response is Stale"``, an ``Age`` header, and
    ``response.fallback = True``.

    Example::

        session = ServiceSession(base_url="http://grn:8000", fallback=LastGoodResponse())
        network = session.get("/networks/abc")   # grn down: the last good answer, if any
        if getattr(network, "fallback", False):
            ...                                   # stale: tell the user

    Args:
        max_entries: URLs remembered.
        max_age: Seconds a response may be served for after it was received.
        max_body: Largest body kept, in bytes.
        clock: Seconds on a monotonic scale.
    """

    def __init__(
        self,
        max_entries: int = 256,
        max_age: float = 300.0,
        max_body: int = 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        if not max_age > 0:
            raise ValueError(f"max_age must be > 0, got {max_age!r}")
        if max_body < 0:
            raise ValueError(f"max_body must be >= 0, got {max_body!r}")
        self.max_entries = max_entries
        self.max_age = max_age
        self.max_body = max_body
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.served = 0

    @staticmethod
    def _key(request: requests.PreparedRequest) -> tuple[str, str] | None:
        if request.method != "GET" or any(name in request.headers for name in _PRIVATE_HEADERS):
            return None
        return request.url or "", request.headers.get("Accept", "")

    def remember(self, response: requests.Response, *, streamed: bool = False) -> None:
        """Keep ``response`` as the last good answer to its request, when it may be kept."""
        request = response.request
        if streamed or request is None or not 200 <= response.status_code < 300:
            return
        key = self._key(request)
        if key is None:
            return
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_body:
            return
        content = response.content
        if content is None or len(content) > self.max_body:
            return
        entry = _Entry(response, self._clock())
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __call__(
        self,
        request: requests.PreparedRequest,
        error: BaseException | None,
        response: requests.Response | None,
    ) -> requests.Response | None:
        """The last good response to ``request``, or ``None`` (the failure stands)."""
        key = self._key(request)
        if key is None:
            return None
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now - entry.stored_at > self.max_age:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            self.served += 1
        stale = requests.Response()
        stale.status_code = entry.status_code
        stale.reason = entry.reason
        stale.headers.update(entry.headers)
        stale.headers["Warning"] = FALLBACK_WARNING
        stale.headers["Age"] = str(int(now - entry.stored_at))
        stale._content = entry.content
        stale._content_consumed = True  # type: ignore[attr-defined]
        stale.encoding = entry.encoding
        stale.url = request.url or ""
        stale.request = request
        stale.fallback = True  # type: ignore[attr-defined]
        return stale

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict[str, object]:
        # A copy (a pickled session's) starts empty: the cache is this process's.
        state = dict(self.__dict__)
        del state["_lock"]
        state["_entries"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

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
from collections.abc import Callable, Collection, Mapping
from typing import Final, cast

import requests
from requests.auth import AuthBase

__all__ = ["DEFAULT_PRIVATE_HEADERS", "FALLBACK_WARNING", "LastGoodResponse"]

#: The ``Warning`` header of a response served from the cache (RFC 7234's
#: "Response is Stale"), so the caller and its logs can tell.
FALLBACK_WARNING: Final = '110 gennet_sync "Response is Stale"'

# Requests carrying credentials are never kept nor served: another caller of the
# same URL would get an answer meant for someone else.
_CREDENTIAL_HEADERS: Final = ("Authorization", "Cookie", "Proxy-Authorization")

#: Request headers that usually carry an API key or a token: a request with one is
#: treated as carrying credentials (``LastGoodResponse(private_headers=)`` adds more).
DEFAULT_PRIVATE_HEADERS: Final = (
    "X-Api-Key",
    "Api-Key",
    "X-Auth-Token",
    "X-Access-Token",
    "X-Amz-Security-Token",
    "X-Goog-Api-Key",
    "Ocp-Apim-Subscription-Key",
)

# Cache-Control directives of a response that says it is for one user only, or
# must never be stored (RFC 9111, sections 5.2.2.5 and 5.2.2.7).
_NOT_SHARED: Final = frozenset({"no-store", "private"})


def _directives(value: str) -> set[str]:
    """The directive names in a ``Cache-Control`` value, lowercased."""
    return {part.split("=", 1)[0].strip().lower() for part in value.split(",")}


def by_lowered_name(headers: Mapping[str, str]) -> Mapping[str, tuple[str, str]]:
    """``headers`` keyed by lowercased name, each with its name as given and its value.

    requests' ``CaseInsensitiveDict`` keeps exactly this as ``_store``; read as it
    is, it costs nothing.  Walking it through the public ``lower_items()`` (two
    generators per header) was most of what keeping an answer cost a call.
    """
    store = getattr(headers, "_store", None)
    if isinstance(store, dict):
        return store
    return {name.lower(): (name, value) for name, value in headers.items()}


def _key_of(
    request: requests.PreparedRequest, headers: Mapping[str, tuple[str, str]]
) -> tuple[str, str]:
    """The cache key of a GET ``request`` (its headers by lowercased name): the URL
    it asked for, and what it accepts."""
    accept = headers.get("accept")
    return request.url or "", "" if accept is None else accept[1]


class _Entry:
    __slots__ = ("content", "encoding", "headers", "reason", "status_code", "stored_at", "vary")

    def __init__(
        self,
        response: requests.Response,
        content: bytes,
        headers: Mapping[str, tuple[str, str]],
        stored_at: float,
        vary: tuple[tuple[str, str], ...],
    ) -> None:
        self.status_code = response.status_code
        self.reason = response.reason
        # The (name, value) pairs, copied: the caller may change its response's.
        self.headers = tuple(headers.values())
        self.content = content
        self.encoding = response.encoding
        self.stored_at = stored_at
        #: The request headers the response varies on, with the values it was sent with.
        self.vary = vary


def _same_vary(request: requests.PreparedRequest, entry: _Entry) -> bool:
    """Whether ``request`` has the values of the headers ``entry``'s response varies on."""
    return all(request.headers.get(name, "") == value for name, value in entry.vary)


class LastGoodResponse:
    """A fallback that answers a failed GET with the last good response to its URL.

    Only GET requests without credentials (``Authorization``, ``Cookie``,
    ``Proxy-Authorization``, a header of ``private_headers``, an ``auth=`` that
    answers challenges) are kept or served, and only 2xx answers whose body was
    read (not ``stream=True``) and is at most ``max_body`` bytes, that set no
    cookie and are not ``Cache-Control: no-store`` or ``private``.  A response
    with ``Vary`` is served only to a request with the same values of those
    headers (``Vary: *``: never kept).  Entries are keyed by the URL the call
    asked for (not where it was redirected) and ``Accept``; at most
    ``max_entries`` are kept (the least recently used goes first) and an entry
    older than ``max_age`` seconds is never served.  A kept answer is replaced by
    a newer good one once it is ``refresh_after`` seconds old, not sooner (unless
    the newer one's request has other values of the headers the kept answer
    varies on): a URL called a thousand times a second is kept once a second,
    and its other calls pay for a lookup only.  A served response carries
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
        private_headers: Request headers carrying a key or a token (beyond
            ``Authorization``, ``Cookie`` and ``Proxy-Authorization``, always
            private): a request with one is never kept nor served.
        refresh_after: Seconds a kept answer stays before a newer good answer
            to the same request replaces it (at most half of ``max_age``);
            ``0``: every one does.  An answer served is then at most this much
            older than the last good one.
    """

    def __init__(
        self,
        max_entries: int = 256,
        max_age: float = 300.0,
        max_body: int = 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        private_headers: Collection[str] = DEFAULT_PRIVATE_HEADERS,
        refresh_after: float = 1.0,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        if not max_age > 0:
            raise ValueError(f"max_age must be > 0, got {max_age!r}")
        if max_body < 0:
            raise ValueError(f"max_body must be >= 0, got {max_body!r}")
        if not refresh_after >= 0:
            raise ValueError(f"refresh_after must be >= 0, got {refresh_after!r}")
        self.max_entries = max_entries
        self.max_age = max_age
        self.max_body = max_body
        self.refresh_after = refresh_after
        self._clock = clock
        self.private_headers = private_headers
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.served = 0

    @property
    def private_headers(self) -> tuple[str, ...]:
        """The request headers that make a request private: ``Authorization``,
        ``Cookie`` and ``Proxy-Authorization`` always, then the ones given."""
        return self._private_headers

    @private_headers.setter
    def private_headers(self, names: Collection[str]) -> None:
        if isinstance(names, str):  # one name would be taken letter by letter
            raise TypeError("private_headers must be a collection of header names")
        always = {name.lower() for name in _CREDENTIAL_HEADERS}
        given = tuple(name for name in names if name.lower() not in always)
        self._private_headers = (*_CREDENTIAL_HEADERS, *given)
        self._private_names = frozenset(name.lower() for name in self._private_headers)

    def _private(self, request: requests.PreparedRequest) -> bool:
        """Whether ``request`` carries credentials of any kind we can see."""
        return self._private_by(request, by_lowered_name(request.headers))

    def _private_by(
        self, request: requests.PreparedRequest, headers: Mapping[str, tuple[str, str]]
    ) -> bool:
        """:meth:`_private`, given ``request``'s headers by lowercased name."""
        # One pass over the request's few headers, not a lookup per private name:
        # a missing name costs requests' CaseInsensitiveDict a KeyError raised.
        if not self._private_names.isdisjoint(headers):
            return True
        # An auth= that answers challenges (digest) leaves only its response hook.
        hooks = request.hooks.get("response") if request.hooks else None
        if not hooks:
            return False
        return any(isinstance(getattr(hook, "__self__", None), AuthBase) for hook in hooks)

    def _key(self, request: requests.PreparedRequest) -> tuple[str, str] | None:
        if request.method != "GET":
            return None
        headers = by_lowered_name(request.headers)
        if self._private_by(request, headers):
            return None
        return _key_of(request, headers)

    def remember(self, response: requests.Response, *, streamed: bool = False) -> None:
        """Keep ``response`` as the last good answer to its request, when it may be kept.

        A redirected call's answer is kept under the URL the call asked for: the
        one a later call of it looks up.
        """
        # Every successful GET passes here: one pass, in the order the cheapest
        # refusals come first (a call to each helper cost as much as its work).
        if streamed or not 200 <= response.status_code < 300:
            return
        request = response.request
        history = response.history
        asked = history[0].request if history else request
        if request is None or asked is None or asked.method != "GET":
            return
        asked_headers = by_lowered_name(asked.headers)
        key = _key_of(asked, asked_headers)
        now = self._clock()
        # An entry too young to replace, for a request with the same values of its
        # Vary headers: used again, as a kept answer would be, and not replaced.
        # Young: under refresh_after and half of max_age (refreshed well before it
        # expires), and not from a time the clock has gone back past.
        entries = self._entries
        kept = entries.get(key)  # one dict lookup is atomic: no lock to find none
        if kept is not None:
            age = now - kept.stored_at
            if (
                0 <= age < self.refresh_after
                and age + age < self.max_age
                and (not kept.vary or _same_vary(asked, kept))
            ):
                # Without the lock: move_to_end is one C call, atomic under the GIL
                # (and under free-threading's per-object locks) like the lookup, and
                # the lock only keeps a store's several steps together.  An entry
                # evicted or replaced meanwhile: nothing to mark.
                try:  # noqa: SIM105 - contextlib.suppress costs a call on every call
                    entries.move_to_end(key)
                except KeyError:
                    pass
                return
        if self._private_by(asked, asked_headers):
            return
        # A redirect hop's own request may carry credentials of its own, and a hop's
        # answer may have set a cookie.
        if history and (
            (request is not asked and self._private(request))
            or any("Set-Cookie" in answer.headers for answer in history)
        ):
            return
        headers = by_lowered_name(response.headers)
        if "set-cookie" in headers:
            return
        cache_control = headers.get("cache-control")
        if cache_control is not None and _directives(cache_control[1]) & _NOT_SHARED:
            return
        vary: tuple[tuple[str, str], ...] = ()
        vary_header = headers.get("vary")
        if vary_header is not None and vary_header[1]:
            vary_names = _directives(vary_header[1])
            vary_names.discard("")
            if "*" in vary_names:
                return
            vary = tuple(sorted((name, asked.headers.get(name, "")) for name in vary_names))
        length = headers.get("content-length")
        if length is not None and length[1].isdigit() and int(length[1]) > self.max_body:
            return
        # The body as read (requests keeps False until it is): one never read is
        # not read here, where nothing bounds it.
        content = response._content
        if not isinstance(content, bytes) or len(content) > self.max_body:
            return
        entry = _Entry(response, content, headers, now, vary)
        with self._lock:
            entries[key] = entry
            entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)

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
            if entry is None or not _same_vary(request, entry):
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
        # A copy pickled before private_headers became a property kept the names
        # as a plain attribute.
        names = state.pop("private_headers", None)
        # One pickled before refresh_after existed kept every good answer.
        state.setdefault("refresh_after", 0.0)
        self.__dict__.update(state)
        if names is not None:
            self.private_headers = cast("tuple[str, ...]", names)
        self._lock = threading.Lock()

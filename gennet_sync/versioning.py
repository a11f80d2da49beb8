"""URL-prefixed API versions that tell clients when a version is going away.

:class:`VersionedAPI` mounts one blueprint per version under ``/api/<version>`` and
adds to every response under that prefix (successes, error envelopes and unknown
paths alike):

- ``API-Version: v1``;
- for a deprecated version, ``Deprecation: @<epoch seconds>`` (RFC 9745),
  ``Sunset: <HTTP-date>`` (RFC 8594) when a sunset date is set, and
  ``Link: <...>; rel="deprecation"`` pointing to the deprecation information
  (by default the versions index at ``/api``), plus ``rel="successor-version"``
  naming the newest version that is not deprecated.

A request for a version that does not exist (``/api/v9/...``) answers the 404
envelope with the supported versions in its metadata::

    {"error": {"code": "NOT_FOUND", "type": "NotFoundError",
               "message": "API version with id 'v9' not found",
               "metadata": {"resource_type": "API version", "resource_id": "v9",
                            "supported_versions": ["v1", "v2"]}}}

``GET /api`` lists the versions with their dates.  With ``header_routing=True``
the same routes are also served without the prefix, the version chosen by the
request's ``API-Version`` header.  The per-app state lives in
``app_state(app).features["versioning"]`` (the :class:`VersionedAPI`), where the
OpenAPI feature finds the versions to document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from email.utils import parsedate_to_datetime
from typing import Any, cast

from flask import Blueprint, Flask, Request, Response, jsonify
from flask.sansio.blueprints import BlueprintSetupState
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.http import http_date
from werkzeug.routing import Rule

from gennet_sync.error_handler import app_state
from gennet_sync.exceptions import NotFoundError

__all__ = [
    "API_VERSION_HEADER",
    "APIVersion",
    "DateLike",
    "VersionedAPI",
]

#: Response header naming the version that served a request.
API_VERSION_HEADER = "API-Version"

#: What ``deprecated=`` and ``sunset=`` accept: an aware or naive (taken as UTC)
#: datetime, a date (midnight UTC), or a string in ISO 8601 or HTTP-date form.
DateLike = datetime | date | str

_ENVIRON_VERSIONABLE = "gennet_sync.versioning.versionable"
_ENVIRON_UNKNOWN_HEADER_VERSION = "gennet_sync.versioning.unknown_header_version"
_ENVIRON_SERVED_BY = "gennet_sync.versioning.served_by"
_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_FEATURE = "versioning"
_HEADER_CACHE_SIZE = 64
_RULE_CACHE_SIZE = 4096
#: A response's version headers: name, value and the name lowered.
_Headers = tuple[tuple[str, str, str], ...]

# Blueprint setup methods that still work after registration because they go
# through ``record``; the others (before_request, errorhandler...) are merged into
# the app once, at registration, so adding them later would silently do nothing.
_LIVE_SETUP_METHODS = frozenset(
    {"add_url_rule", "route", "get", "post", "put", "patch", "delete", "record", "record_once"}
)


def _to_datetime(value: DateLike, what: str) -> datetime:
    """``value`` as an aware UTC datetime; ``ValueError`` naming ``what`` when unparseable."""
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            try:
                parsed = parsedate_to_datetime(text)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{what}={value!r} is neither an ISO 8601 date nor an HTTP-date"
                ) from None
        value = parsed
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0, 0), tzinfo=UTC)
    raise TypeError(f"{what} must be a datetime, a date or a string, not {type(value).__name__}")


@dataclass(frozen=True)
class APIVersion:
    """One registered API version; the headers it puts on its responses.

    Attributes:
        name: The version as it appears in URLs (``"v1"``).
        url_prefix: Where its routes live (``"/api/v1"``).
        blueprint: The blueprint holding its routes.
        deprecated: When it was (or will be) deprecated, in UTC; ``None`` if it is not.
        sunset: When it stops being served, in UTC; ``None`` if not announced.
        link: URL of the deprecation information for the ``Link`` header; ``None``
            uses the versions index.

    Example::

        version = api.versions["v1"]
        version.is_deprecated, version.headers()
    """

    name: str
    url_prefix: str
    blueprint: Blueprint
    deprecated: datetime | None = None
    sunset: datetime | None = None
    link: str | None = None

    def __post_init__(self) -> None:
        if (
            self.deprecated is not None
            and self.sunset is not None
            and self.sunset < self.deprecated
        ):
            raise ValueError(
                f"version {self.name!r}: sunset ({self.sunset.isoformat()}) is earlier than "
                f"its deprecation ({self.deprecated.isoformat()}); RFC 8594 requires "
                "the sunset not to precede the deprecation"
            )

    @property
    def is_deprecated(self) -> bool:
        """Whether a deprecation date is set (past or announced for the future)."""
        return self.deprecated is not None

    def headers(
        self, *, deprecation_link: str | None = None, successor: str | None = None
    ) -> dict[str, str]:
        """The headers every response of this version carries.

        Args:
            deprecation_link: Fallback target of ``rel="deprecation"`` when
                :attr:`link` is not set.
            successor: URL of the version that replaces this one, if any.

        Returns:
            ``API-Version`` always; ``Deprecation``, ``Sunset`` and ``Link`` when set.
        """
        headers = {API_VERSION_HEADER: self.name}
        if self.deprecated is not None:
            headers["Deprecation"] = f"@{int(self.deprecated.timestamp())}"
        if self.sunset is not None:
            headers["Sunset"] = http_date(self.sunset)
        links = []
        target = self.link or deprecation_link
        if self.deprecated is not None and target:
            links.append(f'<{target}>; rel="deprecation"')
        if self.deprecated is not None and successor:
            links.append(f'<{successor}>; rel="successor-version"')
        if links:
            headers["Link"] = ", ".join(links)
        return headers

    def describe(self) -> dict[str, Any]:
        """The JSON description served by the versions index."""
        return {
            "version": self.name,
            "url": self.url_prefix,
            "deprecated": self.deprecated.isoformat() if self.deprecated else None,
            "sunset": self.sunset.isoformat() if self.sunset else None,
        }


class _VersionBlueprint(Blueprint):
    """A blueprint that accepts routes after it was registered.

    Routes are applied through ``record``; this subclass also runs every record
    made after registration against the setup states it was registered with, so
    ``api.version("v1")`` can register the blueprint at once and routes can be
    added to it afterwards, in any order.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._live_states: list[BlueprintSetupState] = []

    def _check_setup_finished(self, f_name: str) -> None:
        if f_name in _LIVE_SETUP_METHODS:
            return
        try:
            super()._check_setup_finished(f_name)
        except AssertionError as error:
            raise AssertionError(
                f"{error}\nFor request hooks or error handlers on one version, build a "
                "Blueprint yourself and pass it: api.version('v1', blueprint=bp)."
            ) from None

    def record(self, func: Callable[[BlueprintSetupState], None]) -> None:
        super().record(func)
        for state in self._live_states:
            func(state)

    def make_setup_state(
        self, app: Any, options: dict[str, Any], first_registration: bool = False
    ) -> BlueprintSetupState:
        state = super().make_setup_state(app, options, first_registration)
        self._live_states.append(state)
        return state


class VersionedAPI:
    """URL-prefixed API versions with deprecation and sunset headers.

    Works with the app factory pattern: versions declared before ``init_app`` are
    registered on every app it is given.

    Example::

        from datetime import date
        from flask import Flask
        from gennet_sync import VersionedAPI, setup_error_handlers

        app = Flask(__name__)
        setup_error_handlers(app)
        api = VersionedAPI(app)

        v1 = api.version("v1", deprecated=date(2025, 1, 1), sunset=date(2026, 1, 1))
        v2 = api.version("v2")

        @v1.get("/networks")
        def list_networks_v1(): ...

        @v2.get("/networks")
        def list_networks_v2(): ...

        # GET /api/v1/networks -> API-Version: v1, Deprecation: @1735689600,
        #   Sunset: Thu, 01 Jan 2026 00:00:00 GMT,
        #   Link: </api>; rel="deprecation", </api/v2>; rel="successor-version"
        # GET /api/v9/networks -> 404 envelope, metadata.supported_versions == ["v1", "v2"]

    Args:
        app: The app to register on now; or call :meth:`init_app` later.
        prefix: URL prefix of all versions.
        index: Serve ``GET <prefix>`` listing the versions and their dates.
        header_routing: Also serve a version's routes without the prefix, chosen
            by the request's ``API-Version`` header: ``GET /networks`` with
            ``API-Version: v2`` is served by ``/api/v2/networks``, and responses
            to paths a version has carry ``Vary: API-Version``.  Paths that no
            version has are left alone (``/health`` stays ``/health``).  An
            unknown version in the header on a path nothing serves is the 404
            envelope listing versions; a versioned path asked for without a
            usable header (none, or a version that lacks the path) is a 404
            naming the versions that serve it.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        prefix: str = "/api",
        index: bool = True,
        header_routing: bool = False,
    ):
        cleaned = "/" + prefix.strip("/")
        if cleaned == "/":
            raise ValueError("prefix must not be empty: versions live under a path like /api")
        self.prefix = cleaned
        self.index = index
        self.header_routing = header_routing
        self._versions: dict[str, APIVersion] = {}
        # Registered on every app this API is set up on: its records register each
        # version there, including versions declared later (Flask keeps the per-app
        # setup state, so the API itself holds no app).
        self._versions_blueprint = _VersionBlueprint("gennet_api_versions_root", __name__)
        # (version name, script root) -> its response headers; cleared when a
        # version is declared, since that can change the successor.
        self._header_cache: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        # URL rule -> (script root, its responses' headers with their lowered names),
        # for rules whose every matching path names the same version (or none); a
        # request matched to one skips parsing its path.  Cleared with the above.
        self._rule_headers: dict[str, tuple[str, _Headers]] = {}
        # Whether a header-routing middleware marks requests (set by init_app).
        self._marks_versionable = False
        if app is not None:
            self.init_app(app)

    @property
    def versions(self) -> Mapping[str, APIVersion]:
        """The registered versions, by name, in the order they were declared."""
        return dict(self._versions)

    @property
    def supported_versions(self) -> list[str]:
        """Names of the registered versions, in declaration order."""
        return list(self._versions)

    def init_app(self, app: Flask) -> None:
        """Register the versions declared so far, the hooks and the index on ``app``."""
        state = app_state(app)
        existing = state.features.get(_FEATURE)
        if existing is self:
            return
        if existing is not None:
            raise RuntimeError("this app already has a VersionedAPI; use that one")
        state.features[_FEATURE] = self
        # Its before step acts only on a request no rule matched: skipped on the others.
        state.add_request_steps(
            app,
            before=self._reject_unknown_version,
            after=self._add_version_headers,
            before_always=False,
        )
        if self.header_routing:
            self._marks_versionable = True
            app.wsgi_app = _HeaderRoutingMiddleware(app.wsgi_app, app, self)  # type: ignore[method-assign]
        if self.index:
            app.add_url_rule(
                self.prefix, endpoint="gennet_api_versions", view_func=self._versions_index
            )
        app.register_blueprint(self._versions_blueprint)  # registers every version so far

    def version(
        self,
        name: str,
        *,
        deprecated: DateLike | None = None,
        sunset: DateLike | None = None,
        link: str | None = None,
        blueprint: Blueprint | None = None,
    ) -> Blueprint:
        """Declare version ``name``, served under ``<prefix>/<name>``.

        Args:
            name: Version name as it appears in URLs: letters, digits, ``-`` and ``_``.
            deprecated: Date of deprecation (may be in the future); sends the
                ``Deprecation`` and ``Link`` headers.
            sunset: Date the version stops being served; sends ``Sunset``.  Must
                not be earlier than ``deprecated``.
            link: URL with human-readable deprecation information for
                ``Link: <link>; rel="deprecation"``; defaults to the versions index.
            blueprint: An existing blueprint to mount (use this for per-version
                request hooks or error handlers); a new one is made otherwise.
                Its endpoints are named ``<name>.<view>``, so one blueprint can be
                mounted under several versions.

        Returns:
            The blueprint: add routes to it (before or after this call).

        Raises:
            ValueError: A bad or duplicate name, an unparseable date, or a sunset
                earlier than the deprecation.
        """
        if not _VERSION_NAME.match(name):
            raise ValueError(
                f"version name {name!r} must be 1-32 letters, digits, '-' or '_' "
                "(it is a URL segment and a blueprint name)"
            )
        if name in self._versions:
            raise ValueError(f"version {name!r} is already declared")
        bp = blueprint if blueprint is not None else _VersionBlueprint(name, __name__)
        version = APIVersion(
            name=name,
            url_prefix=f"{self.prefix}/{name}",
            blueprint=bp,
            deprecated=None if deprecated is None else _to_datetime(deprecated, "deprecated"),
            sunset=None if sunset is None else _to_datetime(sunset, "sunset"),
            link=link,
        )
        self._versions[name] = version
        self._header_cache.clear()
        self._rule_headers.clear()
        self._versions_blueprint.record(
            lambda setup: self._register(cast("Flask", setup.app), version)
        )
        return bp

    def version_for_path(self, path: str) -> APIVersion | None:
        """The version whose prefix ``path`` falls under, if any."""
        name = self._version_name(path)
        return self._versions.get(name) if name else None

    def _version_name(self, path: str) -> str:
        """The version segment of ``<prefix>/<version>/...``; empty for other paths."""
        if not path.startswith(self.prefix + "/"):
            return ""
        return path[len(self.prefix) + 1 :].split("/", 1)[0]

    def successor_of(self, version: APIVersion) -> APIVersion | None:
        """The newest declared version that is not deprecated, unless it is ``version``."""
        current = [v for v in self._versions.values() if not v.is_deprecated]
        if not current or current[-1] is version:
            return None
        return current[-1]

    def _register(self, app: Flask, version: APIVersion) -> None:
        app.register_blueprint(version.blueprint, url_prefix=version.url_prefix, name=version.name)

    def _reject_unknown_version(self, request: Request) -> None:
        # Routing already failed (no rule matched): if the path names a version that
        # does not exist, say so and list the real ones instead of a bare 404.
        error = request.routing_exception
        if error is None or not isinstance(error, NotFound):  # None: most requests
            return
        from_header = request.environ.get(_ENVIRON_UNKNOWN_HEADER_VERSION)
        if from_header is not None:
            raise NotFoundError(
                "API version",
                from_header,
                metadata={"supported_versions": self.supported_versions},
            )
        served_by = request.environ.get(_ENVIRON_SERVED_BY)
        if served_by:
            # Header routing: the path exists, but not in the version asked for.
            raise NotFound(
                f"{request.path} is served by API version {' and '.join(served_by)}: name "
                f"one in the {API_VERSION_HEADER} header, or request "
                f"{self.prefix}/<version>{request.path}"
            )
        name = self._version_name(request.path)
        if not name or name in self._versions:
            return
        raise NotFoundError(
            "API version",
            name,
            metadata={"supported_versions": self.supported_versions},
        )

    def _add_version_headers(self, request: Request, response: Response) -> Response:
        # This runs on every response: each call and each string built costs about
        # as much as a line, hence the cache by URL rule and the inlined loops.
        if self._marks_versionable and request.environ.get(_ENVIRON_VERSIONABLE):
            vary = ", ".join(response.headers.getlist("Vary"))
            if API_VERSION_HEADER.lower() not in vary.lower():
                response.headers["Vary"] = (
                    f"{vary}, {API_VERSION_HEADER}" if vary else API_VERSION_HEADER
                )
        rule = request.url_rule
        script_root = request.root_path
        entry = self._rule_headers.get(rule.rule) if rule is not None else None
        if entry is not None and entry[0] == script_root:
            headers = entry[1]
        else:
            headers = self._headers_of_request(request.path, script_root, rule)
        if not headers:
            return response
        # werkzeug's list of the response's headers, appended to directly (see below);
        # tests/unit/test_performance_equivalence.py pins that werkzeug keeps it.
        pairs = response.headers._list
        for name, value, lowered in headers:
            if name == "Link":
                # Links the view set (on one line or several) stay, ours go last.
                response.headers["Link"] = ", ".join([*response.headers.getlist("Link"), value])
                continue
            # headers.set(name, value), inlined.
            length = len(lowered)
            for key, _ in pairs:
                # Lengths first: most names are not ours, and lower() is a call.
                if len(key) == length and key.lower() == lowered:
                    response.headers.set(name, value)  # the view set one: replaced in place
                    break
            else:
                # As set() appends a header the response lacks; the value was checked
                # for newlines when the cache was filled (_headers_for).
                pairs.append((name, value))
        return response

    def _headers_of_request(self, path: str, script_root: str, rule: Rule | None) -> _Headers:
        """The version headers of a response to ``path`` (under ``script_root``).

        Remembered for ``rule`` (the URL rule the request matched) when every path
        it matches names the same version or none, which its text shows up to its
        first converter.
        """
        version = self.version_for_path(path)
        if version is None:
            headers: _Headers = ()
        else:
            headers = tuple(
                (name, value, name.lower())
                for name, value in self._headers_for(version, script_root)
            )
        if rule is not None and self._rule_decides_version(rule.rule, path):
            if len(self._rule_headers) >= _RULE_CACHE_SIZE:
                self._rule_headers.clear()  # rules added at run time must not pile up
            self._rule_headers[rule.rule] = (script_root, headers)
        return headers

    def _rule_decides_version(self, rule: str, path: str) -> bool:
        """Whether every path URL rule ``rule`` matches (``path`` among them) has the
        same version segment, or none: werkzeug matches the text before the rule's
        first converter as it is, and a rule without converters only its own path."""
        static, converter, _ = rule.partition("<")
        if not converter:
            return path == rule
        if not path.startswith(static):  # not matched as this reads the rule: no guess
            return False
        head = self.prefix + "/"
        if not static.startswith(head):
            # Either the text parts from the prefix (no match is versioned), or
            # the prefix goes on past it, where a converter decides.
            return not head.startswith(static)
        return "/" in static[len(head) :]  # the version segment ends before the converter

    def _headers_for(self, version: APIVersion, script_root: str) -> tuple[tuple[str, str], ...]:
        """The headers of ``version``'s responses, built once per version and script root."""
        key = (version.name, script_root)
        headers = self._header_cache.get(key)
        if headers is None:
            successor = self.successor_of(version)
            headers = tuple(
                version.headers(
                    deprecation_link=f"{script_root}{self.prefix}" if self.index else None,
                    successor=f"{script_root}{successor.url_prefix}" if successor else None,
                ).items()
            )
            # Refused here as werkzeug refuses a header value with a newline (a
            # ValueError): each response then appends the checked values as they are.
            Headers(headers)
            if len(self._header_cache) >= _HEADER_CACHE_SIZE:
                # A deployment has one or two script roots: odd ones must not pile up.
                self._header_cache.clear()
            self._header_cache[key] = headers
        return headers

    def _versions_index(self) -> Response:
        return jsonify({"versions": [v.describe() for v in self._versions.values()]})


class _HeaderRoutingMiddleware:
    """Rewrites an unprefixed path to the version named by ``API-Version``.

    Routing happens when Flask builds the request context, so the path has to be
    rewritten before Flask sees the request: a WSGI middleware.
    """

    def __init__(self, wsgi_app: Any, app: Flask, api: VersionedAPI) -> None:
        self.wsgi_app = wsgi_app
        self._app = app
        self._api = api

    def _served(self, environ: dict[str, Any], path: str) -> bool:
        adapter = self._app.url_map.bind_to_environ(environ)
        try:
            adapter.match(path, method=environ.get("REQUEST_METHOD", "GET"))
        except MethodNotAllowed:
            return True  # the path exists: let Flask answer 405 for this version
        except HTTPException:
            return False
        return True

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO") or "/"
        prefix = self._api.prefix
        if path != prefix and not path.startswith(prefix + "/"):
            self._route(environ, path)
        return self.wsgi_app(environ, start_response)

    def _route(self, environ: dict[str, Any], path: str) -> None:
        versions = self._api.versions
        served_by = [v for v in versions.values() if self._served(environ, v.url_prefix + path)]
        if served_by:
            environ[_ENVIRON_VERSIONABLE] = True
        requested = (environ.get("HTTP_API_VERSION") or "").strip()
        version = versions.get(requested)
        if version is not None and version in served_by:
            environ["PATH_INFO"] = version.url_prefix + path
        elif requested and version is None:
            environ[_ENVIRON_UNKNOWN_HEADER_VERSION] = requested
        elif served_by:
            # No header, or a version without this path: say which versions have it.
            environ[_ENVIRON_SERVED_BY] = [v.name for v in served_by]

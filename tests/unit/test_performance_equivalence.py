"""What the performance work must not change, checked from the outside.

The breaker's refusal is built lazily (its message, metadata and headers are set
when first read), the request ID is bound in the WSGI boundary, and versioning
and compression share one ``before_request`` and one ``after_request`` hook.
These tests pin what a user sees: the refusal reads, pickles and renders as an
error built by its constructor; every response carries the same headers, in the
same order, as before; the request ID is known wherever a request's code runs.
They pass against the code from before those changes too.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import pickle
import re
import sys
import threading
import uuid
import zlib
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from flask import Flask, Response, g, stream_with_context
from marshmallow import ValidationError as MarshmallowValidationError

from gennet_sync import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    Compression,
    OpenAPI,
    VersionedAPI,
    setup_error_handlers,
)
from gennet_sync.context import current_request_id, new_request_id


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused_by(breaker: CircuitBreaker, *, through_acquire: bool = False) -> CircuitBreakerError:
    with pytest.raises(CircuitBreakerError) as caught:
        if through_acquire:
            breaker.acquire()
        else:
            breaker.call(lambda: None)
    return caught.value


def open_breaker(recovery_timeout: float = 30.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=recovery_timeout, name="grn", clock=clock
    )
    with pytest.raises(OSError):
        breaker.call(_fail)
    return breaker, clock


def _fail() -> None:
    raise OSError("down")


#: Every attribute a user can read of a refusal.
READ = (
    "headers",
    "service",
    "retry_after",
    "state",
    "status_code",
    "code",
    "message",
    "metadata",
    "args",
)


def readings(error: CircuitBreakerError) -> tuple[Any, ...]:
    """What a user reads of ``error``: its type, attributes, envelope and text."""
    attributes = tuple(getattr(error, name) for name in READ)
    return (type(error), error.to_dict(), str(error), repr(error), *attributes)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("through_acquire", [False, True], ids=["call", "acquire"])
@pytest.mark.parametrize("elapsed", [0.0, 12.3456789, 29.9999])
def test_a_refusal_reads_as_the_error_its_constructor_builds(
    through_acquire: bool, elapsed: float
) -> None:
    breaker, clock = open_breaker()
    clock.now += elapsed
    refusal = refused_by(breaker, through_acquire=through_acquire)
    built = CircuitBreakerError(
        "Circuit breaker 'grn' is open; call not attempted",
        service="grn",
        retry_after=30.0 - elapsed,
        state=CircuitState.OPEN,
    )
    assert readings(refusal) == readings(built)
    assert refusal.retry_after == round(30.0 - elapsed, 3)
    assert refusal.headers == {"Retry-After": str(math.ceil(round(30.0 - elapsed, 3)))}
    assert vars(refusal) == vars(built)


@pytest.mark.parametrize("through_acquire", [False, True], ids=["call", "acquire"])
def test_a_refusal_of_a_breaker_forced_open_has_no_retry_after(through_acquire: bool) -> None:
    breaker = CircuitBreaker(name="forced")
    breaker.open()
    refusal = refused_by(breaker, through_acquire=through_acquire)
    assert refusal.retry_after is None
    assert refusal.headers == {}
    assert refusal.to_dict()["error"]["metadata"] == {"service": "forced", "state": "open"}
    built = CircuitBreakerError(refusal.message, service="forced", retry_after=None)
    assert readings(refusal) == readings(built)


def pickled(error: CircuitBreakerError) -> CircuitBreakerError:
    twin: CircuitBreakerError = pickle.loads(pickle.dumps(error))
    return twin


def test_a_refusal_pickled_or_copied_before_anything_was_read_is_the_same_error() -> None:
    breaker, clock = open_breaker()
    clock.now += 10.5
    for make_twin in (pickled, copy.copy, copy.deepcopy):
        refusal = refused_by(breaker)  # fresh: nothing read yet
        twin = make_twin(refusal)
        assert readings(twin) == readings(refusal)
        assert vars(twin) == vars(refusal)
        assert twin.retry_after == 19.5


def read_at_once(error: CircuitBreakerError, threads: int) -> list[tuple[Any, ...]]:
    """What ``threads`` threads read of ``error``, all starting together."""
    seen: list[tuple[Any, ...]] = []
    start = threading.Barrier(threads)

    def read() -> None:
        start.wait()
        seen.append((error.metadata, error.retry_after, error.headers))

    workers = [threading.Thread(target=read) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    return seen


def test_a_refusal_read_from_many_threads_at_once_reads_the_same_everywhere() -> None:
    breaker, clock = open_breaker()
    clock.now += 1.25
    for _ in range(20):
        seen = read_at_once(refused_by(breaker), 4)
        assert len(seen) == 4
        assert all(reading == seen[0] for reading in seen)
        assert seen[0][1] == 28.75


def test_every_refusal_is_counted_and_a_call_after_the_timeout_is_a_trial() -> None:
    breaker, clock = open_breaker(recovery_timeout=5.0)
    for _ in range(3):
        refused_by(breaker)
    refused_by(breaker, through_acquire=True)
    assert breaker.metrics().rejections == 4
    clock.now += 5.0
    assert breaker.call(lambda: "trial") == "trial"
    assert breaker.state is CircuitState.CLOSED


def test_a_refusal_a_view_lets_through_renders_the_503_envelope_of_a_built_error() -> None:
    breaker, clock = open_breaker()
    clock.now += 0.4
    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/lazy")
    def lazy() -> str:
        breaker.call(lambda: None)
        return "unreachable"

    @app.get("/built")
    def built() -> str:
        raise CircuitBreakerError(
            "Circuit breaker 'grn' is open; call not attempted",
            service="grn",
            retry_after=29.6,
        )

    client = app.test_client()
    lazy_response = client.get("/lazy", headers={"X-Request-ID": "r1"})
    built_response = client.get("/built", headers={"X-Request-ID": "r1"})
    assert lazy_response.status_code == built_response.status_code == 503
    assert lazy_response.get_json() == built_response.get_json()
    assert lazy_response.get_json()["error"]["metadata"] == {
        "service": "grn",
        "retry_after": 29.6,
        "state": "open",
    }
    assert lazy_response.headers.to_wsgi_list() == built_response.headers.to_wsgi_list()
    assert lazy_response.headers["Retry-After"] == "30"


# --------------------------------------------------------------------------- request IDs


def test_new_request_ids_are_random_version_4_uuids_in_hex() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", value)
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def make_traced_app() -> tuple[Flask, dict[str, Any]]:
    """An app that notes the request ID wherever a request's code runs."""
    app = Flask(__name__)
    seen: dict[str, Any] = {}

    @app.before_request
    def registered_before_the_extension() -> None:
        seen["early hook"] = current_request_id()

    setup_error_handlers(app)

    @app.url_value_preprocessor
    def preprocessor(endpoint: str | None, values: dict[str, Any] | None) -> None:
        seen["url preprocessor"] = current_request_id()

    @app.before_request
    def later_hook() -> None:
        seen["late hook"] = current_request_id()

    @app.after_request
    def after(response: Response) -> Response:
        seen["after hook"] = current_request_id()
        return response

    @app.teardown_request
    def teardown(error: BaseException | None) -> None:
        seen["teardown"] = current_request_id()

    @app.get("/view")
    def view() -> dict[str, Any]:
        seen["view"] = current_request_id()
        seen["g"] = g.gennet_request_id
        return {}

    @app.get("/crash")
    def crash() -> str:
        raise RuntimeError("boom")

    @app.errorhandler(KeyError)
    def key_error(error: KeyError) -> tuple[str, int]:
        seen["error handler"] = current_request_id()
        return "missing", 404

    @app.get("/key")
    def key() -> str:
        raise KeyError("k")

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            yield "a"
            seen["stream"] = current_request_id()
            yield "b"

        return Response(stream_with_context(body()))

    return app, seen


@pytest.mark.parametrize("incoming", [None, "gateway-7.a_b"])
def test_the_request_id_is_the_same_wherever_the_request_runs(incoming: str | None) -> None:
    app, seen = make_traced_app()
    headers = {"X-Request-ID": incoming} if incoming else {}
    response = app.test_client().get("/view", headers=headers)
    request_id = response.headers["X-Request-ID"]
    if incoming:
        assert request_id == incoming
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    # Bound before any hook now; before, by the extension's own before_request
    # hook, so code that ran earlier saw no ID.  Never another one.
    assert seen.pop("early hook") in (None, request_id)
    assert seen.pop("url preprocessor") in (None, request_id)
    assert seen == {
        "late hook": request_id,
        "view": request_id,
        "g": request_id,
        "after hook": request_id,
        "teardown": request_id,
    }
    assert current_request_id() is None  # unbound once the request is over


def test_the_request_id_reaches_error_handlers_and_streamed_bodies() -> None:
    app, seen = make_traced_app()
    client = app.test_client()
    response = client.get("/key", headers={"X-Request-ID": "err-1"})
    assert response.status_code == 404
    assert seen["error handler"] == "err-1"
    response = client.get("/stream", headers={"X-Request-ID": "stream-1"})
    assert response.get_data() == b"ab"
    assert response.headers["X-Request-ID"] == "stream-1"
    assert seen["stream"] == "stream-1"
    response = client.get("/crash", headers={"X-Request-ID": "crash-1"})
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "crash-1"


def test_an_invalid_incoming_request_id_is_replaced_everywhere_alike() -> None:
    app, seen = make_traced_app()
    response = app.test_client().get("/view", headers={"X-Request-ID": "bad id\x7f"})
    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert seen["view"] == seen["g"] == seen["teardown"] == request_id


def test_the_request_id_header_setting_is_read_per_request() -> None:
    app, seen = make_traced_app()
    client = app.test_client()
    assert client.get("/view", headers={"X-Request-ID": "one"}).headers["X-Request-ID"] == "one"
    app.config["GENNET_REQUEST_ID_HEADER"] = "X-Correlation-ID"
    response = client.get("/view", headers={"X-Correlation-ID": "two", "X-Request-ID": "one"})
    assert response.headers["X-Correlation-ID"] == "two"
    assert seen["view"] == "two"


# --------------------------------------------------------------------------- headers


BIG = {"nodes": [{"id": f"gene-{i}", "weight": i / 7} for i in range(200)]}


def make_full_stack() -> Flask:
    app = Flask(__name__)
    setup_error_handlers(app)
    api = VersionedAPI(app, header_routing=True)
    v1 = api.version("v1", deprecated=date(2025, 1, 1), sunset=date(2027, 1, 1))
    v2 = api.version("v2")
    Compression(app)
    OpenAPI(app, title="equivalence")

    @app.after_request
    def user_hook(response: Response) -> Response:
        response.headers["X-User-Hook"] = "1"
        return response

    for blueprint in (v1, v2):

        @blueprint.get("/item")
        def item() -> dict[str, Any]:
            return {"id": 42}

        @blueprint.get("/big")
        def big() -> dict[str, Any]:
            return BIG

        @blueprint.get("/linked")
        def linked() -> Response:
            response = Response("{}", mimetype="application/json")
            response.headers["Link"] = '</docs>; rel="help"'
            response.headers["Vary"] = "Cookie"
            return response

        @blueprint.get("/invalid")
        def invalid() -> dict[str, Any]:
            raise MarshmallowValidationError({"name": ["Missing data for required field."]})

    return app


def wire_headers(response: Any) -> list[tuple[str, str]]:
    return [
        (name, "<now>" if name == "Date" else value)
        for name, value in response.headers.to_wsgi_list()
    ]


DEPRECATED = [
    ("API-Version", "v1"),
    ("Deprecation", "@1735689600"),
    ("Sunset", "Fri, 01 Jan 2027 00:00:00 GMT"),
]


@pytest.mark.parametrize(
    ("path", "request_headers", "expected"),
    [
        (
            "/api/v1/item",
            {"Accept-Encoding": "gzip, br"},
            [
                ("Content-Type", "application/json"),
                ("Content-Length", "10"),
                ("X-User-Hook", "1"),
                ("Vary", "Accept-Encoding"),
                *DEPRECATED,
                ("Link", '</api>; rel="deprecation", </api/v2>; rel="successor-version"'),
                ("X-Request-ID", "rid"),
            ],
        ),
        (
            "/api/v2/item",
            {},
            [
                ("Content-Type", "application/json"),
                ("Content-Length", "10"),
                ("X-User-Hook", "1"),
                ("Vary", "Accept-Encoding"),
                ("API-Version", "v2"),
                ("X-Request-ID", "rid"),
            ],
        ),
        (
            "/item",
            {"API-Version": "v2", "Accept-Encoding": "identity;q=0, gzip"},
            [
                ("Content-Type", "application/json"),
                ("Content-Length", "30"),
                ("X-User-Hook", "1"),
                ("Vary", "Accept-Encoding, API-Version"),
                ("Content-Encoding", "gzip"),
                ("Date", "<now>"),  # make_conditional's, for the compressed ETag
                ("API-Version", "v2"),
                ("X-Request-ID", "rid"),
            ],
        ),
        (
            "/api/v1/linked",
            {"Accept-Encoding": "zstd"},
            [
                ("Content-Type", "application/json"),
                ("Content-Length", "2"),
                (
                    "Link",
                    '</docs>; rel="help", </api>; rel="deprecation", '
                    '</api/v2>; rel="successor-version"',
                ),
                ("Vary", "Cookie, Accept-Encoding"),
                ("X-User-Hook", "1"),
                *DEPRECATED,
                ("X-Request-ID", "rid"),
            ],
        ),
        (
            "/api/v2/invalid",
            {"Accept-Encoding": "gzip"},
            [
                ("Content-Type", "application/json"),
                ("Content-Length", "209"),
                ("X-User-Hook", "1"),
                ("Vary", "Accept-Encoding"),
                ("API-Version", "v2"),
                ("X-Request-ID", "rid"),
            ],
        ),
        (
            "/api/v9/item",
            {},
            [
                ("Content-Type", "application/json"),
                ("Content-Length", "196"),
                ("X-User-Hook", "1"),
                ("Vary", "Accept-Encoding"),
                ("X-Request-ID", "rid"),
            ],
        ),
    ],
    ids=["deprecated", "current", "header-routed", "view-headers", "422", "unknown-version"],
)
def test_responses_of_the_full_stack_carry_the_same_headers_in_the_same_order(
    path: str, request_headers: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    client = make_full_stack().test_client()
    response = client.get(path, headers={**request_headers, "X-Request-ID": "rid"})
    assert wire_headers(response) == expected


@pytest.mark.parametrize(
    ("accept_encoding", "coding"),
    [
        (None, None),
        ("gzip", "gzip"),
        ("gzip;q=0.5, br", "br"),
        ("gzip;q=0, *", "zstd"),
        ("*, zstd;q=0", "br"),
        ("identity;q=0, gzip;q=0", None),
        ("deflate", "deflate"),
        ("x-gzip", "gzip"),
        ("gzip; q=0.5, deflate; q=0.4", "gzip"),
    ],
)
def test_a_big_response_is_negotiated_as_before_whatever_came_before_it(
    accept_encoding: str | None, coding: str | None
) -> None:
    client = make_full_stack().test_client()
    # The same header value twice, and another one between: a remembered
    # negotiation must answer as a fresh one.
    for value in (accept_encoding, "gzip", accept_encoding):
        headers = {} if value is None else {"Accept-Encoding": value}
        response = client.get("/api/v2/big", headers=headers)
    assert response.status_code == 200
    assert response.headers.get("Content-Encoding") == coding
    assert response.headers["Vary"] == "Accept-Encoding"
    assert json.loads(decoded(response.get_data(), coding)) == BIG


def decoded(data: bytes, coding: str | None) -> bytes:
    if coding is None:
        return data
    if coding == "gzip":
        return zlib.decompress(data, 31)
    if coding == "deflate":
        return zlib.decompress(data)
    if coding == "br":
        return bytes(importlib.import_module("brotli").decompress(data))
    for name in ("compression.zstd", "backports.zstd"):
        with contextlib.suppress(ImportError):
            return bytes(importlib.import_module(name).decompress(data))
    raise AssertionError(f"no decoder for {coding}")


def test_values_set_on_a_refusal_before_it_is_read_are_kept() -> None:
    breaker = CircuitBreaker(name="payments")
    breaker.open()
    try:
        breaker.call(lambda: None)
    except CircuitBreakerError as caught:
        refusal = caught
    refusal.metadata = {"tenant": "t1"}
    refusal.retry_after = 5
    # Reading another field builds the rest; what the handler set stays.
    assert refusal.message == "Circuit breaker 'payments' is open; call not attempted"
    assert refusal.metadata == {"tenant": "t1"}
    assert refusal.retry_after == 5
    assert refusal.headers == {"Retry-After": "5"}


def test_a_refusal_read_by_several_threads_at_once_reads_whole_in_each() -> None:
    breaker = CircuitBreaker(name="payments", failure_threshold=1, recovery_timeout=30)
    breaker.open()
    errors: list[str] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # makes the window between two readers easy to hit
    try:
        for _ in range(300):
            try:
                breaker.call(lambda: None)
            except CircuitBreakerError as caught:
                refusal = caught
            barrier = threading.Barrier(3)

            def read(
                error: CircuitBreakerError = refusal, start: threading.Barrier = barrier
            ) -> None:
                start.wait()
                try:
                    assert error.metadata["service"] == "payments"
                    assert error.state is CircuitState.OPEN
                    assert error.retry_after is None
                except (AttributeError, AssertionError, KeyError) as failure:
                    errors.append(repr(failure))

            threads = [threading.Thread(target=read) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_a_mounted_app_takes_the_request_id_from_its_own_header() -> None:
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.test import Client

    outer, inner = Flask("outer"), Flask("inner")
    inner.config["GENNET_REQUEST_ID_HEADER"] = "X-Correlation-ID"
    setup_error_handlers(inner)
    seen: list[str | None] = []

    @inner.get("/view")
    def view() -> str:
        seen.append(current_request_id())
        return "ok"

    # The host's boundary wraps the dispatcher: every request passes it first.
    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/inner": inner})  # type: ignore[method-assign]
    setup_error_handlers(outer)
    response = Client(outer).get("/inner/view", headers={"X-Correlation-ID": "corr-123"})
    assert seen == ["corr-123"]
    assert response.headers["X-Correlation-ID"] == "corr-123"
    # Without its own header, the mounted app keeps the ID its host bound.
    response = Client(outer).get("/inner/view", headers={"X-Request-ID": "host-456"})
    assert seen[-1] == "host-456"
    assert response.headers["X-Request-ID"] == "host-456"


def test_an_app_hook_between_two_features_runs_between_their_steps() -> None:
    # VersionedAPI, then the app's own after_request hook, then Compression: as with
    # a hook per feature, compression touches the response first and the app's hook
    # sees (and sets its ETag over) the compressed body.
    app = Flask(__name__)
    setup_error_handlers(app)
    api = VersionedAPI(app)
    v1 = api.version("v1")

    @v1.get("/items")
    def items() -> dict[str, list[str]]:
        return {"items": ["x" * 50] * 40}

    seen: list[tuple[str | None, int]] = []

    @app.after_request
    def etag_over_the_bytes_sent(response: Response) -> Response:
        seen.append((response.headers.get("Content-Encoding"), len(response.get_data())))
        response.set_etag("app-etag")
        return response

    Compression(app)
    response = app.test_client().get("/api/v1/items", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert seen == [("gzip", len(response.get_data()))]
    assert response.headers["ETag"] == '"app-etag"'  # not suffixed: set after compression
    assert response.headers["API-Version"] == "v1"  # versioning ran last, as its hook would


# ------------------------------------------------------------ header writes, werkzeug's list


def test_werkzeug_keeps_response_headers_in_the_list_our_steps_append_to() -> None:
    # Compression's Vary and versioning's API-Version are appended to
    # ``response.headers._list`` (a call and a regex search less per header than
    # ``add``/``set``): this fails, rather than the headers going missing, should
    # a werkzeug release keep them elsewhere.
    response = Response("{}", mimetype="application/json")
    pairs = response.headers._list
    assert type(pairs) is list
    pairs.append(("Vary", "Accept-Encoding"))
    assert response.headers["Vary"] == "Accept-Encoding"
    assert list(response.headers)[-1] == ("Vary", "Accept-Encoding")
    assert response.get_wsgi_headers({"wsgi.url_scheme": "http"}).to_wsgi_list()[-1] == (
        "Vary",
        "Accept-Encoding",
    )


def test_the_shared_hooks_read_the_request_flask_stands_for() -> None:
    # The shared before/after hooks read the request from the context variable
    # behind flask.request (a Python call less each than the proxy's lookup): this
    # fails, rather than the steps getting another request, should Flask change it.
    from flask import request

    from gennet_sync import error_handler

    assert error_handler._request_contexts is not None  # else the proxy is used
    app = Flask(__name__)
    with app.test_request_context("/first"):
        outer = request._get_current_object()  # type: ignore[attr-defined]
        assert error_handler._request_contexts.get().request is outer
        with app.test_request_context("/second"):
            inner = error_handler._request_contexts.get().request
            assert inner is request._get_current_object()  # type: ignore[attr-defined]
            assert inner.path == "/second"
        assert error_handler._request_contexts.get().request is outer


def test_a_version_header_the_view_set_is_replaced_where_it_stood() -> None:
    app = Flask(__name__)
    api = VersionedAPI(app)
    v1 = api.version("v1", deprecated=date(2025, 1, 1))

    @v1.get("/item")
    def item() -> Response:
        response = Response("{}", mimetype="application/json")
        response.headers["Deprecation"] = "@1"
        response.headers["X-Mine"] = "1"
        response.headers.add("deprecation", "@2")  # a second line, in other case
        response.headers["API-Version"] = "v0"
        return response

    response = app.test_client().get("/api/v1/item")
    assert wire_headers(response) == [
        ("Content-Type", "application/json"),
        ("Content-Length", "2"),
        ("Deprecation", "@1735689600"),
        ("X-Mine", "1"),
        ("API-Version", "v1"),
        ("Link", '</api>; rel="deprecation"'),
        ("X-Request-ID", response.headers["X-Request-ID"]),
    ]


def test_a_version_link_with_a_newline_is_a_500_on_every_request() -> None:
    app = Flask(__name__)
    api = VersionedAPI(app)
    v1 = api.version("v1", deprecated=date(2025, 1, 1), link="/docs\r\nX-Forged: 1")

    @v1.get("/item")
    def item() -> dict[str, Any]:
        return {}

    client = app.test_client()
    for _ in range(2):  # not cached after the first refusal
        response = client.get("/api/v1/item")
        assert response.status_code == 500
        assert response.get_json()["error"]["code"] == "INTERNAL_SERVER_ERROR"
        assert "X-Forged" not in response.headers


def test_compression_reads_header_names_in_any_case_and_each_content_type_on_its_own() -> None:
    app = Flask(__name__)
    Compression(app, min_size=10)
    body = json.dumps(BIG)

    @app.get("/<kind>")
    def view(kind: str) -> Response:
        response = Response(body)
        response.headers.clear()
        if kind == "lower":  # names as a hand-made response may spell them
            response.headers.add("content-type", "application/json; charset=utf-8")
            response.headers.add("VARY", "Cookie")
            response.headers.add("cache-CONTROL", "no-transform")
        elif kind == "png":
            response.headers.add("Content-Type", "image/png")
        else:
            response.headers.add("Content-Type", "application/json; charset=utf-8")
        return response

    client = app.test_client()
    gzip = {"Accept-Encoding": "gzip"}
    for _ in range(2):  # the second time from what was remembered
        lower = client.get("/lower", headers=gzip)
        assert "Content-Encoding" not in lower.headers  # no-transform, read in any case
        assert lower.headers.getlist("Vary") == ["Cookie, Accept-Encoding"]
        png = client.get("/png", headers=gzip)
        assert "Content-Encoding" not in png.headers
        assert "Vary" not in png.headers
        plain = client.get("/json", headers=gzip)
        assert plain.headers["Content-Encoding"] == "gzip"
        assert plain.headers["Vary"] == "Accept-Encoding"
        assert json.loads(decoded(plain.get_data(), "gzip")) == BIG


# ------------------------------------------------------ Flask's blueprints, status codes


def test_blueprint_hooks_run_as_flask_runs_them_with_the_blueprints_remembered() -> None:
    # Flask reads request.blueprints three times a request (before, after, teardown);
    # the request class gennet_sync sets remembers it per URL rule.  Every read must
    # give what Flask's own property gives, also after a hook routes again by hand.
    from flask import Blueprint, request
    from flask import Request as FlaskRequest

    app = Flask(__name__)
    setup_error_handlers(app)
    ran: list[str] = []
    outer = Blueprint("outer", __name__, url_prefix="/outer")
    inner = Blueprint("inner", __name__, url_prefix="/inner")
    other = Blueprint("other", __name__, url_prefix="/other")

    def flask_reads() -> list[str]:
        return FlaskRequest.blueprints.fget(request._get_current_object())  # type: ignore[attr-defined, no-any-return]

    def note(name: str) -> None:
        ran.append(name)

    def after(name: str) -> Any:
        def hook(response: Response) -> Response:
            note(f"after {name}")
            return response

        return hook

    for blueprint in (outer, inner, other):
        name = blueprint.name
        blueprint.before_request(lambda name=name: note(f"before {name}"))
        blueprint.after_request(after(name))
        blueprint.teardown_request(lambda error, name=name: note(f"teardown {name}"))

    @inner.get("/item")
    def item() -> dict[str, list[str]]:
        # The very list Flask gives (its split is cached), whichever read this is.
        assert request.blueprints is flask_reads()
        return {"blueprints": request.blueprints}

    @other.get("/item")
    def other_item() -> str:
        return "other"

    @app.before_request
    def reroute() -> None:
        seen = list(request.blueprints)
        assert seen == flask_reads()
        if request.args.get("reroute"):
            # Routed again by hand: the blueprints follow the new rule.
            request.url_rule = next(
                r for r in app.url_map.iter_rules() if r.endpoint == "other.other_item"
            )
            assert request.blueprints == flask_reads() == ["other"]

    outer.register_blueprint(inner)
    app.register_blueprint(outer)
    app.register_blueprint(other)
    assert app.request_class.blueprints is not FlaskRequest.blueprints  # remembered here
    client = app.test_client()

    assert client.get("/outer/inner/item").get_json() == {"blueprints": ["outer.inner", "outer"]}
    assert ran == [
        "before outer", "before inner",
        "after inner", "after outer",
        "teardown inner", "teardown outer",
    ]  # fmt: skip
    ran.clear()
    assert client.get("/other/item").get_data(as_text=True) == "other"
    assert ran == ["before other", "after other", "teardown other"]
    ran.clear()
    # Rerouted inside the before hooks: Flask's later reads see the new rule's blueprints.
    client.get("/outer/inner/item?reroute=1")
    assert ran == [
        "before outer", "before inner",
        "after other",
        "teardown other",
    ]  # fmt: skip
    ran.clear()
    assert client.get("/outer/nowhere").status_code == 404
    assert ran == []


def test_a_request_class_with_its_own_blueprints_keeps_them() -> None:
    from flask import Request as FlaskRequest
    from flask import request

    class CustomBlueprints(FlaskRequest):
        reads = 0

        @property
        def blueprints(self) -> list[str]:
            type(self).reads += 1
            return [f"read-{type(self).reads}"]

    app = Flask(__name__)
    app.request_class = CustomBlueprints
    setup_error_handlers(app)

    @app.get("/item")
    def item() -> dict[str, list[str]]:
        return {"first": request.blueprints, "second": request.blueprints}

    body = app.test_client().get("/item").get_json()
    assert body["first"] != body["second"]  # computed on every read, as the app wrote it
    assert issubclass(app.request_class, CustomBlueprints)


def test_a_request_class_derived_later_reads_its_blueprints_its_own_way() -> None:
    # A class derived from the app's request class after set-up, reading its
    # blueprint or endpoint its own way: Flask's hooks follow what it reads.
    from flask import Blueprint, request

    app = Flask(__name__)
    setup_error_handlers(app)
    ran: list[str] = []
    for name in ("parent", "zzz"):
        hooks = Blueprint(name, __name__, url_prefix=f"/{name}")
        hooks.before_request(lambda name=name: ran.append(name))
        if name == "parent":
            hooks.add_url_rule("/v", "v", lambda: {"blueprints": request.blueprints})
        app.register_blueprint(hooks)

    class OwnBlueprint(app.request_class):  # type: ignore[name-defined, misc]
        @property
        def blueprint(self) -> str:
            return "zzz"

    app.request_class = OwnBlueprint
    assert app.test_client().get("/parent/v").get_json() == {"blueprints": ["zzz"]}
    assert ran == ["zzz"]


def test_the_blueprints_of_a_route_outside_any_blueprint_are_a_new_list_per_read() -> None:
    from flask import Blueprint, request

    app = Flask(__name__)
    setup_error_handlers(app)
    ghost = Blueprint("ghost", __name__)
    ran: list[str] = []
    ghost.before_request(lambda: ran.append("ghost"))
    app.register_blueprint(ghost)

    @app.before_request
    def meddle() -> None:
        request.blueprints.append("ghost")  # changes its own copy only, as in Flask

    app.add_url_rule("/plain", "plain", lambda: {"blueprints": request.blueprints})
    assert app.test_client().get("/plain").get_json() == {"blueprints": []}
    assert ran == []


@pytest.mark.parametrize("status", [201, "418 I'M A TEAPOT", 304, "599 ODD"])
def test_werkzeug_keeps_the_status_code_where_our_steps_read_it(status: int | str) -> None:
    # Compression and metrics read ``response._status_code`` (what the status_code
    # property returns, without its call): this fails, rather than them reading a
    # stale status, should a werkzeug release keep it elsewhere.
    from http import HTTPStatus

    response = Response("{}", mimetype="application/json")
    assert response._status_code == 200
    response.status = status if isinstance(status, str) else HTTPStatus(status).phrase
    if isinstance(status, int):
        response.status_code = status
    assert response._status_code == response.status_code
    assert response._status_code == int(str(status).split()[0])


def test_a_request_id_header_the_view_set_in_any_case_gives_way_to_ours() -> None:
    app = Flask(__name__)
    setup_error_handlers(app)

    @app.get("/own")
    def own() -> Response:
        response = Response("{}", mimetype="application/json")
        response.headers.add("x-request-id", "from-the-view")
        response.headers.add("X-Mine", "1")
        response.headers.add("X-REQUEST-ID", "again")
        return response

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    client = app.test_client()
    for path in ("/plain", "/own", "/plain", "/own"):
        response = client.get(path, headers={"X-Request-ID": "rid"})
        names = [name for name, _ in response.headers]
        assert response.headers.getlist("X-Request-ID") == ["rid"], path
        assert names[-1] == "X-Request-ID"
        assert [name.lower() for name in names].count("x-request-id") == 1
    assert client.get("/own").headers["X-Mine"] == "1"
    app.config["GENNET_REQUEST_ID_HEADER"] = "X-Mine"  # now the view's X-Mine gives way
    response = client.get("/own", headers={"X-Mine": "mine"})
    assert response.headers.getlist("X-Mine") == ["mine"]
    assert response.headers.getlist("x-request-id") == ["from-the-view", "again"]


def test_a_step_for_unrouted_or_marked_requests_runs_in_its_place_only_on_those() -> None:
    from flask import request

    from gennet_sync.error_handler import BEFORE_STEPS_WANTED, app_state

    app = Flask(__name__)
    state = app_state(app)
    ran: list[str] = []

    class Mark:
        # A middleware marking the requests that carry a header.
        def __init__(self, wsgi_app: Any) -> None:
            self.wsgi_app = wsgi_app

        def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
            if "HTTP_X_MARK" in environ:
                environ[BEFORE_STEPS_WANTED] = True
            return self.wsgi_app(environ, start_response)

    app.wsgi_app = Mark(app.wsgi_app)  # type: ignore[method-assign]
    state.add_request_steps(app, before=lambda r: ran.append("first"))
    state.add_request_steps(app, before=lambda r: ran.append("rare"), before_always=False)
    state.add_request_steps(app, before=lambda r: ran.append("last"))

    @app.before_request
    def own_hook() -> None:
        ran.append("app")

    state.add_request_steps(app, before=lambda r: ran.append("rare after app"), before_always=False)
    app.add_url_rule("/item", "item", lambda: request.path)
    client = app.test_client()

    client.get("/item")
    assert ran == ["first", "last", "app"]
    ran.clear()
    client.get("/nowhere")
    assert ran == ["first", "rare", "last", "app", "rare after app"]
    ran.clear()
    client.get("/item", headers={"X-Mark": "1"})
    assert ran == ["first", "rare", "last", "app", "rare after app"]

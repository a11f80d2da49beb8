"""ServiceSession defects an adversarial review reproduced, each pinned by a test.

Every test that talks HTTP does so with a real server on 127.0.0.1 (the standard
library's, which keeps connections alive, so a test can count them and hold a
request open); the envelope fuzz builds responses by hand, as it tests parsing only.
"""

from __future__ import annotations

import copy
import http.server
import json
import pickle
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.util import retry as urllib3_retry
from urllib3.util.retry import Retry

from gennet_sync import http_client, transport
from gennet_sync.circuit_breaker import (
    CircuitBreakerError,
    CircuitState,
    clear_circuit_breakers,
    get_circuit_breaker,
)
from gennet_sync.exceptions import (
    GenNetException,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)
from gennet_sync.http_client import (
    DEFAULT_RETRY_AFTER_MAX,
    MAX_ERROR_BODY,
    GatewayTimeoutError,
    ServiceRetry,
    ServiceSession,
    error_from_response,
    make_retry,
    raise_for_error,
)


@pytest.fixture(autouse=True)
def _fresh_breaker_registry() -> Iterator[None]:
    clear_circuit_breakers()
    yield
    clear_circuit_breakers()


# =========================================================================== local server

#: A route: the request body in, ``(status, headers, body)`` out.
Route = Callable[[bytes], tuple[int, dict[str, str], bytes]]


class _Server(http.server.ThreadingHTTPServer):
    """An HTTP/1.1 server that keeps connections alive (werkzeug's closes each one)
    and counts them, and the requests per path; serves while in a ``with`` block."""

    daemon_threads = True

    def __init__(self, routes: dict[str, Route]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.hits: Counter[str] = Counter()
        self.connections = 0
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client dropping a connection mid-body is what some tests want


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        with self.server.lock:
            self.server.hits[path] += 1
        status, headers, out = self.server.routes[path](body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _answer  # noqa: N815 (the names http.server calls)


def _fixed(status: int, body: bytes = b"", **headers: str) -> Route:
    answer = {name.replace("_", "-"): value for name, value in headers.items()}
    return lambda _body: (status, answer, body)


def _envelope(type_name: str, metadata: dict[str, Any]) -> bytes:
    error = {"code": "X", "type": type_name, "message": "m", "metadata": metadata}
    return json.dumps({"error": error}).encode()


# =========================================================================== 1. watchdog


def _wait_until_expired() -> None:
    """Block until the watchdog has passed the deadline of the call in progress."""
    call = transport._call_in_progress.get()
    assert call is not None and call.deadline is not None
    deadline = call.deadline
    limit = time.monotonic() + 10
    while not deadline.expired and time.monotonic() < limit:
        time.sleep(0.01)
    assert deadline.expired, "the watchdog never reached the call's deadline"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_deadline_never_cuts_a_connection_another_call_took_from_the_pool(method: str) -> None:
    """Call 1 reads its body in a hook (its connection goes back to the pool) and
    outlives its limit; call 2, on another thread, took that connection meanwhile.
    The watchdog firing for call 1 must leave call 2 alone: not failed (POST), not
    silently sent twice (GET, retried by default)."""
    arrived, release = threading.Event(), threading.Event()

    def slow(_body: bytes) -> tuple[int, dict[str, str], bytes]:
        arrived.set()
        release.wait(10)
        return 200, {}, b"slow-ok"

    with _Server({"/fast": _fixed(200, b"ok"), "/slow": slow}) as server:
        session = ServiceSession(base_url=server.url, service_name="svc")
        session.get("/fast")  # one connection, now in the pool
        outcome: dict[str, Any] = {}

        def victim() -> None:
            try:
                response = session.request(method, "/slow", data=b"order-42", total_timeout=10)
                outcome["status"] = response.status_code
            except Exception as error:  # the test reports it, whatever it is
                outcome["error"] = error

        victim_thread = threading.Thread(target=victim)

        def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            assert response.content == b"ok"  # read: the connection is back in the pool
            victim_thread.start()
            assert arrived.wait(10)  # the victim's request went out on that connection
            _wait_until_expired()

        first = session.request("GET", "/fast", hooks={"response": hook}, total_timeout=0.3)
        release.set()
        victim_thread.join(10)
    assert first.status_code == 200
    assert outcome == {"status": 200}
    assert server.hits["/slow"] == 1
    assert server.connections == 1  # the victim did go out on the released connection


def test_a_retry_sleeps_the_very_wait_it_checked_against_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A jittered backoff drawn once for the check and again for the sleep could pass
    the check and sleep past the call's limit (its connection already back in the
    pool, where the watchdog could no longer be trusted to leave it alone)."""
    draws = iter([0.01, 0.99])  # the jitter of a first and of any second draw
    monkeypatch.setattr(random, "random", lambda: next(draws))  # urllib3 draws from it
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # nothing really sleeps
    failed = urllib3_retry.RequestHistory("GET", "/x", None, 503, None)
    retry = make_retry(2, backoff_factor=0, backoff_jitter=10, backoff_max=20)
    retry = retry.new(history=(failed, failed))  # the second retry: jitter applies
    session = ServiceSession(base_url="http://svc.test")
    call = transport._Call(
        session,
        "http://svc.test/x",
        transport._NO_PERMIT,
        transport._Deadline(5.0),
        replayable=True,
    )
    token = transport._call_in_progress.set(call)
    try:
        retry.sleep()
    finally:
        transport._call_in_progress.reset(token)
    assert slept == [pytest.approx(0.1)]


# =========================================================================== 2. hooks


def test_a_hook_calling_another_host_leaves_the_outer_failure_counted() -> None:
    with (
        _Server({"/down": _fixed(503, b"down")}) as broken,
        _Server({"/audit": _fixed(204)}) as collector,
    ):
        session = ServiceSession(retries=0, circuit_breaker_threshold=3)

        def audit(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            session.post(collector.url + "/audit", data=b"seen")

        for _ in range(3):
            assert session.get(broken.url + "/down", hooks={"response": audit}).status_code == 503
        with pytest.raises(CircuitBreakerError):
            session.get(broken.url + "/down", hooks={"response": audit})
        assert broken.hits["/down"] == 3
        assert collector.hits["/audit"] == 3
        collector_breaker = session.breaker_for(collector.url)
        assert collector_breaker is not None
        assert collector_breaker.state is CircuitState.CLOSED


def test_a_hook_of_a_named_session_leaves_the_outer_failure_counted() -> None:
    """The outer 503 is the outer call's failure, even when the hook's own call (to
    a collector, through the service's session and so its breaker) succeeds first."""
    with (
        _Server({"/down": _fixed(503, b"down")}) as server,
        _Server({"/audit": _fixed(204)}) as collector,
    ):
        session = ServiceSession(base_url=server.url, service_name="svc", retries=0)

        def audit(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            session.post(collector.url + "/audit", data=b"seen")

        assert session.get("/down", hooks={"response": audit}).status_code == 503
        assert collector.hits["/audit"] == 1
    breaker = session.circuit_breaker
    assert breaker is not None
    assert breaker.failure_count == 1


def test_raise_errors_holds_for_a_call_made_inside_a_hook() -> None:
    with _Server({"/ok": _fixed(200, b"ok"), "/missing": _fixed(404, b"nope")}) as server:
        session = ServiceSession(base_url=server.url, service_name="svc", raise_errors=True)
        raised: list[NotFoundError] = []

        def lookup(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            try:
                session.get("/missing")
            except NotFoundError as error:
                raised.append(error)

        assert session.get("/ok", hooks={"response": lookup}).text == "ok"
    assert len(raised) == 1
    assert raised[0].metadata["service"] == "svc"


# =========================================================================== 3. envelope


def test_a_huge_integer_retry_after_in_an_envelope_is_ignored_not_raised() -> None:
    body = _envelope("ServiceUnavailableError", {"retry_after": int("9" * 400)})
    route = _fixed(503, body, Content_Type="application/json")
    with _Server({"/x": route}) as server:
        strict = ServiceSession(base_url=server.url, service_name="svc", raise_errors=True)
        with pytest.raises(ServiceUnavailableError) as caught:
            strict.get("/x")
        lenient = ServiceSession(base_url=server.url, service_name="svc", retries=0)
        with pytest.raises(ServiceUnavailableError) as again:
            raise_for_error(lenient.get("/x"))
    for error in (caught.value, again.value):
        assert error.retry_after is None
        assert "Retry-After" not in error.headers
        assert error.metadata["retry_after"] == int("9" * 400)  # the downstream's, kept


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=3) | st.dictionaries(
        st.text(max_size=5), children, max_size=3
    )


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**4000)  # past float, within json's digits
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    _containers,
    max_leaves=8,
)
_KEYS = st.sampled_from(
    ["retry_after", "service", "state", "resource_type", "resource_id", "field", "errors"]
)
_TYPES = st.sampled_from(
    [
        "ServiceUnavailableError",
        "RateLimitError",
        "NotFoundError",
        "ValidationError",
        "CircuitBreakerError",
        "GatewayTimeoutError",
        "BadGatewayError",
        "MethodNotAllowed",
        "Nonsense",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    metadata=st.dictionaries(_KEYS, _JSON, max_size=5),
    type_name=_TYPES,
    status=st.sampled_from([400, 404, 405, 409, 422, 429, 500, 502, 503, 504]),
    retry_after=st.none() | st.text(max_size=12) | st.just("9" * 400),
)
def test_any_envelope_metadata_gives_our_exception(
    metadata: dict[str, Any], type_name: str, status: int, retry_after: str | None
) -> None:
    response = requests.Response()
    response.status_code = status
    response.url = "http://svc.test/x"
    response.headers["Content-Type"] = "application/json"
    if retry_after is not None and retry_after.isprintable():
        response.headers["Retry-After"] = retry_after
    response._content = _envelope(type_name, metadata)
    error = error_from_response(response)
    assert isinstance(error, GenNetException)
    assert error.status_code == status
    # What a service does with it next: render, log, pickle to another process.
    json.dumps(error.to_dict())
    error.get_headers()
    assert str(error) and repr(error)
    assert type(pickle.loads(pickle.dumps(error))) is type(error)
    if isinstance(error, (ServiceUnavailableError, RateLimitError)):
        assert error.retry_after is None or 0 <= error.retry_after <= 366 * 24 * 3600


# =========================================================================== 4. 429 / 413


@pytest.mark.parametrize("status", [429, 413])
def test_a_retry_after_on_a_status_not_in_the_list_is_not_retried(status: int) -> None:
    with _Server({"/x": _fixed(status, b"slow down", Retry_After="1")}) as server:
        session = ServiceSession(base_url=server.url, service_name="svc")
        start = time.monotonic()
        assert session.get("/x").status_code == status
        assert time.monotonic() - start < 5  # no wait at all (it used to sleep per retry)
        assert server.hits["/x"] == 1


def test_a_503_not_in_the_list_is_not_retried_either() -> None:
    with _Server({"/x": _fixed(503, b"busy", Retry_After="1")}) as server:
        retry = make_retry(2, status_forcelist=(502, 504))
        session = ServiceSession(base_url=server.url, service_name="svc", retries=retry)
        assert session.get("/x").status_code == 503
        assert server.hits["/x"] == 1


def test_a_status_put_in_the_list_is_retried() -> None:
    with _Server({"/x": _fixed(429, b"slow down", Retry_After="0")}) as server:
        retry = make_retry(2, status_forcelist=(429,), backoff_factor=0, backoff_jitter=0)
        session = ServiceSession(base_url=server.url, service_name="svc", retries=retry)
        assert session.get("/x").status_code == 429
        assert server.hits["/x"] == 3


# =========================================================================== 5. user Retry


def test_a_user_retry_keeps_its_settings_and_gets_the_cap() -> None:
    theirs = Retry(
        total=2,
        status_forcelist=[503],
        allowed_methods=["GET", "PUT"],
        backoff_factor=0.5,
        raise_on_status=False,
    )
    before = copy.deepcopy(theirs.__dict__)
    session = ServiceSession(base_url="http://svc.test", retries=theirs)
    adapter = session.get_adapter("http://svc.test/")
    assert isinstance(adapter, requests.adapters.HTTPAdapter)
    mounted = adapter.max_retries
    assert isinstance(mounted, ServiceRetry)
    assert session.retry is mounted
    assert (mounted.total, mounted.status_forcelist, mounted.allowed_methods) == (
        2,
        [503],
        ["GET", "PUT"],
    )
    assert (mounted.backoff_factor, mounted.raise_on_status) == (0.5, False)
    assert mounted.retry_after_max == DEFAULT_RETRY_AFTER_MAX
    assert theirs.__dict__ == before  # the caller's object is not changed
    own_cap = ServiceSession(retries=Retry(total=1, retry_after_max=60)).retry
    assert own_cap.retry_after_max == 60  # a cap the user chose is theirs


def test_a_user_retry_does_not_wait_past_the_cap() -> None:
    with _Server({"/d": _fixed(503, b"busy", Retry_After="30")}) as server:
        retry = Retry(total=2, status_forcelist=[503], raise_on_status=False)
        session = ServiceSession(base_url=server.url, retries=retry, raise_errors=True)
        start = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as caught:
            session.get("/d")
        assert time.monotonic() - start < 10
        assert server.hits["/d"] == 1
    assert not isinstance(caught.value, GatewayTimeoutError)
    assert caught.value.retry_after == 30


def test_a_user_retry_does_not_wait_past_the_total_limit() -> None:
    with _Server({"/d": _fixed(503, b"busy", Retry_After="30")}) as server:
        retry = Retry(total=2, status_forcelist=[503], raise_on_status=False, retry_after_max=60)
        session = ServiceSession(
            base_url=server.url, retries=retry, total_timeout=1.0, raise_errors=True
        )
        start = time.monotonic()
        with pytest.raises(GatewayTimeoutError):
            session.get("/d")
        assert time.monotonic() - start < 10  # it used to sleep the whole 30 s
        assert server.hits["/d"] == 1


# =========================================================================== 6. keep-alive


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/plain", b"no such thing"), ("application/json", b'{"detail": "no"}')],
)
def test_small_error_answers_keep_their_connection(content_type: str, body: bytes) -> None:
    with _Server({"/nf": _fixed(404, body, Content_Type=content_type)}) as server:
        session = ServiceSession(base_url=server.url, service_name="svc", raise_errors=True)
        for _ in range(20):
            with pytest.raises(NotFoundError):
                session.get("/nf")
        assert server.hits["/nf"] == 20
        assert server.connections == 1


def test_a_large_error_body_is_not_read_to_save_its_connection() -> None:
    large = b"x" * (MAX_ERROR_BODY + 1)
    with _Server({"/nf": _fixed(404, large, Content_Type="text/plain")}) as server:
        session = ServiceSession(base_url=server.url, service_name="svc", raise_errors=True)
        for _ in range(3):
            with pytest.raises(NotFoundError):
                session.get("/nf")
        assert server.connections == 3  # dropped each time, the rest of the body unread


# =========================================================================== 7. eviction race


def test_a_session_built_while_its_host_is_evicted_shares_the_registry_breaker() -> None:
    host = "http://10.9.9.9:81"
    crawler = ServiceSession(max_host_breakers=1)

    class BuiltDuringEviction(ServiceSession):
        def _make_adapter(self) -> requests.adapters.HTTPAdapter:
            # Another session evicts this service's host while this one is built.
            crawler.breaker_for(host + "/")
            crawler.breaker_for("http://10.9.9.8:81/")
            return super()._make_adapter()

    session = BuiltDuringEviction(base_url=host)
    assert get_circuit_breaker("10.9.9.9:81") is session.circuit_breaker
    assert ServiceSession(base_url=host).circuit_breaker is session.circuit_breaker


def test_a_session_is_live_before_any_eviction_can_see_its_breaker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A copy or an unpickled session too: it joins the live sessions while holding
    the lock that evictions take, together with its breaker."""
    held: list[bool] = []

    class Recording(weakref.WeakSet[ServiceSession]):
        def add(self, item: ServiceSession) -> None:
            held.append(http_client._host_breakers_lock.locked())
            super().add(item)

    monkeypatch.setattr(http_client, "_live_sessions", Recording())
    session = ServiceSession(base_url="http://svc.test")
    copy.copy(session)
    pickle.loads(pickle.dumps(session))
    ServiceSession()
    assert held == [True, True, True, True]

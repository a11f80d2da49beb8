"""gennet_sync.http_client with the transport mocked by ``responses``:
ServiceSession and raise_for_error."""

from __future__ import annotations

import copy
import datetime
import email.utils
import gzip
import io
import json
import os
import pickle
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import responses
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import HTTPException

from gennet_sync import setup_error_handlers
from gennet_sync.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    get_circuit_breaker,
)
from gennet_sync.context import reset_request_id, set_request_id
from gennet_sync.exceptions import (
    ConflictError,
    ForbiddenError,
    GenNetException,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
)
from gennet_sync.http_client import (
    DEFAULT_TIMEOUT,
    MAX_ERROR_BODY,
    DownstreamError,
    GatewayTimeoutError,
    ServiceRetry,
    ServiceSession,
    downstream_error_class,
    host_port,
    make_retry,
    raise_for_error,
)
from tests.support.clock import FakeClock

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

BASE = "http://svc.test:8000"


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def sent_timeout(call: Any) -> Any:
    """The timeout requests passed to the (mocked) adapter for a recorded call."""
    return call.request.req_kwargs["timeout"]


def sent_settings(call: Any) -> dict[str, Any]:
    """The send options (proxies, verify...) requests passed to the (mocked) adapter."""
    settings: dict[str, Any] = call.request.req_kwargs
    return settings


def state_of(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state


def envelope(code: str, type_: str, message: str, **metadata: Any) -> dict[str, Any]:
    return {"error": {"code": code, "type": type_, "message": message, "metadata": metadata}}


class TestUrls:
    @pytest.mark.parametrize(
        ("base", "url", "expected"),
        [
            ("http://svc.test:8000", "/ctl/verify", "http://svc.test:8000/ctl/verify"),
            ("http://svc.test:8000", "ctl/verify", "http://svc.test:8000/ctl/verify"),
            ("http://svc.test:8000/api/v1/", "/nets", "http://svc.test:8000/api/v1/nets"),
            ("http://svc.test:8000/api", "nets?x=1", "http://svc.test:8000/api/nets?x=1"),
            ("http://svc.test:8000/api", "", "http://svc.test:8000/api"),
            ("http://svc.test:8000", "http://other.test/x", "http://other.test/x"),
            ("http://svc.test:8000", "HTTPS://other.test/x", "HTTPS://other.test/x"),
            ("https://svc.test", "//other.test/x", "https://other.test/x"),
        ],
    )
    def test_join(self, base: str, url: str, expected: str) -> None:
        with ServiceSession(base_url=base, service_name="svc") as session:
            assert session.join_url(url) == expected

    def test_relative_call_goes_to_base_url_and_absolute_is_untouched(
        self, mock: responses.RequestsMock
    ) -> None:
        mock.get(f"{BASE}/api/nets", json={"where": "base"})
        mock.get("http://elsewhere.test/nets", json={"where": "absolute"})
        with ServiceSession(base_url=f"{BASE}/api", service_name="svc") as session:
            assert session.get("/nets").json() == {"where": "base"}
            assert session.get("http://elsewhere.test/nets").json() == {"where": "absolute"}

    def test_every_verb_works(self, mock: responses.RequestsMock) -> None:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
            mock.add(method, f"{BASE}/thing", status=204)
        with ServiceSession(base_url=BASE, service_name="svc") as session:
            calls: list[Callable[..., requests.Response]] = [
                session.get,
                session.post,
                session.put,
                session.patch,
                session.delete,
                session.head,
                session.options,
            ]
            assert [call("/thing").status_code for call in calls] == [204] * 7
        assert session.circuit_breaker is not None
        assert session.circuit_breaker.metrics().successes == 7

    @pytest.mark.parametrize(
        "bad",
        [
            "svc.test:8000",
            "ftp://svc.test",
            "/relative",
            "http://",
            "http://svc.test/api?key=1",
            "http://svc.test/api#top",
        ],
    )
    def test_bad_base_url_is_refused(self, bad: str) -> None:
        with pytest.raises(ValueError, match="base_url"):
            ServiceSession(base_url=bad)


class TestTimeouts:
    def test_default_timeout_applies_when_none_given(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x")
        with ServiceSession(base_url=BASE, service_name="svc") as session:
            session.get("/x")
        assert sent_timeout(mock.calls[0]) == DEFAULT_TIMEOUT

    def test_session_and_call_timeouts(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x")
        with ServiceSession(base_url=BASE, service_name="svc", timeout=(1.0, 2.0)) as session:
            session.get("/x")
            session.get("/x", timeout=7)
        assert [sent_timeout(c) for c in mock.calls] == [(1.0, 2.0), 7]

    def test_timeout_reaches_direct_send(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x")
        with ServiceSession(service_name="svc", timeout=4.0) as session:
            prepared = session.prepare_request(requests.Request("GET", f"{BASE}/x"))
            session.send(prepared)
        assert sent_timeout(mock.calls[0]) == 4.0

    @pytest.mark.parametrize("bad", [0, -1.0, (1.0, -2.0), (1.0, 2.0, 3.0)])
    def test_bad_timeout_is_refused(self, bad: Any) -> None:
        with pytest.raises(ValueError, match="timeout"):
            ServiceSession(service_name="svc", timeout=bad)


class TestEnvironment:
    """requests' environment settings, with the proxy environment read once per host."""

    def _settings(self, mock: responses.RequestsMock, **call: Any) -> dict[str, Any]:
        mock.get(f"{BASE}/x")
        with ServiceSession(base_url=BASE, use_circuit_breaker=False) as session:
            session.get("/x", **call)
        return sent_settings(mock.calls[-1])

    def test_proxy_and_ca_bundle_variables_are_honoured(
        self, mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/ours.pem")
        settings = self._settings(mock)
        assert settings["proxies"]["http"] == "http://proxy.test:3128"
        assert settings["verify"] == "/etc/ssl/ours.pem"

    def test_no_proxy_and_the_calls_own_settings_win(
        self, mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/ours.pem")
        own = self._settings(mock, proxies={"http": "http://mine.test:1"}, verify=False)
        assert own["proxies"]["http"] == "http://mine.test:1"
        assert own["verify"] is False
        monkeypatch.setenv("NO_PROXY", "svc.test")
        assert "http" not in self._settings(mock)["proxies"]

    def test_trust_env_off_ignores_the_environment(
        self, mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
        mock.get(f"{BASE}/x")
        with ServiceSession(base_url=BASE, use_circuit_breaker=False) as session:
            session.trust_env = False
            session.get("/x")
        assert "http" not in sent_settings(mock.calls[0])["proxies"]

    def test_the_proxy_environment_is_read_once_per_host(
        self, mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        reads: list[str] = []
        real = requests.utils.get_environ_proxies

        def counting(url: str, no_proxy: str | None = None) -> dict[str, str]:
            reads.append(url)
            return real(url, no_proxy=no_proxy)

        for module in ("requests.utils", "requests.sessions", "gennet_sync.http_client"):
            monkeypatch.setattr(f"{module}.get_environ_proxies", counting)
        mock.get(f"{BASE}/x")
        mock.get("http://other.test/y")
        with ServiceSession(base_url=BASE, use_circuit_breaker=False) as session:
            for _ in range(5):
                session.get("/x")
            session.get("http://other.test/y")
        assert len(reads) == 2


class TestBreakerUnit:
    def test_5xx_are_failures_and_open_it_then_calls_fail_fast(
        self, mock: responses.RequestsMock
    ) -> None:
        mock.get(f"{BASE}/x", status=503)
        with ServiceSession(
            base_url=BASE, service_name="svc", circuit_breaker_threshold=3, retries=0
        ) as session:
            statuses = [session.get("/x").status_code for _ in range(3)]
            assert statuses == [503, 503, 503]
            with pytest.raises(CircuitBreakerError) as caught:
                session.get("/x")
        assert len(mock.calls) == 3
        assert caught.value.status_code == 503
        assert caught.value.metadata["service"] == "svc"
        assert caught.value.retry_after is not None and caught.value.retry_after > 0

    @pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 429])
    def test_4xx_never_count(self, mock: responses.RequestsMock, status: int) -> None:
        mock.get(f"{BASE}/x", status=status)
        with ServiceSession(
            base_url=BASE, service_name="svc", circuit_breaker_threshold=1, retries=0
        ) as session:
            for _ in range(5):
                assert session.get("/x").status_code == status
        breaker = session.circuit_breaker
        assert breaker is not None
        assert state_of(breaker) is CircuitState.CLOSED
        assert breaker.metrics().failures == 0

    def test_failure_statuses_are_configurable(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x", status=500)
        mock.get(f"{BASE}/y", status=429)
        with ServiceSession(
            base_url=BASE, service_name="svc", failure_statuses={429}, retries=0
        ) as session:
            breaker = session.circuit_breaker
            assert breaker is not None
            session.get("/x")  # a 500 outside the configured set is a success
            assert (breaker.metrics().successes, breaker.metrics().failures) == (1, 0)
            session.get("/y")
            assert (breaker.metrics().successes, breaker.metrics().failures) == (1, 1)

    def test_connection_errors_and_timeouts_are_failures(
        self, mock: responses.RequestsMock
    ) -> None:
        mock.get(f"{BASE}/down", body=requests.ConnectionError("refused"))
        mock.get(f"{BASE}/slow", body=requests.ReadTimeout("slow"))
        with ServiceSession(base_url=BASE, service_name="svc", retries=0) as session:
            with pytest.raises(requests.ConnectionError):
                session.get("/down")
            with pytest.raises(requests.ReadTimeout):
                session.get("/slow")
        assert session.circuit_breaker is not None
        assert session.circuit_breaker.failure_count == 2

    def test_keyboard_interrupt_is_not_a_failure_and_frees_the_trial(
        self, mock: responses.RequestsMock
    ) -> None:
        clock = FakeClock()
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10, name="svc", clock=clock)

        def interrupted(_request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
            raise KeyboardInterrupt

        mock.get(f"{BASE}/fail", status=500)
        mock.add_callback(responses.GET, f"{BASE}/interrupt", callback=interrupted)
        mock.get(f"{BASE}/ok", status=200)
        with ServiceSession(base_url=BASE, circuit_breaker=breaker, retries=0) as session:
            session.get("/fail")
            assert state_of(breaker) is CircuitState.OPEN
            clock.advance(10)
            with pytest.raises(KeyboardInterrupt):
                session.get("/interrupt")  # takes the only trial slot, then gives it back
            assert state_of(breaker) is CircuitState.HALF_OPEN
            assert session.get("/ok").status_code == 200
        assert state_of(breaker) is CircuitState.CLOSED
        assert breaker.metrics().ignored == 1

    def test_elapsed_time_feeds_slow_call_detection(self, mock: responses.RequestsMock) -> None:
        clock = FakeClock()
        breaker = CircuitBreaker(
            name="svc",
            clock=clock,
            slow_call_duration=2.0,
            slow_call_rate_threshold=0.5,
            window_size=4,
            minimum_calls=4,
        )

        def slow(_request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
            clock.advance(3.0)  # the downstream takes 3 s to answer
            return 200, {}, "{}"

        mock.get(f"{BASE}/fast")
        mock.add_callback(responses.GET, f"{BASE}/slow", callback=slow)
        with ServiceSession(base_url=BASE, circuit_breaker=breaker) as session:
            session.get("/fast")
            session.get("/fast")
            session.get("/slow")
            assert state_of(breaker) is CircuitState.CLOSED
            session.get("/slow")  # 2 of the last 4 calls slow: rate 0.5
            assert state_of(breaker) is CircuitState.OPEN
        assert breaker.metrics().slow_calls == 2

    def test_a_bad_url_is_not_the_service_failing(self, mock: responses.RequestsMock) -> None:
        with ServiceSession(service_name="svc", circuit_breaker_threshold=1) as session:
            with pytest.raises(requests.exceptions.InvalidURL):
                session.get("http://[bad")
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.state is CircuitState.CLOSED

    def test_sessions_for_one_service_share_its_breaker(self) -> None:
        with (
            ServiceSession(base_url=BASE, service_name="svc") as one,
            ServiceSession(base_url="http://10.0.0.9", service_name="svc") as two,
        ):
            assert one.circuit_breaker is two.circuit_breaker is get_circuit_breaker("svc")

    def test_breaker_named_after_base_url_host_without_service_name(self) -> None:
        with ServiceSession(base_url="http://grn.test:8000/api") as session:
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.name == "grn.test:8000"

    def test_breaker_name_never_holds_credentials(self, mock: responses.RequestsMock) -> None:
        mock.get("http://grn.test:8000/x", status=503)
        with ServiceSession(
            base_url="http://user:secret@grn.test:8000", raise_errors=True, retries=0
        ) as session:
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.name == "grn.test:8000"
            with pytest.raises(ServiceUnavailableError) as caught:
                session.get("/x")
        assert "secret" not in json.dumps(caught.value.to_dict())

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("http://a.test/x", "a.test"),
            ("http://a.test:81/x", "a.test:81"),
            ("http://u:p@a.test:81/x", "a.test:81"),
            ("http://[::1]:8000/x", "[::1]:8000"),
        ],
    )
    def test_host_port(self, url: str, expected: str) -> None:
        assert host_port(url) == expected

    def test_one_breaker_per_host_without_base_url_or_name(
        self, mock: responses.RequestsMock
    ) -> None:
        mock.get("http://a.test/x", status=503)
        mock.get("http://b.test/x", status=200)
        with ServiceSession(circuit_breaker_threshold=1, retries=0) as session:
            session.get("http://a.test/x")
            with pytest.raises(CircuitBreakerError):
                session.get("http://a.test/x")
            assert session.get("http://b.test/x").status_code == 200
            assert session.breaker_for("http://a.test/y") is get_circuit_breaker("a.test")

    def test_full_config_and_conflicting_config(self) -> None:
        with ServiceSession(
            service_name="svc",
            circuit_breaker_config={"failure_threshold": 2, "half_open_max_calls": 3},
        ) as session:
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.config.failure_threshold == 2
            assert session.circuit_breaker.config.half_open_max_calls == 3
        with pytest.raises(ValueError, match="svc"):
            ServiceSession(service_name="svc", circuit_breaker_threshold=9)

    def test_disabled_breaker_never_refuses(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x", status=503)
        with ServiceSession(
            base_url=BASE, service_name="svc", use_circuit_breaker=False, retries=0
        ) as session:
            assert session.circuit_breaker is None
            assert [session.get("/x").status_code for _ in range(10)] == [503] * 10

    def test_given_breaker_instance_is_used(self, mock: responses.RequestsMock) -> None:
        breaker = CircuitBreaker(failure_threshold=1, name="mine")
        breaker.open()
        with (
            ServiceSession(base_url=BASE, circuit_breaker=breaker) as session,
            pytest.raises(CircuitBreakerError),
        ):
            session.get("/x")
        assert len(mock.calls) == 0


class TestCopyAndPickle:
    @pytest.mark.parametrize("duplicate", [copy.copy, lambda s: pickle.loads(pickle.dumps(s))])
    def test_a_copy_keeps_every_setting_and_the_services_breaker(
        self, mock: responses.RequestsMock, duplicate: Callable[[ServiceSession], ServiceSession]
    ) -> None:
        mock.get(f"{BASE}/x", status=503)
        with ServiceSession(
            base_url=BASE,
            service_name="svc",
            timeout=(1.0, 2.0),
            raise_errors=True,
            retries=0,
            circuit_breaker_threshold=2,
        ) as session:
            with duplicate(session) as twin:
                assert twin.base_url == BASE
                assert twin.timeout == (1.0, 2.0)
                assert twin.circuit_breaker is session.circuit_breaker
                with pytest.raises(ServiceUnavailableError):
                    twin.get("/x")
                with pytest.raises(ServiceUnavailableError):
                    session.get("/x")
            assert sent_timeout(mock.calls[0]) == (1.0, 2.0)
            with pytest.raises(CircuitBreakerError):
                session.get("/x")  # both failures counted on the one breaker
        assert len(mock.calls) == 2

    def test_an_unpickled_per_host_session_finds_its_host_breakers(
        self, mock: responses.RequestsMock
    ) -> None:
        mock.get(f"{BASE}/x", status=503)
        with (
            ServiceSession(retries=0, circuit_breaker_threshold=1) as session,
            pickle.loads(pickle.dumps(session)) as twin,
        ):
            assert twin.get(f"{BASE}/x").status_code == 503
            breaker = twin.breaker_for(BASE)
            assert breaker is not None and breaker.name == "svc.test:8000"
            with pytest.raises(CircuitBreakerError):
                twin.get(f"{BASE}/x")
            with pytest.raises(CircuitBreakerError):
                session.get(f"{BASE}/x")  # the registry's breaker of that host
        assert len(mock.calls) == 1

    def test_a_copy_shares_a_breaker_passed_in(self, mock: responses.RequestsMock) -> None:
        breaker = CircuitBreaker(failure_threshold=1, name="mine")
        with ServiceSession(base_url=BASE, circuit_breaker=breaker) as session:
            assert copy.copy(session).circuit_breaker is breaker


class _EndlessBody(io.RawIOBase):
    """A response body of ``size`` bytes that counts how much of it was read."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = b"[" * count
        self.left -= count
        self.produced += count
        return count


STATUS_CLASSES: list[tuple[type[GenNetException], int]] = [
    (NotFoundError, 404),
    (ValidationError, 422),
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (ConflictError, 409),
    (ServiceUnavailableError, 503),
    (RateLimitError, 429),
    (InternalServerError, 500),
]


class TestRaiseForError:
    def _response(self, mock: responses.RequestsMock, **kwargs: Any) -> requests.Response:
        mock.get(f"{BASE}/x", **kwargs)
        with ServiceSession(base_url=BASE, use_circuit_breaker=False, retries=0) as session:
            return session.get("/x")

    def test_success_does_not_raise(self, mock: responses.RequestsMock) -> None:
        raise_for_error(self._response(mock, status=304))

    def test_envelope_becomes_the_same_class_with_everything_kept(
        self, mock: responses.RequestsMock
    ) -> None:
        body = envelope(
            "NOT_FOUND",
            "NotFoundError",
            "Network with id 'abc' not found",
            resource_type="Network",
            resource_id="abc",
        )
        response = self._response(mock, status=404, json=body)
        with pytest.raises(NotFoundError) as caught:
            raise_for_error(response, service="grn")
        error = caught.value
        assert type(error) is NotFoundError
        assert (error.resource_type, error.resource_id) == ("Network", "abc")
        expected = json.loads(json.dumps(body))
        expected["error"]["metadata"]["service"] = "grn"
        assert error.to_dict() == expected

    @pytest.mark.parametrize(("cls", "status"), STATUS_CLASSES)
    def test_each_class_by_type(
        self, mock: responses.RequestsMock, cls: type[GenNetException], status: int
    ) -> None:
        body = envelope("CUSTOM_CODE", cls.__name__, "went wrong", detail=[1, 2])
        with pytest.raises(cls) as caught:
            raise_for_error(self._response(mock, status=status, json=body), service="svc")
        assert type(caught.value) is cls
        assert caught.value.code == "CUSTOM_CODE"
        assert caught.value.message == "went wrong"
        assert caught.value.metadata == {"detail": [1, 2], "service": "svc"}

    def test_service_defaults_to_host_and_an_inner_service_is_kept(
        self, mock: responses.RequestsMock
    ) -> None:
        inner = envelope("SERVICE_UNAVAILABLE", "ServiceUnavailableError", "c down", service="c")
        mock.get(f"{BASE}/inner", status=503, json=inner)
        mock.get(f"{BASE}/plain", status=404)
        with ServiceSession(base_url=BASE, use_circuit_breaker=False, retries=0) as session:
            with pytest.raises(ServiceUnavailableError) as relayed:
                raise_for_error(session.get("/inner"))
            with pytest.raises(NotFoundError) as plain:
                raise_for_error(session.get("/plain"))
        assert relayed.value.service == "c"
        assert plain.value.metadata["service"] == "svc.test:8000"

    def test_unknown_type_keeps_type_code_and_status(self, mock: responses.RequestsMock) -> None:
        body = envelope("METHOD_NOT_ALLOWED", "MethodNotAllowed", "no POST here")
        response = self._response(mock, status=405, json=body, headers={"Allow": "GET"})
        with pytest.raises(DownstreamError) as caught:
            raise_for_error(response, service="svc")
        error = caught.value
        assert error.status_code == 405
        assert error.to_dict()["error"]["type"] == "MethodNotAllowed"
        assert error.to_dict()["error"]["code"] == "METHOD_NOT_ALLOWED"

    def test_unknown_type_with_a_known_status_is_still_that_class(
        self, mock: responses.RequestsMock
    ) -> None:
        body = envelope("NOT_FOUND", "NotFound", "The requested URL was not found.")
        with pytest.raises(NotFoundError) as caught:
            raise_for_error(self._response(mock, status=404, json=body), service="svc")
        assert isinstance(caught.value, DownstreamError)
        assert caught.value.to_dict()["error"]["type"] == "NotFound"
        assert caught.value.status_code == 404

    def test_type_with_another_status_falls_back_by_status(
        self, mock: responses.RequestsMock
    ) -> None:
        body = envelope("TEAPOT", "NotFoundError", "odd")
        with pytest.raises(DownstreamError) as caught:
            raise_for_error(self._response(mock, status=418, json=body), service="svc")
        assert not isinstance(caught.value, NotFoundError)
        assert caught.value.status_code == 418

    @pytest.mark.parametrize(
        ("status", "cls"),
        [
            (401, UnauthorizedError),
            (403, ForbiddenError),
            (404, NotFoundError),
            (409, ConflictError),
            (422, ValidationError),
            (429, RateLimitError),
            (500, InternalServerError),
            (502, ServiceUnavailableError),
            (503, ServiceUnavailableError),
            (504, ServiceUnavailableError),
        ],
    )
    def test_non_envelope_maps_by_status(
        self, mock: responses.RequestsMock, status: int, cls: type[GenNetException]
    ) -> None:
        response = self._response(mock, status=status, body="<html>proxy error</html>")
        with pytest.raises(cls) as caught:
            raise_for_error(response, service="svc")
        assert type(caught.value) is cls
        assert caught.value.metadata["service"] == "svc"
        assert caught.value.metadata["status_code"] == status
        assert "proxy error" not in caught.value.message

    def test_non_envelope_without_a_class_keeps_its_status(
        self, mock: responses.RequestsMock
    ) -> None:
        with pytest.raises(DownstreamError) as caught:
            raise_for_error(self._response(mock, status=413, body="too big"), service="svc")
        assert caught.value.status_code == 413
        # On every Python (http.HTTPStatus says "Content Too Large" from 3.13 on).
        assert caught.value.code == "REQUEST_ENTITY_TOO_LARGE"

    @pytest.mark.parametrize("status", [405, 413, 414, 416, 418, 431, 501, 511])
    def test_a_status_without_envelope_is_named_as_the_flask_side_names_it(
        self, mock: responses.RequestsMock, status: int
    ) -> None:
        app = Flask("names")
        setup_error_handlers(app)

        @app.get("/fail")
        def fail() -> str:
            # A class of our own: werkzeug has none for some statuses (511).
            raise type("Failure", (HTTPException,), {"code": status})()

        flask_code = app.test_client().get("/fail").get_json()["error"]["code"]
        with pytest.raises(GenNetException) as caught:
            raise_for_error(self._response(mock, status=status, body="plain"), service="svc")
        assert caught.value.code == flask_code

    @pytest.mark.parametrize("status", [404, 405, 503])
    def test_downstream_errors_survive_pickling_and_copying(
        self, mock: responses.RequestsMock, status: int
    ) -> None:
        body = envelope("SOME_CODE", "SomeRemoteError", "remote said no", detail=[1, 2])
        with pytest.raises(DownstreamError) as caught:
            raise_for_error(self._response(mock, status=status, json=body), service="svc")
        error = caught.value
        for twin in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
            assert type(twin) is type(error)
            assert twin.to_dict() == error.to_dict()
            assert vars(twin) == vars(error)

    def test_errors_pickled_before_they_moved_to_their_own_module_still_load(self) -> None:
        """Pickles made when these errors lived in gennet_sync.http_client (a worker
        of the previous release, a result in a queue) name it: they still load."""
        made_by_the_previous_layout = [
            b"\x80\x04\x95\x9b\x00\x00\x00\x00\x00\x00\x00\x8c\x17gennet_sync.http_client"
            b"\x94\x8c\x1a_unpickle_downstream_error\x94\x93\x94M\xa2\x01\x8c\x06teapot"
            b"\x94\x86\x94R\x94}\x94(\x8c\x07message\x94h\x03\x8c\x08metadata\x94}\x94"
            b"\x8c\x07service\x94\x8c\x03grn\x94s\x8c\nerror_type\x94\x8c\x12"
            b"Downstream418Error\x94ub.",
            b"\x80\x04\x95\xbf\x00\x00\x00\x00\x00\x00\x00\x8c\x17gennet_sync.http_client"
            b"\x94\x8c\x12_restore_flavoured\x94\x93\x94h\x00\x8c\x13GatewayTimeoutError"
            b"\x94\x93\x94\x8c\x13requests.exceptions\x94\x8c\x0bReadTimeout\x94\x93\x94"
            b"\x8c\x04late\x94\x87\x94R\x94}\x94(\x8c\x07service\x94\x8c\x03grn\x94"
            b"\x8c\x0bretry_after\x94N\x8c\x07message\x94h\x08\x8c\x08metadata\x94}\x94"
            b"h\x0ch\rsub.",
        ]
        teapot, late = (pickle.loads(data) for data in made_by_the_previous_layout)
        assert type(teapot) is downstream_error_class(418)
        assert teapot.to_dict()["error"] == {
            "code": "I_M_A_TEAPOT",
            "type": "Downstream418Error",
            "message": "teapot",
            "metadata": {"service": "grn"},
        }
        assert isinstance(late, GatewayTimeoutError) and isinstance(late, requests.ReadTimeout)
        assert late.message == "late" and late.service == "grn"

    def test_a_downstream_error_class_can_be_raised_directly(self) -> None:
        cls = downstream_error_class(404)
        error = cls("gone", error_type="NotFound", metadata={"resource_id": "abc"})
        assert isinstance(error, NotFoundError)
        assert error.resource_id == "abc"
        assert error.to_dict()["error"]["type"] == "NotFound"

    def test_json_that_is_not_an_envelope_maps_by_status(
        self, mock: responses.RequestsMock
    ) -> None:
        response = self._response(mock, status=404, json={"detail": "nope"})
        with pytest.raises(NotFoundError) as caught:
            raise_for_error(response, service="svc")
        assert caught.value.code == "NOT_FOUND"

    def test_a_response_built_by_hand_is_read(self) -> None:
        response = requests.Response()
        response.status_code = 409
        response.headers["Content-Type"] = "application/json"
        response._content = json.dumps(envelope("CONFLICT", "ConflictError", "taken")).encode()
        with pytest.raises(ConflictError) as caught:
            raise_for_error(response, service="svc")
        assert caught.value.message == "taken"

    def test_json_nested_too_deeply_maps_by_status(self, mock: responses.RequestsMock) -> None:
        response = self._response(
            mock, status=500, body="[" * 100_000, content_type="application/json"
        )
        with pytest.raises(InternalServerError) as caught:
            raise_for_error(response, service="svc")
        assert caught.value.metadata == {"service": "svc", "status_code": 500}

    def test_a_huge_streamed_error_body_is_not_read_into_memory(
        self, mock: responses.RequestsMock
    ) -> None:
        body = _EndlessBody(256 * 1024 * 1024)
        mock.get(
            f"{BASE}/x", body=io.BufferedReader(body), status=502, content_type="application/json"
        )
        with ServiceSession(base_url=BASE, use_circuit_breaker=False, retries=0) as session:
            response = session.get("/x", stream=True)
            with pytest.raises(ServiceUnavailableError):
                raise_for_error(response, service="svc")
            response.close()
        assert body.produced <= 2 * MAX_ERROR_BODY

    def test_an_envelope_in_a_streamed_response_is_read(self, mock: responses.RequestsMock) -> None:
        data = json.dumps(envelope("CONFLICT", "ConflictError", "taken")).encode()
        mock.get(
            f"{BASE}/x",
            body=io.BufferedReader(io.BytesIO(data)),
            status=409,
            content_type="application/json",
        )
        with ServiceSession(base_url=BASE, use_circuit_breaker=False, retries=0) as session:
            response = session.get("/x", stream=True)
            with pytest.raises(ConflictError) as caught:
                raise_for_error(response, service="svc")
            response.close()
        assert caught.value.message == "taken"

    def test_a_stream_the_caller_already_read_maps_by_status(
        self, mock: responses.RequestsMock
    ) -> None:
        data = json.dumps(envelope("CONFLICT", "ConflictError", "taken")).encode()
        mock.get(
            f"{BASE}/x",
            body=io.BufferedReader(io.BytesIO(data)),
            status=409,
            content_type="application/json",
        )
        with ServiceSession(base_url=BASE, use_circuit_breaker=False, retries=0) as session:
            response = session.get("/x", stream=True)
            assert b"".join(response.iter_content(1024)) == data
            with pytest.raises(ConflictError) as caught:
                raise_for_error(response, service="svc")
        assert caught.value.code == "CONFLICT"
        assert caught.value.metadata["status_code"] == 409

    def test_retry_after_seconds_are_carried_exactly(self, mock: responses.RequestsMock) -> None:
        response = self._response(mock, status=503, body="busy", headers={"Retry-After": "30"})
        with pytest.raises(ServiceUnavailableError) as caught:
            raise_for_error(response, service="svc")
        assert caught.value.retry_after == 30
        assert caught.value.metadata["retry_after"] == 30
        assert caught.value.headers == {"Retry-After": "30"}

    def test_retry_after_http_date_is_the_time_left_until_then(
        self, mock: responses.RequestsMock
    ) -> None:
        when = email.utils.format_datetime(
            datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1), usegmt=True
        )
        response = self._response(mock, status=503, body="busy", headers={"Retry-After": when})
        with pytest.raises(ServiceUnavailableError) as caught:
            raise_for_error(response, service="svc")
        assert caught.value.retry_after is not None
        assert 3590 <= caught.value.retry_after <= 3600

    def test_a_retry_after_date_in_the_past_means_now(self, mock: responses.RequestsMock) -> None:
        past = "Wed, 21 Oct 2015 07:28:00 GMT"
        response = self._response(mock, status=503, body="busy", headers={"Retry-After": past})
        with pytest.raises(ServiceUnavailableError) as caught:
            raise_for_error(response, service="svc")
        assert caught.value.retry_after == 0
        assert caught.value.headers == {"Retry-After": "0"}

    @pytest.mark.parametrize(
        "header", ["\u00b2", "-5", "9" * 400, "soon", "1.5", "Wed, 21 Oct 2099 07:28:00 -0000"]
    )
    def test_a_bad_retry_after_is_ignored(self, mock: responses.RequestsMock, header: str) -> None:
        response = self._response(mock, status=503, body="busy", headers={"Retry-After": header})
        with pytest.raises(ServiceUnavailableError) as caught:
            raise_for_error(response, service="svc")
        assert caught.value.retry_after is None
        assert "retry_after" not in caught.value.metadata
        assert caught.value.headers == {}

    def test_retry_after_header_on_an_envelope(self, mock: responses.RequestsMock) -> None:
        body = envelope("RATE_LIMIT_EXCEEDED", "RateLimitError", "slow down", retry_after=7)
        response = self._response(mock, status=429, json=body, headers={"Retry-After": "9"})
        with pytest.raises(RateLimitError) as caught:
            raise_for_error(response, service="svc")
        assert caught.value.retry_after == 9
        assert caught.value.headers == {"Retry-After": "9"}
        assert caught.value.metadata["retry_after"] == 7  # the downstream's own metadata

    def test_downstream_breaker_error_is_rebuilt(self, mock: responses.RequestsMock) -> None:
        original = CircuitBreakerError(service="c", retry_after=12.0)
        response = self._response(
            mock, status=503, json=original.to_dict(), headers={"Retry-After": "12"}
        )
        with pytest.raises(CircuitBreakerError) as caught:
            raise_for_error(response, service="b")
        assert caught.value.state is CircuitState.OPEN
        assert caught.value.service == "c"
        assert caught.value.to_dict() == original.to_dict()

    @settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        cls_status=st.sampled_from(STATUS_CLASSES),
        code=st.from_regex(r"[A-Z][A-Z_]{0,20}", fullmatch=True),
        message=st.text(max_size=40),
        metadata=st.dictionaries(
            st.text(max_size=8).filter(lambda k: k != "service"),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                ),
                max_leaves=8,
            ),
            max_size=4,
        ),
    )
    def test_any_envelope_round_trips(
        self,
        cls_status: tuple[type[GenNetException], int],
        code: str,
        message: str,
        metadata: dict[str, Any],
    ) -> None:
        cls, status = cls_status
        body = {
            "error": {"code": code, "type": cls.__name__, "message": message, "metadata": metadata}
        }
        with responses.RequestsMock() as mock:
            response = self._response(mock, status=status, json=body)
        with pytest.raises(cls) as caught:
            raise_for_error(response, service="svc")
        expected = json.loads(json.dumps(body))
        expected["error"]["metadata"]["service"] = "svc"
        assert caught.value.to_dict() == expected


class TestRaiseErrorsOption:
    def test_error_response_raises(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x", status=409, json=envelope("CONFLICT", "ConflictError", "taken"))
        with (
            ServiceSession(base_url=BASE, service_name="svc", raise_errors=True) as session,
            pytest.raises(ConflictError, match="taken"),
        ):
            session.get("/x")

    def test_success_is_returned(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x", json={"ok": True})
        with ServiceSession(base_url=BASE, service_name="svc", raise_errors=True) as session:
            assert session.get("/x").json() == {"ok": True}

    @pytest.mark.parametrize(
        ("exc", "reason", "ours", "status"),
        [
            (requests.ConnectionError("refused"), "connection_error", ServiceUnavailableError, 503),
            (requests.ConnectTimeout("connect"), "timeout", GatewayTimeoutError, 504),
            (requests.ReadTimeout("read"), "timeout", GatewayTimeoutError, 504),
        ],
    )
    def test_transport_failures_become_service_unavailable(
        self,
        mock: responses.RequestsMock,
        exc: Exception,
        reason: str,
        ours: type[GenNetException],
        status: int,
    ) -> None:
        mock.get(f"{BASE}/x", body=exc)
        with ServiceSession(
            base_url=BASE, service_name="svc", raise_errors=True, retries=0
        ) as session:
            with pytest.raises(ServiceUnavailableError) as caught:
                session.get("/x")
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.failure_count == 1
        # Ours (a timeout is a 504, still a ServiceUnavailableError) and requests' own.
        assert type(caught.value).__bases__ == (ours, type(exc))
        assert caught.value.status_code == status
        assert caught.value.to_dict()["error"]["type"] == ours.__name__
        assert caught.value.service == "svc"
        assert caught.value.metadata["reason"] == reason
        assert isinstance(caught.value.__cause__, type(exc))

    def test_breaker_error_stays_itself(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x", status=503)
        with ServiceSession(
            base_url=BASE,
            service_name="svc",
            raise_errors=True,
            circuit_breaker_threshold=1,
            retries=0,
        ) as session:
            with pytest.raises(ServiceUnavailableError) as first:
                session.get("/x")
            with pytest.raises(CircuitBreakerError):
                session.get("/x")
        assert not isinstance(first.value, CircuitBreakerError)
        assert len(mock.calls) == 1

    def test_a_5xx_raised_still_counts_as_failure(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x", status=500)
        with ServiceSession(
            base_url=BASE, service_name="svc", raise_errors=True, retries=0
        ) as session:
            with pytest.raises(InternalServerError):
                session.get("/x")
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.failure_count == 1


class TestHeaders:
    def test_request_id_is_forwarded(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x")
        token = set_request_id("req-123")
        try:
            with ServiceSession(base_url=BASE, service_name="svc") as session:
                session.get("/x")
                session.get("/x", headers={"X-Request-ID": "caller-set"})
        finally:
            reset_request_id(token)
        sent = [call.request.headers.get("X-Request-ID") for call in mock.calls]
        assert sent == ["req-123", "caller-set"]

    def test_no_request_id_outside_a_request_or_when_disabled(
        self, mock: responses.RequestsMock
    ) -> None:
        mock.get(f"{BASE}/x")
        with ServiceSession(base_url=BASE, service_name="svc") as session:
            session.get("/x")
        token = set_request_id("req-123")
        try:
            with ServiceSession(
                base_url=BASE, service_name="svc", forward_request_id=False
            ) as session:
                session.get("/x")
        finally:
            reset_request_id(token)
        assert [c.request.headers.get("X-Request-ID") for c in mock.calls] == [None, None]

    def test_request_id_goes_in_the_configured_header(self, mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE}/x")
        token = set_request_id("req-9")
        try:
            with ServiceSession(
                base_url=BASE, service_name="svc", request_id_header="X-Correlation-ID"
            ) as session:
                session.get("/x")
                copied = copy.copy(session)
        finally:
            reset_request_id(token)
        [call] = mock.calls
        assert call.request.headers["X-Correlation-ID"] == "req-9"
        assert "X-Request-ID" not in call.request.headers
        assert copied.request_id_header == "X-Correlation-ID"

    def test_user_agent_names_library_and_caller(
        self, mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        mock.get(f"{BASE}/x")
        monkeypatch.setenv("GENNET_SERVICE_NAME", "from-env")
        with ServiceSession(base_url=BASE, service_name="svc", caller="orders api") as one:
            one.get("/x")
        with ServiceSession(base_url=BASE, service_name="svc") as two:
            two.get("/x")
        agents = [call.request.headers["User-Agent"] for call in mock.calls]
        assert re.fullmatch(r"orders-api gennet_sync/\S+ python-requests/\S+", agents[0])
        assert agents[1].startswith("from-env gennet_sync/")

    def test_accept_encoding_lists_installed_codecs(self) -> None:
        with ServiceSession(service_name="svc") as session:
            codings = {c.strip() for c in str(session.headers["Accept-Encoding"]).split(",")}
        assert {"gzip", "deflate", "br", "zstd"} <= codings


class TestCompression:
    def test_large_body_is_gzipped(self, mock: responses.RequestsMock) -> None:
        mock.post(f"{BASE}/x")
        payload = {"nodes": [f"gene{i}" for i in range(500)]}
        with ServiceSession(base_url=BASE, service_name="svc", compress_requests=True) as s:
            s.post("/x", json=payload)
        sent = mock.calls[0].request
        assert sent.headers["Content-Encoding"] == "gzip"
        assert isinstance(sent.body, bytes)
        assert int(sent.headers["Content-Length"]) == len(sent.body)
        assert json.loads(gzip.decompress(sent.body)) == payload

    def test_small_incompressible_or_encoded_bodies_are_left_alone(
        self, mock: responses.RequestsMock
    ) -> None:
        mock.post(f"{BASE}/x")
        noise = os.urandom(4096)
        with ServiceSession(base_url=BASE, service_name="svc", compress_requests=True) as s:
            s.post("/x", json={"a": 1})
            s.post("/x", data=noise)
            s.post("/x", data=b"x" * 5000, headers={"Content-Encoding": "br"})
        first, second, third = (call.request for call in mock.calls)
        assert "Content-Encoding" not in first.headers
        assert "Content-Encoding" not in second.headers and second.body == noise
        assert third.headers["Content-Encoding"] == "br" and third.body == b"x" * 5000

    def test_off_by_default(self, mock: responses.RequestsMock) -> None:
        mock.post(f"{BASE}/x")
        with ServiceSession(base_url=BASE, service_name="svc") as s:
            s.post("/x", data=b"x" * 5000)
        assert "Content-Encoding" not in mock.calls[0].request.headers


class TestRetryPolicy:
    def test_default_retry_shape(self) -> None:
        retry = make_retry(2)
        assert isinstance(retry, ServiceRetry)
        assert retry.raise_on_status is False
        assert set(retry.status_forcelist) == {502, 503, 504}
        assert retry.allowed_methods is not None and "POST" not in retry.allowed_methods
        assert retry.backoff_jitter > 0
        assert retry.retry_after_max <= 10

    def test_negative_retries_refused(self) -> None:
        with pytest.raises(ValueError, match="retries"):
            make_retry(-1)


# Session.request passes {} when a call names no proxies; None only comes from
# code calling merge_environment_settings itself, with trust_env off.
@pytest.mark.parametrize(
    ("trust_env", "call_proxies", "session_proxies"),
    [
        (trust_env, call, session)
        for trust_env in (True, False)
        for call, session in [
            ({}, {}),
            ({"http": None, "https": "http://127.0.0.1:3128"}, {}),
            ({"http": "http://127.0.0.1:3128"}, {"https": "http://127.0.0.1:3129", "ftp": None}),
            ({}, {"http": "http://127.0.0.1:3128"}),
        ]
    ]
    + [(False, None, {}), (False, None, {"http": "http://127.0.0.1:3128"})],
)
def test_the_proxies_a_call_uses_are_merged_as_requests_merges_them(
    monkeypatch: pytest.MonkeyPatch,
    trust_env: bool,
    call_proxies: Any,
    session_proxies: dict[str, str | None],
) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3130")
    ours, theirs = ServiceSession(service_name="proxies"), requests.Session()
    for session in (ours, theirs):
        session.trust_env = trust_env
        session.proxies = dict(session_proxies)  # type: ignore[arg-type]
    url = "http://grn.test/networks"
    mine = ours.merge_environment_settings(url, call_proxies, None, None, None)["proxies"]
    expected = theirs.merge_environment_settings(url, call_proxies, None, None, None)["proxies"]
    assert dict(mine) == dict(expected)


@pytest.mark.parametrize(
    ("session_headers", "session_params", "call_headers", "call_params"),
    [
        ({}, {}, {}, {}),
        ({"X-Team": "grn"}, {}, {}, {}),
        ({"Accept-Encoding": None, "X-Team": "grn"}, {}, {}, {}),  # None: not sent
        ({"X-Team": "grn"}, {"page": "2", "gone": None}, {}, {}),
        ({"X-Team": "grn"}, {"page": "2"}, {"X-Team": None, "X-Call": "1"}, {"q": "a b"}),
        ({}, {}, {"Accept": "application/json"}, {"ids": ["1", "2"]}),
    ],
)
def test_a_request_is_prepared_exactly_as_requests_prepares_it(
    session_headers: dict[str, Any],
    session_params: dict[str, Any],
    call_headers: dict[str, Any],
    call_params: dict[str, Any],
) -> None:
    ours, theirs = ServiceSession(service_name="prepare"), requests.Session()
    for session in (ours, theirs):
        session.trust_env = False
        session.headers.update(session_headers)
        session.params = dict(session_params)
    url = "http://grn.test/networks"
    request = requests.Request("GET", url, headers=call_headers, params=call_params)
    mine, expected = ours.prepare_request(request), theirs.prepare_request(request)
    assert mine.url == expected.url
    # Same names, values and order; ServiceSession's own User-Agent aside.
    assert [(k, v) for k, v in mine.headers.items() if k != "User-Agent"] == [
        (k, v) for k, v in expected.headers.items() if k != "User-Agent"
    ]
    # The caller's Request is left as it was given.
    assert request.headers is call_headers and request.params is call_params

"""ServiceSession against misbehaving downstreams, the parts that need no server
(issue 10): pickling, sent timeouts, Retry-After parsing, the bound on per-host
breakers."""

from __future__ import annotations

import pickle
import threading

import pytest
import requests
import responses

from gennet_sync.circuit_breaker import (
    CircuitBreakerError,
    CircuitState,
    all_circuit_breakers,
    get_circuit_breaker,
)
from gennet_sync.exceptions import GenNetException
from gennet_sync.http_client import (
    DEFAULT_TOTAL_TIMEOUT,
    ServiceSession,
)

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")


# =========================================================================== drop-in


class TestRefusalIsARequestsError:
    def test_refusal_survives_pickling_as_both_classes(self) -> None:
        breaker = get_circuit_breaker("svc")
        breaker.open()
        session = ServiceSession(base_url="http://127.0.0.1:9", service_name="svc")
        with pytest.raises(CircuitBreakerError) as caught:
            session.get("/x")
        copy = pickle.loads(pickle.dumps(caught.value))
        assert isinstance(copy, CircuitBreakerError)
        assert isinstance(copy, requests.ConnectionError)
        assert copy.retry_after == caught.value.retry_after
        assert copy.state is CircuitState.OPEN
        assert copy.to_dict() == caught.value.to_dict()
        assert copy.request is None  # a request may hold a generator: not pickled


class TestExplicitTimeoutNone:
    def test_sent_timeouts(self) -> None:
        with responses.RequestsMock() as mock:
            mock.get("http://svc.test/x")
            with ServiceSession(service_name="svc", timeout=(1.0, 2.0)) as session:
                session.get("http://svc.test/x")
                session.get("http://svc.test/x", timeout=None)
                # timeout given positionally, as requests allows.
                session.request("GET", "http://svc.test/x", None, None, None, None, None, None, 5)
            # A named session's total limit caps each part of the timeout.
            sent = [call.request.req_kwargs["timeout"] for call in mock.calls]  # type: ignore[attr-defined]
        assert sent == [(1.0, 2.0), DEFAULT_TOTAL_TIMEOUT, 5]


# =========================================================================== protocol failures


class TestProtocolFailures:
    def test_a_bad_url_from_the_caller_is_not_the_services_fault(self) -> None:
        session = ServiceSession(raise_errors=True)
        with pytest.raises(requests.exceptions.InvalidSchema):
            session.get("ftp://files.test/x")
        assert all(breaker.failure_count == 0 for breaker in all_circuit_breakers())


# =========================================================================== Retry-After


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("120", 120.0),
            ("9999999999", None),  # over a year: nonsense
            ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),  # a date in the past: now
            ("Fri, 31 Dec 9999 23:59:59 GMT", None),
            ("Sun, 06 Nov 1994 08:49:37", None),  # no zone: not an HTTP date
            ("12.5", None),
            ("", None),
        ],
    )
    def test_what_reaches_the_error(self, value: str, expected: float | None) -> None:
        with responses.RequestsMock() as mock:
            mock.get("http://svc.test/x", status=429, headers={"Retry-After": value})
            session = ServiceSession(service_name="svc", raise_errors=True)
            with pytest.raises(GenNetException) as caught:
                session.get("http://svc.test/x")
        assert getattr(caught.value, "retry_after", None) == expected


# =========================================================================== total time limit


class TestTotalTimeLimit:
    def test_defaults(self) -> None:
        assert ServiceSession(service_name="svc").total_timeout == DEFAULT_TOTAL_TIMEOUT
        assert ServiceSession(base_url="http://a.test").total_timeout == DEFAULT_TOTAL_TIMEOUT
        assert ServiceSession().total_timeout is None  # a plain-requests stand-in: no limit
        with pytest.raises(ValueError, match="total_timeout"):
            ServiceSession(service_name="svc", total_timeout=0)


# =========================================================================== per-host breakers


class TestPerHostBreakersAreBounded:
    def test_thousands_of_hosts_keep_the_registry_bounded(self) -> None:
        session = ServiceSession(max_host_breakers=100)
        for index in range(5000):
            session.breaker_for(f"http://host-{index}.test/")
        names = {breaker.name for breaker in all_circuit_breakers()}
        assert len(names) == 100
        assert names == {f"host-{index}.test" for index in range(4900, 5000)}

    def test_recently_used_hosts_stay(self) -> None:
        session = ServiceSession(max_host_breakers=3)
        hot = session.breaker_for("http://hot.test/")
        for index in range(10):
            session.breaker_for(f"http://cold-{index}.test/")
            assert session.breaker_for("http://hot.test/") is hot

    def test_a_breaker_another_session_uses_stays_in_the_registry(self) -> None:
        crawler = ServiceSession(max_host_breakers=2)
        named = ServiceSession(base_url="http://shared.test")
        shared = crawler.breaker_for("http://shared.test/")
        assert named.circuit_breaker is shared
        other_crawler = ServiceSession()
        other_crawler.breaker_for("http://other.test/")
        for index in range(10):
            crawler.breaker_for(f"http://h{index}.test/")
        crawler.breaker_for("http://other.test/")
        crawler.breaker_for("http://x.test/")
        crawler.breaker_for("http://y.test/")
        assert get_circuit_breaker("shared.test") is shared
        assert get_circuit_breaker("other.test") is other_crawler.breaker_for("http://other.test/")

    def test_threads_on_one_session_keep_the_bound(self) -> None:
        session = ServiceSession(max_host_breakers=50)

        def crawl(offset: int) -> None:
            for index in range(1000):
                session.breaker_for(f"http://t{offset}-{index}.test/")

        threads = [threading.Thread(target=crawl, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(all_circuit_breakers()) == 50

    def test_close_lets_go_of_its_breakers(self) -> None:
        with ServiceSession() as session:
            for index in range(20):
                session.breaker_for(f"http://c{index}.test/")
        assert all_circuit_breakers() == []

    def test_bad_bound_is_refused(self) -> None:
        with pytest.raises(ValueError, match="max_host_breakers"):
            ServiceSession(max_host_breakers=0)


def test_total_timeout_per_call_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="total_timeout"):
        ServiceSession().request("GET", "http://127.0.0.1:9/", total_timeout=-1)

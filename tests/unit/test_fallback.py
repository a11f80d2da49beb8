"""gennet_sync.fallback and ServiceSession(fallback=): the last-good-response cache
on a fake clock, and when a session falls back (transport mocked by ``responses``)."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import requests
import responses

from gennet_sync import http_client
from gennet_sync.exceptions import NotFoundError
from gennet_sync.fallback import FALLBACK_WARNING, LastGoodResponse
from gennet_sync.http_client import ServiceSession
from tests.support.clock import FakeClock

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

BASE = "http://grn.test"


def _nothing() -> None:
    pass


REPLICA = "http://grn-replica.test"


def _session(cache: LastGoodResponse, **settings: Any) -> ServiceSession:
    return ServiceSession(
        base_url=BASE, service_name="fallback", fallback=cache, retries=0, **settings
    )


def _good_answer(url: str) -> requests.Response:
    """A 200 to a GET of ``url``, its body the URL, as a session hands it to ``remember``."""
    answer = requests.Response()
    answer.status_code = 200
    answer._content = url.encode()
    answer.request = requests.Request("GET", url).prepare()
    return answer


def _served_after(
    session: ServiceSession, versions: Iterable[int], before_each: Callable[[], None] = _nothing
) -> Any:
    """``/n`` answers each version in turn (``before_each`` runs before each call),
    then fails: the body the fallback answers with."""
    for version in versions:
        before_each()
        responses.upsert(responses.GET, f"{BASE}/n", json={"v": version})
        session.get("/n")
    responses.replace(responses.GET, f"{BASE}/n", status=503)
    return session.get("/n").json()


@responses.activate
def test_a_failing_get_is_answered_with_the_last_good_response_marked_stale() -> None:
    clock = FakeClock()
    cache = LastGoodResponse(clock=clock)
    session = _session(cache)
    responses.get(f"{BASE}/networks/abc", json={"id": "abc"}, headers={"ETag": '"1"'})
    assert session.get("/networks/abc").json() == {"id": "abc"}
    responses.replace(responses.GET, f"{BASE}/networks/abc", status=503, json={})
    clock.advance(42)
    stale = session.get("/networks/abc")
    assert stale.status_code == 200 and stale.json() == {"id": "abc"}
    assert stale.headers["Warning"] == FALLBACK_WARNING
    assert stale.headers["Age"] == "42"
    assert stale.headers["ETag"] == '"1"'
    assert getattr(stale, "fallback", False) is True
    assert cache.served == 1


@responses.activate
def test_with_raise_errors_a_refusal_or_a_failure_falls_back_and_a_4xx_does_not() -> None:
    cache = LastGoodResponse()
    session = _session(cache, raise_errors=True, circuit_breaker_threshold=1)
    responses.get(f"{BASE}/x", json={"ok": 1})
    responses.get(f"{BASE}/missing", status=404, json={"error": {"code": "NOT_FOUND",
                  "type": "NotFoundError", "message": "no", "metadata": {}}})  # fmt: skip
    session.get("/x")
    with pytest.raises(NotFoundError):  # the service answered: no fallback
        session.get("/missing")
    responses.replace(responses.GET, f"{BASE}/x", body=requests.ConnectionError("reset"))
    assert session.get("/x").json() == {"ok": 1}  # the connection failed
    breaker = session.circuit_breaker
    assert breaker is not None and breaker.state.value == "open"
    sent = len(responses.calls)
    assert session.get("/x").json() == {"ok": 1}  # the breaker refused: nothing sent
    assert len(responses.calls) == sent


@responses.activate
def test_a_subclass_overriding_send_runs_once_per_call_with_a_fallback() -> None:
    sent: list[str | None] = []

    class Signing(ServiceSession):
        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            sent.append(request.url)
            request.headers["X-Signature"] = f"sig-{len(sent)}"
            return super().send(request, **kwargs)

    session = Signing(base_url=BASE, service_name="signed", fallback=LastGoodResponse(), retries=0)
    responses.get(f"{BASE}/x", json={"ok": 1})
    assert session.get("/x").json() == {"ok": 1}
    responses.replace(responses.GET, f"{BASE}/x", status=503)
    assert getattr(session.get("/x"), "fallback", False) is True
    assert sent == [f"{BASE}/x", f"{BASE}/x"]
    assert [call.request.headers["X-Signature"] for call in responses.calls] == ["sig-1", "sig-2"]


class _RecordingObserver:
    """A call observer (the metrics' seat) noting what each call it saw ended with."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def observe(
        self, session: ServiceSession, request: requests.PreparedRequest, send: Any
    ) -> requests.Response:
        try:
            response: requests.Response = send()
        except Exception as error:
            self.seen.append(type(error).__name__)
            raise
        self.seen.append(response.status_code)
        return response

    def retried(self, call: object) -> None:
        self.seen.append("retry")


@responses.activate
def test_the_observer_sees_each_calls_own_outcome_once_not_its_stand_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    observer = _RecordingObserver()
    monkeypatch.setattr(http_client, "call_observer", observer)
    session = _session(LastGoodResponse())
    responses.get(f"{BASE}/x", json={"ok": 1})
    session.get("/x")
    responses.replace(responses.GET, f"{BASE}/x", status=503)
    assert getattr(session.get("/x"), "fallback", False) is True
    responses.replace(responses.GET, f"{BASE}/x", body=requests.ConnectionError("reset"))
    assert getattr(session.get("/x"), "fallback", False) is True
    assert observer.seen == [200, 503, "ConnectionError"]


@responses.activate
def test_a_fallback_may_try_another_replica_through_the_same_session() -> None:
    asked: list[str | None] = []
    session = _session(LastGoodResponse())

    def to_replica(
        request: requests.PreparedRequest, error: BaseException | None, answer: object
    ) -> requests.Response:
        asked.append(request.url)
        replica = request.copy()
        replica.url = (request.url or "").replace(BASE, REPLICA)
        return session.send(replica)  # a plain call: it does not fall back again

    session.fallback = to_replica
    responses.get(f"{BASE}/x", body=requests.ConnectionError("primary down"))
    responses.get(f"{REPLICA}/x", json={"from": "replica"})
    assert session.get("/x").json() == {"from": "replica"}
    responses.replace(responses.GET, f"{REPLICA}/x", body=requests.ConnectionError("also down"))
    with pytest.raises(requests.ConnectionError, match="also down"):
        session.get("/x")
    responses.replace(responses.GET, f"{REPLICA}/x", status=503)
    assert session.get("/x").status_code == 503  # the replica's answer, once
    assert asked == [f"{BASE}/x"] * 3


@responses.activate
def test_without_a_remembered_answer_the_failure_stands() -> None:
    session = _session(LastGoodResponse())
    responses.get(f"{BASE}/x", body=requests.ConnectionError("refused"))
    with pytest.raises(requests.ConnectionError):
        session.get("/x")
    responses.replace(responses.GET, f"{BASE}/x", status=503)
    assert session.get("/x").status_code == 503


@responses.activate
def test_only_gets_without_credentials_and_with_small_read_bodies_are_kept() -> None:
    cache = LastGoodResponse(max_body=10)
    session = _session(cache)
    responses.post(f"{BASE}/x", json={})
    responses.get(f"{BASE}/private", json={})
    responses.get(f"{BASE}/big", body=b"x" * 11)
    responses.get(f"{BASE}/streamed", body=b"x")
    responses.get(f"{BASE}/created", status=201, body=b"ok")
    session.post("/x")
    session.get("/private", headers={"Authorization": "Bearer secret"})
    session.get("/private", cookies={"session": "s"})
    session.get("/big")
    session.get("/streamed", stream=True).close()
    session.get("/created")
    assert len(cache) == 1  # only /created


@responses.activate
def test_answers_meant_for_one_caller_are_never_kept_for_another() -> None:
    cache = LastGoodResponse()
    session = _session(cache)
    responses.get(f"{BASE}/cookie", json={}, headers={"Set-Cookie": "session=SECRET"})
    responses.get(f"{BASE}/private", json={}, headers={"Cache-Control": "private, max-age=60"})
    responses.get(f"{BASE}/no-store", json={}, headers={"Cache-Control": "No-Store"})
    responses.get(f"{BASE}/any", json={}, headers={"Vary": "Accept-Language, *"})
    responses.get(f"{BASE}/keyed", json={"who": "alice"})
    responses.get(f"{BASE}/token", json={"who": "alice"})
    for path in ("/cookie", "/private", "/no-store", "/any"):
        session.get(path)
    session.cookies.clear()
    session.get("/keyed", headers={"X-Api-Key": "alice-key"})
    session.get("/token", headers={"Proxy-Authorization": "Basic YWxpY2U6eA=="})
    session.get("/token", auth=requests.auth.HTTPDigestAuth("alice", "secret"))
    assert len(cache) == 0
    # Nor served to a request with credentials, when an anonymous call stored one.
    session.get("/token")
    responses.replace(responses.GET, f"{BASE}/token", status=503)
    assert session.get("/token", headers={"X-Api-Key": "mallory"}).status_code == 503
    assert session.get("/token").json() == {"who": "alice"}


@responses.activate
def test_the_private_headers_are_the_users_to_name() -> None:
    cache = LastGoodResponse(private_headers=["X-Tenant-Secret"])
    session = _session(cache)
    responses.get(f"{BASE}/x", json={})
    session.get("/x", headers={"X-Tenant-Secret": "t1"})
    session.get("/x", headers={"Authorization": "Bearer t"})  # always private
    assert len(cache) == 0
    session.get("/x", headers={"X-Api-Key": "k"})  # no longer in the list
    assert len(cache) == 1
    with pytest.raises(TypeError):
        LastGoodResponse(private_headers="X-Api-Key")


@responses.activate
def test_private_headers_set_later_apply_in_any_letter_case() -> None:
    cache = LastGoodResponse()
    cache.private_headers = (*cache.private_headers, "x-tenant-secret")
    session = _session(cache)
    responses.get(f"{BASE}/x", json={})
    session.get("/x", headers={"X-TENANT-SECRET": "t1"})
    session.get("/x", headers={"x-api-key": "k"})
    assert len(cache) == 0
    session.get("/x")
    assert len(cache) == 1


@responses.activate
def test_a_call_with_a_client_certificate_is_not_kept() -> None:
    cache = LastGoodResponse()
    session = _session(cache)
    responses.get(f"{BASE}/x", json={})
    session.get("/x", cert=("/nonexistent/client.pem", "/nonexistent/client.key"))
    assert len(cache) == 0


@responses.activate
def test_an_answer_that_varies_is_served_only_for_the_same_header_values() -> None:
    cache = LastGoodResponse()
    session = _session(cache)
    responses.get(f"{BASE}/x", json={"lang": "fr"}, headers={"Vary": "Accept-Language"})
    session.get("/x", headers={"Accept-Language": "fr"})
    responses.replace(responses.GET, f"{BASE}/x", status=503)
    assert session.get("/x", headers={"Accept-Language": "de"}).status_code == 503
    assert session.get("/x").status_code == 503
    assert session.get("/x", headers={"Accept-Language": "fr"}).json() == {"lang": "fr"}


@responses.activate
def test_a_redirected_call_is_answered_under_the_url_it_asked_for() -> None:
    cache = LastGoodResponse()
    session = _session(cache)
    responses.get(f"{BASE}/latest", status=302, headers={"Location": f"{BASE}/v2"})
    responses.get(f"{BASE}/v2", json={"v": 2})
    assert session.get("/latest").json() == {"v": 2}
    responses.replace(responses.GET, f"{BASE}/latest", status=503)
    stale = session.get("/latest")
    assert stale.json() == {"v": 2} and getattr(stale, "fallback", False) is True


def test_a_bad_url_or_header_of_the_callers_is_raised_without_a_fallback() -> None:
    calls: list[object] = []

    def answer(*args: object) -> None:
        calls.append(args)

    session = ServiceSession(fallback=answer)
    for url in ("htp://grn.test/", "http://", "grn.test/x"):
        with pytest.raises(requests.RequestException):
            session.get(url)
    with pytest.raises(requests.exceptions.InvalidHeader):
        session.get("http://grn.test/x", headers={"X-Bad": "a\nb"})
    assert calls == []


def test_entries_expire_and_the_least_recently_used_goes_first() -> None:
    clock = FakeClock()
    cache = LastGoodResponse(max_entries=2, max_age=10, clock=clock)

    for url in ("http://a/1", "http://a/2"):
        cache.remember(_good_answer(url))
    assert cache(requests.Request("GET", "http://a/1").prepare(), None, None) is not None
    cache.remember(_good_answer("http://a/3"))  # /2 was used least recently
    assert cache(requests.Request("GET", "http://a/2").prepare(), None, None) is None
    clock.advance(10.5)
    assert cache(requests.Request("GET", "http://a/1").prepare(), None, None) is None
    assert len(cache) == 1


@responses.activate
def test_any_function_can_be_the_fallback_and_sees_the_error() -> None:
    seen: list[tuple[str | None, type[BaseException] | None, int | None]] = []

    def answer(
        request: requests.PreparedRequest,
        error: BaseException | None,
        response: requests.Response | None,
    ) -> requests.Response | None:
        seen.append(
            (
                request.url,
                None if error is None else type(error),
                None if response is None else response.status_code,
            )
        )
        return None

    session = ServiceSession(base_url=BASE, service_name="fallback-fn", fallback=answer, retries=0)
    responses.get(f"{BASE}/down", status=503)
    responses.get(f"{BASE}/gone", body=requests.ConnectionError("x"))
    responses.get(f"{BASE}/fine", json={})
    session.get("/down")
    with pytest.raises(requests.ConnectionError):
        session.get("/gone")
    session.get("/fine")
    assert seen == [(f"{BASE}/down", None, 503), (f"{BASE}/gone", requests.ConnectionError, None)]


def test_a_session_with_the_cache_pickles_with_an_empty_one() -> None:
    cache = LastGoodResponse(max_entries=3)
    clone = pickle.loads(pickle.dumps(_session(cache)))
    assert isinstance(clone.fallback, LastGoodResponse)
    assert clone.fallback.max_entries == 3 and len(clone.fallback) == 0


@pytest.mark.parametrize(
    "settings", [{"max_entries": 0}, {"max_age": 0}, {"max_body": -1}, {"refresh_after": -1}]
)
def test_bad_cache_settings_fail_at_construction(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        LastGoodResponse(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("plain", [False, True])
def test_an_answer_is_judged_by_its_headers_in_any_letter_case_and_container(plain: bool) -> None:
    """A response hook may replace requests' headers with a plain dict."""

    def answer(headers: dict[str, str]) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response.url = f"{BASE}/x"
        response.request = requests.Request("GET", response.url).prepare()
        if plain:
            response.headers = headers  # type: ignore[assignment]
        else:
            response.headers.update(headers)
        return response

    cache = LastGoodResponse()
    cache.remember(answer({"set-COOKIE": "id=1"}))
    cache.remember(answer({"CACHE-control": "max-age=5, Private"}))
    cache.remember(answer({"vary": "*"}))
    cache.remember(answer({"content-length": str(cache.max_body + 1)}))
    assert len(cache) == 0
    cache.remember(answer({"Content-Type": "application/json", "ETag": '"7"'}))
    assert len(cache) == 1
    stale = cache(answer({}).request, requests.ConnectionError("down"), None)
    assert stale is not None
    assert dict(stale.headers) == {
        "Content-Type": "application/json",
        "ETag": '"7"',
        "Warning": FALLBACK_WARNING,
        "Age": "0",
    }


def test_credentials_stay_private_whatever_private_headers_are_set_to() -> None:
    cache = LastGoodResponse()
    cache.private_headers = ["X-Tenant-Secret"]
    assert cache.private_headers == (
        "Authorization",
        "Cookie",
        "Proxy-Authorization",
        "X-Tenant-Secret",
    )
    with pytest.raises(TypeError):
        cache.private_headers = "X-Api-Key"


@responses.activate
def test_a_cache_pickled_by_an_earlier_release_still_refuses_credentials() -> None:
    # Before private_headers became a property, a pickle kept it as an attribute.
    state = LastGoodResponse().__getstate__()
    del state["_private_headers"], state["_private_names"]
    state["private_headers"] = ("Authorization", "Cookie", "Proxy-Authorization", "X-Api-Key")
    cache = LastGoodResponse.__new__(LastGoodResponse)
    cache.__setstate__(state)
    session = _session(cache)
    responses.get(f"{BASE}/x", json={})
    session.get("/x", headers={"x-api-key": "k"})
    assert len(cache) == 0
    session.get("/x")
    assert len(cache) == 1


@responses.activate
def test_a_newer_good_answer_replaces_the_kept_one_once_that_is_refresh_after_old() -> None:
    clock = FakeClock()
    cache = LastGoodResponse(clock=clock)  # refresh_after: 1 s
    session = _session(cache)
    url = f"{BASE}/networks/n"

    def answer_then_fail(body: dict[str, int]) -> requests.Response:
        responses.replace(responses.GET, url, json=body)
        assert session.get("/networks/n").json() == body
        responses.replace(responses.GET, url, status=503, json={})
        return session.get("/networks/n")

    responses.get(url, json={})
    first = answer_then_fail({"v": 1})
    assert first.json() == {"v": 1} and first.headers["Age"] == "0"
    clock.advance(0.9)  # the kept answer is too young to replace
    assert answer_then_fail({"v": 2}).json() == {"v": 1}
    clock.advance(0.2)  # 1.1 s old now
    assert answer_then_fail({"v": 3}).json() == {"v": 3}


@responses.activate
def test_with_refresh_after_zero_every_good_answer_replaces_the_last() -> None:
    cache = LastGoodResponse(refresh_after=0, clock=FakeClock())
    assert _served_after(_session(cache), (1, 2, 3)) == {"v": 3}


@responses.activate
def test_an_answer_for_other_values_of_its_vary_headers_replaces_a_young_one() -> None:
    cache = LastGoodResponse(clock=FakeClock())
    session = _session(cache)
    responses.get(f"{BASE}/x", json={"lang": "fr"}, headers={"Vary": "Accept-Language"})
    session.get("/x", headers={"Accept-Language": "fr"})
    responses.replace(
        responses.GET, f"{BASE}/x", json={"lang": "de"}, headers={"Vary": "Accept-Language"}
    )
    session.get("/x", headers={"Accept-Language": "de"})  # no time passed
    responses.replace(responses.GET, f"{BASE}/x", status=503)
    assert session.get("/x", headers={"Accept-Language": "de"}).json() == {"lang": "de"}
    assert session.get("/x", headers={"Accept-Language": "fr"}).status_code == 503


@responses.activate
@pytest.mark.parametrize("set_later", [False, True])
def test_an_answer_is_refreshed_once_half_of_max_age_has_gone_whatever_refresh_after(
    set_later: bool,
) -> None:
    clock = FakeClock()
    cache = LastGoodResponse(max_age=60 if set_later else 1.0, clock=clock, refresh_after=30)
    if set_later:
        cache.max_age = 1.0
    session = _session(cache)
    responses.get(f"{BASE}/n", json={"v": 1})
    session.get("/n")
    clock.advance(0.6)  # past half of max_age: the next good answer replaces it
    responses.replace(responses.GET, f"{BASE}/n", json={"v": 2})
    session.get("/n")
    clock.advance(0.5)  # the first answer has expired; the second has not
    responses.replace(responses.GET, f"{BASE}/n", status=503)
    assert session.get("/n").json() == {"v": 2}


@responses.activate
def test_a_url_called_again_and_again_stays_the_most_recently_used() -> None:
    clock = FakeClock()
    cache = LastGoodResponse(max_entries=2, clock=clock)
    session = _session(cache)
    for path in ("/a", "/b", "/c"):
        responses.get(f"{BASE}{path}", json={"path": path})
    session.get("/a")
    session.get("/b")
    clock.advance(0.5)
    session.get("/a")  # too young to replace, but used: /b goes first
    session.get("/c")
    for path in ("/a", "/b", "/c"):
        responses.replace(responses.GET, f"{BASE}{path}", status=503)
    assert session.get("/a").json() == {"path": "/a"}
    assert session.get("/b").status_code == 503
    assert session.get("/c").json() == {"path": "/c"}


@responses.activate
def test_an_answer_kept_before_the_clock_went_back_is_replaced() -> None:
    clock = FakeClock(1000.0)
    steps = iter((0.0, -100.0, 10.0))  # v2 comes 100 s "before" v1, v3 10 s after v2
    served = _served_after(
        _session(LastGoodResponse(clock=clock)), (1, 2, 3), lambda: clock.advance(next(steps))
    )
    assert served == {"v": 3}


def test_the_settings_keep_their_places_for_positional_callers() -> None:
    clock = FakeClock()
    cache = LastGoodResponse(8, 60.0, 1000, clock, ("X-Tenant",))
    assert (cache.max_entries, cache.max_age, cache.max_body) == (8, 60.0, 1000)
    assert "X-Tenant" in cache.private_headers and cache.refresh_after == 1.0


@responses.activate
def test_a_cache_pickled_before_refresh_after_keeps_every_good_answer() -> None:
    state = LastGoodResponse(clock=FakeClock()).__getstate__()
    del state["refresh_after"]
    cache = LastGoodResponse.__new__(LastGoodResponse)
    cache.__setstate__(state)
    assert _served_after(_session(cache), (1, 2)) == {"v": 2}


def test_threads_keeping_finding_and_evicting_answers_leave_the_cache_whole() -> None:
    clock = FakeClock()
    cache = LastGoodResponse(max_entries=8, clock=clock, refresh_after=0.5)
    failures: list[BaseException] = []

    answers = [_good_answer(f"http://a/{index}") for index in range(24)]

    def work(offset: int) -> None:
        try:
            for turn in range(3000):
                good = answers[(turn * 7 + offset) % len(answers)]
                cache.remember(good)  # keeps, finds fresh, or evicts another
                if turn % 5 == 0:
                    clock.advance(0.1)
                assert good.request is not None
                served = cache(good.request, None, None)
                assert served is None or served.content == good.content
        except BaseException as failure:  # reported below, with the thread gone
            failures.append(failure)

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert 1 <= len(cache) <= 8

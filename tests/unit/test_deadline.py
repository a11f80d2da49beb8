"""gennet_sync.deadline and gennet_sync.deadline_flask: budgets, scopes, the Flask
step, and ServiceSession obeying them (transport mocked by ``responses``)."""

from __future__ import annotations

import gc
import pickle
import weakref

import pytest
import requests
import responses
from flask import Flask, Response, jsonify
from hypothesis import given
from hypothesis import strategies as st

from gennet_sync import GenNet
from gennet_sync.context import reset_request_id, set_request_id
from gennet_sync.deadline import (
    DEADLINE_HEADER,
    FORWARD_MARGIN,
    bind_request_deadline,
    check_deadline,
    deadline_scope,
    format_budget,
    parse_budget,
    time_left,
)
from gennet_sync.deadline_flask import Deadlines
from gennet_sync.exceptions import DeadlineExceededError, ServiceUnavailableError
from gennet_sync.http_client import ServiceSession
from gennet_sync.transport import _Deadline
from tests.support.clock import FakeClock

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

BASE = "http://grn.test"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1.5", 1.5),
        (" 2 ", 2.0),
        ("0", 0.0),
        ("0.001", 0.001),
        ("86400", 86400.0),
        ("86400.5", None),  # more than a day: not believed
        ("-1", None),
        ("1e3", None),
        ("nan", None),
        ("inf", None),
        ("", None),
        ("1.", None),
        (".5", None),
        ("\uff11", None),  # a full-width digit one
        ("9" * 10, None),
        (None, None),
    ],
)
def test_a_budget_is_plain_non_negative_seconds_and_anything_else_is_ignored(
    value: str | None, seconds: float | None
) -> None:
    assert parse_budget(value) == seconds


@given(st.floats(min_value=0, max_value=86400, allow_nan=False))
def test_a_formatted_budget_reads_back_as_at_most_the_time_left(seconds: float) -> None:
    text = format_budget(seconds)
    parsed = parse_budget(text)
    assert parsed is not None
    assert seconds - 0.001 <= parsed <= seconds


@pytest.mark.parametrize("seconds", [0.0, -3.0, float("nan")])
def test_no_time_left_is_formatted_as_zero(seconds: float) -> None:
    assert format_budget(seconds) == "0"


# One call's deadline, kept across examples: its cache of the last value sent is
# tried too (the same millisecond again, then another).
_ONE_CALL = _Deadline(30.0)


@given(st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0101, 0.0109, 1.0]))
def test_what_a_call_sends_is_what_format_budget_writes(remaining: float) -> None:
    for _ in range(2):
        assert _ONE_CALL.budget(remaining) == format_budget(remaining - FORWARD_MARGIN)


def test_a_scope_gives_its_work_the_time_left_on_the_injected_clock() -> None:
    clock = FakeClock()
    assert time_left(clock) is None
    with deadline_scope(2.0, clock):
        assert time_left(clock) == 2.0
        clock.advance(1.5)
        assert time_left(clock) == 0.5
        check_deadline(clock=clock)
        clock.advance(0.5)
        with pytest.raises(DeadlineExceededError) as raised:
            check_deadline("grn", clock=clock)
    assert time_left(clock) is None
    assert raised.value.status_code == 504
    assert raised.value.code == "DEADLINE_EXCEEDED"
    assert isinstance(raised.value, ServiceUnavailableError)


def test_an_inner_scope_cannot_extend_the_outer_deadline() -> None:
    clock = FakeClock()
    with deadline_scope(1.0, clock):
        with deadline_scope(10.0, clock):
            assert time_left(clock) == 1.0
        with deadline_scope(0.25, clock):
            assert time_left(clock) == 0.25
        assert time_left(clock) == 1.0


def test_a_scope_refuses_a_negative_budget() -> None:
    with pytest.raises(ValueError, match="seconds"):
        deadline_scope(-1)


def test_a_request_deadline_bound_outside_any_request_binds_nothing() -> None:
    bind_request_deadline(0.0)
    try:
        assert time_left() is None
    finally:
        bind_request_deadline(None)


def test_a_request_deadline_lapses_when_its_request_is_over() -> None:
    clock = FakeClock()
    token = set_request_id("first")
    try:
        bind_request_deadline(3.0, clock)
        assert time_left(clock) == 3.0
    finally:
        reset_request_id(token)
    # The thread serves nothing now, or another request: the old deadline is gone.
    assert time_left(clock) is None
    token = set_request_id("second")
    try:
        assert time_left(clock) is None
    finally:
        reset_request_id(token)
        bind_request_deadline(None)


# --------------------------------------------------------------------------- Flask side


def _app(default: float | None = None) -> Flask:
    app = Flask(__name__)
    app.config["GENNET_DEFAULT_DEADLINE"] = default
    GenNet(app)
    Deadlines(app)

    @app.get("/left")
    def left() -> Response:
        return jsonify(left=time_left())

    return app


@pytest.mark.parametrize(
    ("header", "default", "expected"),
    [
        (None, None, None),
        ("1.5", None, 1.5),
        (None, 25.0, 25.0),
        ("1.5", 25.0, 1.5),
        ("600", 25.0, 25.0),  # a caller cannot extend the app's own limit
        ("soon", 25.0, 25.0),
        ("soon", None, None),
        ("0", None, 0.0),
    ],
)
def test_a_request_gets_its_callers_budget_capped_by_the_apps_default(
    header: str | None, default: float | None, expected: float | None
) -> None:
    headers = {} if header is None else {DEADLINE_HEADER: header}
    left = _app(default).test_client().get("/left", headers=headers).get_json()["left"]
    if expected is None:
        assert left is None
    else:
        assert expected - 0.5 < left <= expected


def test_the_deadline_of_a_request_is_not_seen_by_the_next_one() -> None:
    client = _app().test_client()
    assert client.get("/left", headers={DEADLINE_HEADER: "5"}).get_json()["left"] > 4
    assert client.get("/left").get_json()["left"] is None
    assert time_left() is None  # nor by the thread once the requests are over


@pytest.mark.parametrize("bad", [-1, "25", True, float("nan")])
def test_a_bad_default_deadline_fails_at_set_up(bad: object) -> None:
    app = Flask(__name__)
    app.config["GENNET_DEFAULT_DEADLINE"] = bad
    with pytest.raises(ValueError, match="GENNET_DEFAULT_DEADLINE"):
        Deadlines(app)


def test_deadlines_set_up_twice_bind_once() -> None:
    app = _app()
    before = list(app.before_request_funcs[None])
    Deadlines(app)
    Deadlines().init_app(app)
    assert app.before_request_funcs[None] == before


# --------------------------------------------------------------------------- the session


@responses.activate
def test_a_call_with_no_time_left_is_refused_without_sending_anything() -> None:
    responses.get(f"{BASE}/x", json={})
    session = ServiceSession(base_url=BASE, service_name="deadline-refused")
    with deadline_scope(0.0), pytest.raises(DeadlineExceededError) as raised:
        session.get("/x")
    assert len(responses.calls) == 0
    error = raised.value
    # What code written for requests catches for a call that was never sent.
    assert isinstance(error, requests.ConnectTimeout)
    assert isinstance(error, requests.ConnectionError)
    assert error.to_dict()["error"]["code"] == "DEADLINE_EXCEEDED"
    assert error.metadata["service"] == "deadline-refused"
    # Not the service's failure: its breaker saw nothing.
    breaker = session.circuit_breaker
    assert breaker is not None and breaker.failure_count == 0
    assert pickle.loads(pickle.dumps(error)).code == "DEADLINE_EXCEEDED"


@responses.activate
def test_a_call_forwards_the_time_left_and_its_timeouts_are_capped_by_it() -> None:
    seen: list[tuple[str | None, object]] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        seen.append((request.headers.get(DEADLINE_HEADER), request.req_kwargs["timeout"]))  # type: ignore[attr-defined]
        return 200, {}, "{}"

    responses.add_callback(responses.GET, f"{BASE}/x", callback=answer)
    session = ServiceSession(base_url=BASE, service_name="deadline-forward")
    with deadline_scope(1.5):
        session.get("/x")
    session.get("/x")  # outside the scope: the session's own 25 s limit
    session.request("GET", "/x", total_timeout=None)  # no limit: nothing to forward
    (within, within_timeout), (own, own_timeout), (none, _) = seen
    # What is left, less the margin for the time the request takes to get there.
    assert within is not None and 1.4 < float(within) <= 1.5 - FORWARD_MARGIN
    assert isinstance(within_timeout, tuple) and max(within_timeout) <= 1.5
    assert own is not None and 24.9 < float(own) <= 25 - FORWARD_MARGIN
    assert own_timeout == (3.05, 20.0)
    assert none is None


class _Answering(requests.adapters.BaseAdapter):
    """A transport of the user's own that answers every request with an empty 200."""

    def send(  # type: ignore[override]  # requests' stubs list each keyword
        self, request: requests.PreparedRequest, **kwargs: object
    ) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response.request = request
        return response

    def close(self) -> None:
        pass


def test_a_finished_call_leaves_nothing_of_its_request_alive() -> None:
    # The watchdog keeps a finished call's deadline until its time would have come
    # (25 s by default): in a busy service, thousands of requests' headers if the
    # deadline held on to them.
    session = ServiceSession(base_url=BASE, service_name="deadline-kept")
    session.mount(BASE, _Answering())
    response = session.get("/x")
    headers = weakref.ref(response.request.headers)
    del response
    gc.collect()
    assert headers() is None


@responses.activate
def test_a_callers_own_deadline_header_is_left_alone_and_forwarding_can_be_off() -> None:
    seen: list[str | None] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        seen.append(request.headers.get(DEADLINE_HEADER))
        return 200, {}, ""

    responses.add_callback(responses.GET, f"{BASE}/x", callback=answer)
    session = ServiceSession(base_url=BASE, service_name="deadline-own")
    session.get("/x", headers={DEADLINE_HEADER: "3"})
    ServiceSession(base_url=BASE, service_name="deadline-off", forward_deadline=False).get("/x")
    assert seen == ["3", None]


def test_a_copied_or_pickled_session_keeps_its_resilience_settings() -> None:
    session = ServiceSession(
        base_url=BASE, service_name="deadline-copy", max_concurrent_calls=3, forward_deadline=False
    )
    clone = pickle.loads(pickle.dumps(session))
    assert clone.max_concurrent_calls == 3
    assert clone.forward_deadline is False
    assert clone.retry_budget == session.retry_budget
    assert clone._bulkhead is session._bulkhead  # the process's, by the service's name
    assert clone._retry_budget is session._retry_budget


def test_an_attempt_through_a_proxy_tunnel_leaves_the_requests_own_headers_alone() -> None:
    """urllib3 copies a request's headers for each attempt, except through a
    proxy's tunnel: there the connection must not take the budget off the request."""
    from requests.structures import CaseInsensitiveDict

    from gennet_sync.transport import _Deadline, _without_budget

    deadline = _Deadline(5.0, forward=True)
    own = CaseInsensitiveDict({"Accept": "*/*", DEADLINE_HEADER: "4.9"})
    deadline.request_headers = own
    sent = _without_budget(own, deadline)
    assert sent is not own and dict(sent) == {"Accept": "*/*"}
    assert own[DEADLINE_HEADER] == "4.9"  # hooks of the call still see it
    plain = _without_budget({"accept": "*/*", "REQUEST-TIMEOUT": "1"}, deadline)
    assert plain == {"accept": "*/*"}

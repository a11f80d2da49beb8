"""Defects found by the review of issue 18, each against a real server on
127.0.0.1: what a caller's budget may do to a shared breaker, calls never sent,
the bulkhead's wait under a deadline, a re-sent PreparedRequest's budget, the
retry budget spent on retries never sent, a bulkhead across a fork."""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections.abc import Iterator

import pytest
import requests
from flask import Flask, Response, request
from urllib3.util.retry import Retry

from gennet_sync import GenNet, ServiceSession
from gennet_sync.deadline import DEADLINE_HEADER, FORWARD_MARGIN, deadline_scope
from gennet_sync.deadline_flask import Deadlines
from gennet_sync.exceptions import DeadlineExceededError
from gennet_sync.fallback import LastGoodResponse
from tests.support.servers import serve_app

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")


class _Downstream:
    """A healthy service that answers ``/slow?s=`` after ``s`` seconds and counts
    the requests it receives (with their ``Request-Timeout``); ``failing``: 503."""

    def __init__(self) -> None:
        self.hits = 0
        self.budgets: list[str | None] = []
        self.failing = False
        self.release = threading.Event()
        self.app = Flask("downstream")

        @self.app.get("/slow")
        def slow() -> Response | tuple[str, int]:
            self.hits += 1
            self.budgets.append(request.headers.get(DEADLINE_HEADER))
            if self.failing:
                return "down", 503
            time.sleep(float(request.args.get("s", "0")))
            return Response("ok")

        @self.app.get("/held")
        def held() -> str:
            self.hits += 1
            self.release.wait(10)
            return "held"


@pytest.fixture
def downstream() -> Iterator[tuple[_Downstream, str]]:
    service = _Downstream()
    with serve_app(service.app) as url:
        yield service, url
    service.release.set()


def test_a_client_with_a_tiny_request_timeout_cannot_open_the_breaker_of_a_healthy_service(
    downstream: tuple[_Downstream, str],
) -> None:
    _, down_url = downstream
    session = ServiceSession(
        base_url=down_url, service_name="review-hostile", circuit_breaker_threshold=3,
        raise_errors=True,
    )  # fmt: skip
    front = Flask("front")
    GenNet(front)
    Deadlines(front)
    front.add_url_rule("/page", view_func=lambda: {"down": session.get("/slow?s=0.2").text})
    with serve_app(front) as url:
        for _ in range(6):  # twice the threshold, each cut off by the caller's budget
            cut = requests.get(f"{url}/page", headers={DEADLINE_HEADER: "0.08"}, timeout=10)
            assert cut.status_code == 504
            assert cut.json()["error"]["code"] == "DEADLINE_EXCEEDED"
        normal = requests.get(f"{url}/page", timeout=10)
    assert normal.status_code == 200, normal.text
    breaker = session.circuit_breaker
    assert breaker is not None and breaker.failure_count == 0


def test_a_timeout_of_the_sessions_own_still_counts_under_a_longer_deadline(
    downstream: tuple[_Downstream, str],
) -> None:
    _, url = downstream
    session = ServiceSession(
        base_url=url, service_name="review-own-timeout", timeout=(1, 0.1), retries=0
    )
    with deadline_scope(5.0), pytest.raises(requests.ReadTimeout):
        session.get("/slow?s=0.5")
    breaker = session.circuit_breaker
    assert breaker is not None and breaker.failure_count == 1


def test_a_failure_status_before_the_deadline_cut_still_counts(
    downstream: tuple[_Downstream, str],
) -> None:
    service, url = downstream
    service.failing = True
    retry = Retry(total=3, backoff_factor=5, status_forcelist=[503], raise_on_status=False)
    session = ServiceSession(base_url=url, service_name="review-503-cut", retries=retry)
    with deadline_scope(1.0), pytest.raises(requests.ReadTimeout):
        session.get("/slow")  # 503, retried at once, 503, then a wait past the deadline
    breaker = session.circuit_breaker
    assert breaker is not None and breaker.failure_count == 1


def test_a_call_with_less_than_the_margin_left_is_refused_and_never_counted(
    downstream: tuple[_Downstream, str],
) -> None:
    service, url = downstream
    session = ServiceSession(
        base_url=url, service_name="review-unsent", circuit_breaker_threshold=2
    )
    for _ in range(4):
        with deadline_scope(FORWARD_MARGIN * 0.75), pytest.raises(DeadlineExceededError) as refused:
            session.get("/slow")
        assert isinstance(refused.value, requests.ConnectTimeout)
    assert service.hits == 0
    breaker = session.circuit_breaker
    assert breaker is not None and breaker.failure_count == 0
    assert session.get("/slow").status_code == 200


def test_the_wait_for_a_bulkhead_slot_ends_at_the_deadline_and_is_no_breaker_failure(
    downstream: tuple[_Downstream, str],
) -> None:
    service, url = downstream
    session = ServiceSession(
        base_url=url, service_name="review-bulkhead-wait", max_concurrent_calls=1,
        bulkhead_max_wait=5.0,
    )  # fmt: skip
    holder = threading.Thread(target=session.get, args=("/held",))
    holder.start()
    try:
        while service.hits == 0:
            time.sleep(0.01)
        started = time.monotonic()
        with deadline_scope(0.3), pytest.raises(DeadlineExceededError) as refused:
            session.get("/slow")
        waited = time.monotonic() - started
    finally:
        service.release.set()
        holder.join(10)
    assert waited < 2.0  # the slot's 5 s wait would have taken far longer
    assert isinstance(refused.value, requests.ConnectTimeout)
    assert service.hits == 1
    breaker = session.circuit_breaker
    assert breaker is not None and breaker.failure_count == 0


def test_a_prepared_request_sent_again_forwards_the_time_left_then(
    downstream: tuple[_Downstream, str],
) -> None:
    service, url = downstream
    session = ServiceSession(base_url=url, service_name="review-resend")
    prepared = session.prepare_request(requests.Request("GET", f"{url}/slow"))
    with deadline_scope(10.0):
        session.send(prepared)
    assert DEADLINE_HEADER not in prepared.headers  # the caller's object is left as it was
    with deadline_scope(0.5):
        session.send(prepared)
    first, second = service.budgets
    assert first is not None and 9.5 < float(first) <= 10
    assert second is not None and float(second) <= 0.5 - FORWARD_MARGIN


def test_a_callers_own_budget_is_sent_only_when_smaller_than_the_time_left(
    downstream: tuple[_Downstream, str],
) -> None:
    service, url = downstream
    session = ServiceSession(base_url=url, service_name="review-callers-budget")
    with deadline_scope(1.0):
        session.get("/slow", headers={DEADLINE_HEADER: "0.25"})
        session.get("/slow", headers={DEADLINE_HEADER: "30"})
    smaller, larger = service.budgets
    assert smaller == "0.25"
    assert larger is not None and float(larger) <= 1.0 - FORWARD_MARGIN


def test_a_retry_the_deadline_stops_is_given_back_to_the_retry_budget(
    downstream: tuple[_Downstream, str],
) -> None:
    service, url = downstream
    service.failing = True
    retry = Retry(total=3, backoff_factor=5, status_forcelist=[503], raise_on_status=False)
    session = ServiceSession(
        base_url=url, service_name="review-refund", retries=retry, circuit_breaker_threshold=1000
    )
    for _ in range(5):
        with deadline_scope(1.0), pytest.raises(requests.ReadTimeout):
            session.get("/slow")
    budget = session._retry_budget
    assert budget is not None
    sent_retries = service.hits - 5
    assert sent_retries == 5  # the first retry of each call goes at once, the second waits
    assert budget.retries == sent_retries


def test_a_forked_child_does_not_inherit_the_slots_its_parents_threads_hold(
    downstream: tuple[_Downstream, str],
) -> None:
    service, url = downstream
    session = ServiceSession(base_url=url, service_name="review-fork", max_concurrent_calls=1)
    holder = threading.Thread(target=session.get, args=("/held",))
    holder.start()
    try:
        while service.hits == 0:
            time.sleep(0.01)
        with warnings.catch_warnings():
            # Python 3.12 warns of fork() in a process with threads: this test is about that.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: its parent's slot is not its own
            status = 1
            try:
                status = 0 if session.get("/slow").status_code == 200 else 1
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
    finally:
        service.release.set()
        holder.join(10)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_last_good_response_never_gives_one_callers_answer_to_another() -> None:
    state = {"down": False}
    app = Flask("private")

    @app.get("/me")
    def me() -> Response | tuple[str, int]:
        if state["down"]:
            return "down", 503
        answer = Response(json.dumps({"who": request.headers.get("X-Api-Key", "anon")}))
        answer.headers["Set-Cookie"] = "session=SECRET-OF-FIRST-CALLER; HttpOnly"
        answer.headers["Cache-Control"] = "private, no-store"
        return answer

    @app.get("/keyed")
    def keyed() -> Response | tuple[str, int]:
        if state["down"]:
            return "down", 503
        return Response(json.dumps({"who": request.headers.get("X-Api-Key", "anon")}))

    session = ServiceSession(
        service_name="review-private", fallback=LastGoodResponse(), retries=0,
        circuit_breaker_threshold=1000,
    )  # fmt: skip
    with serve_app(app) as url:
        session.get(f"{url}/me")
        session.cookies.clear()
        session.get(f"{url}/keyed", headers={"X-Api-Key": "alice-key"})
        state["down"] = True
        other = session.get(f"{url}/me")
        mallory = session.get(f"{url}/keyed", headers={"X-Api-Key": "mallory"})
    assert other.status_code == 503 and "Set-Cookie" not in other.headers
    assert mallory.status_code == 503 and "alice" not in mallory.text


def test_each_attempt_sends_one_request_timeout_with_the_time_left_then() -> None:
    """The connection writes each attempt's budget itself: exactly one header line,
    a retry's no larger than the attempt before, the request's own headers intact."""
    seen: list[tuple[str | None, str | None]] = []
    app = Flask("attempts")

    @app.get("/flaky")
    def flaky() -> tuple[str, int]:
        # Repeated header lines reach a WSGI app joined by commas: one value, one line.
        seen.append((request.headers.get(DEADLINE_HEADER), request.headers.get("X-Mine")))
        return ("down", 503) if len(seen) < 3 else ("ok", 200)

    retry = Retry(total=3, backoff_factor=0.05, status_forcelist=[503], raise_on_status=False)
    with serve_app(app) as url:
        session = ServiceSession(base_url=url, service_name="attempt-budgets", retries=retry)
        with deadline_scope(5.0):
            answer = session.get("/flaky", headers={"X-Mine": "kept"})
        # Without a deadline in force, the session's own total limit is forwarded.
        session.get("/flaky", headers={"X-Mine": "kept"})
    assert answer.status_code == 200
    budgets = [float(budget) for budget, _ in seen if budget is not None]
    assert len(budgets) == len(seen) == 4
    first, second, third, own = budgets
    assert 4.5 < first <= 5.0 - FORWARD_MARGIN
    assert third <= second <= first  # each retry tells what is left by then
    assert first - third >= 0.05  # the backoff sleeps came off the budget
    assert 20 < own <= session.total_timeout - FORWARD_MARGIN  # type: ignore[operator]
    assert all(mine == "kept" for _, mine in seen)
    # The caller's request is left without ours.
    assert DEADLINE_HEADER not in answer.request.headers


def test_a_callers_budget_with_a_line_break_cannot_end_the_headers_early() -> None:
    """A value set on a PreparedRequest skips requests' header checks; the budget the
    connection writes is the number parsed, never the raw text."""
    seen: list[tuple[str | None, str | None]] = []
    app = Flask("line-break")

    @app.get("/x")
    def x() -> str:
        seen.append((request.headers.get(DEADLINE_HEADER), request.headers.get("X-After")))
        return "ok"

    with serve_app(app) as url:
        session = ServiceSession(base_url=url, service_name="line-break")
        prepared = session.prepare_request(requests.Request("GET", f"{url}/x"))
        prepared.headers[DEADLINE_HEADER] = "0.25\r\n"
        prepared.headers["X-After"] = "still a header"
        with deadline_scope(5.0):
            assert session.send(prepared).status_code == 200
    assert seen == [("0.25", "still a header")]
    assert prepared.headers[DEADLINE_HEADER] == "0.25\r\n"  # the caller's own, given back


def _recording_budgets(name: str) -> tuple[Flask, list[str | None]]:
    """An app that records the ``Request-Timeout`` of every request it receives."""
    app = Flask(name)
    seen: list[str | None] = []

    @app.before_request
    def record() -> None:
        seen.append(request.headers.get(DEADLINE_HEADER))

    return app, seen


def test_every_hop_of_a_redirected_call_is_given_back_without_the_budget() -> None:
    app, seen = _recording_budgets("redirects")

    @app.get("/start")
    def start() -> Response:
        return Response(status=302, headers={"Location": "/end"})

    @app.get("/end")
    def end() -> str:
        return "ok"

    with serve_app(app) as url:
        session = ServiceSession(base_url=url, service_name="redirect-budget")
        with deadline_scope(5.0):
            answer = session.get("/start")
    assert answer.status_code == 200 and len(answer.history) == 1
    assert all(budget is not None and float(budget) <= 5.0 for budget in seen) and len(seen) == 2
    for hop in (*answer.history, answer):
        assert hop.request is not None and DEADLINE_HEADER not in hop.request.headers


def test_a_callers_budget_in_plain_dict_headers_comes_back_as_it_was_given() -> None:
    app, seen = _recording_budgets("plain-dict")

    @app.get("/x")
    def x() -> str:
        return "ok"

    with serve_app(app) as url:
        session = ServiceSession(base_url=url, service_name="plain-dict-budget")
        prepared = session.prepare_request(requests.Request("GET", f"{url}/x"))
        given = {**prepared.headers, "request-TIMEOUT": "1"}
        prepared.headers = dict(given)  # type: ignore[assignment]
        with deadline_scope(5.0):
            session.send(prepared)
        with deadline_scope(0.5):
            session.send(prepared)
    assert prepared.headers == given  # one entry, its own name, its own value
    assert seen[0] == "1"
    assert seen[1] is not None and float(seen[1]) <= 0.5 - FORWARD_MARGIN

"""Deadlines, bulkheads and retry budgets with real parts: a chain of three
services under gunicorn, a front service under gunicorn with 32 callers, and a
failing server that counts what it receives."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, jsonify
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from examples.launcher import ServiceProcess
from gennet_sync import GenNet, ServiceSession
from gennet_sync.deadline import DEADLINE_HEADER, deadline_scope
from gennet_sync.exceptions import DeadlineExceededError
from gennet_sync.fallback import FALLBACK_WARNING, LastGoodResponse
from gennet_sync.http_client import make_retry
from gennet_sync.retry_budget import RetryBudgetConfig
from tests.support.retry_budget_workers import FailingService
from tests.support.servers import serve_app

# --------------------------------------------------------------------------- deadlines


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Three services under gunicorn, each calling the next; the first gives a
    request 2 s unless its caller gives less.  Yields the first's URL and the log."""
    logs = tmp_path_factory.mktemp("chain")
    log = logs / "events.jsonl"
    third = ServiceProcess(
        "chain-3", "tests.support.resilience_apps:chain_app()", logs, workers=1,
        env={"CHAIN_LOG": str(log)},
    )  # fmt: skip
    second = ServiceProcess(
        "chain-2", "tests.support.resilience_apps:chain_app()", logs, workers=1,
        env={"CHAIN_LOG": str(log), "CHAIN_NEXT": third.base_url},
    )  # fmt: skip
    first = ServiceProcess(
        "chain-1", "tests.support.resilience_apps:chain_app()", logs, workers=1,
        env={"CHAIN_LOG": str(log), "CHAIN_NEXT": second.base_url, "CHAIN_DEFAULT_DEADLINE": "2"},
    )  # fmt: skip
    with third, second, first:
        yield first.base_url, log


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def _run_through_chain(log: Path, call: Any) -> tuple[requests.Response, list[dict[str, Any]]]:
    log.write_text("", encoding="utf-8")
    response = call()
    # Whatever the third link would still do, it would do within 5 s of starting.
    time.sleep(3.5)
    return response, _events(log)


def _assert_third_stopped_in_time(events: list[dict[str, Any]], budget: float) -> None:
    starts = {event["service"]: event for event in events if event["event"] == "start"}
    assert set(starts) == {"chain-1", "chain-2", "chain-3"}, events
    first_deadline = starts["chain-1"]["at"] + starts["chain-1"]["left"]
    # Each hop forwards what is left of its own budget: less at every hop.
    assert budget - 0.5 < starts["chain-1"]["left"] <= budget
    assert starts["chain-3"]["left"] < starts["chain-2"]["left"] < starts["chain-1"]["left"]
    assert starts["chain-3"]["at"] + starts["chain-3"]["left"] <= first_deadline
    steps = [event["at"] for event in events if event["event"] == "step"]
    assert len(steps) > 10, "the third service did not work at all"
    # Without deadlines it works 5 s; with them, never past the first's deadline
    # (a step may end one scheduler tick after its own deadline, which comes
    # before the first's by the time the hops took).
    assert max(steps) <= first_deadline + 0.01, (max(steps) - first_deadline, steps[-3:])


@pytest.mark.parametrize(
    ("header", "budget"), [(None, 2.0), ("1.2", 1.2)], ids=["default", "caller"]
)
def test_the_third_service_of_a_chain_never_works_past_the_first_ones_deadline(
    chain: tuple[str, Path], header: str | None, budget: float
) -> None:
    url, log = chain
    headers = {} if header is None else {DEADLINE_HEADER: header}
    response, events = _run_through_chain(
        log, lambda: requests.get(f"{url}/work", headers=headers, timeout=30)
    )
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    _assert_third_stopped_in_time(events, budget)


def test_a_job_outside_any_request_gives_the_chain_its_own_deadline(
    chain: tuple[str, Path],
) -> None:
    url, log = chain
    session = ServiceSession(base_url=url, service_name="chain-job", raise_errors=True)

    def call() -> Exception:
        with deadline_scope(1.0), pytest.raises(DeadlineExceededError) as raised:
            session.get("/work")
        return raised.value

    error, events = _run_through_chain(log, call)
    # The third service's own answer, passed back up the chain as it was.
    assert isinstance(error, DeadlineExceededError)
    assert error.code == "DEADLINE_EXCEEDED"
    _assert_third_stopped_in_time(events, 1.0)


# --------------------------------------------------------------------------- bulkheads


class _HeldDownstream:
    """A downstream whose ``/slow`` calls wait until the test lets them go."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.app = Flask("held")
        self.app.add_url_rule("/slow", view_func=self.slow)

    def slow(self) -> Response:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.release.wait(timeout=60)
            return jsonify(ok=True)
        finally:
            with self.lock:
                self.in_flight -= 1


def _wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    stop = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < stop, f"gave up waiting: {what}"
        time.sleep(0.01)


def test_a_bulkhead_of_4_keeps_32_callers_of_a_slow_service_from_taking_every_thread(
    tmp_path: Path,
) -> None:
    downstream = _HeldDownstream()
    with serve_app(downstream.app) as downstream_url:
        front = ServiceProcess(
            "front", "tests.support.resilience_apps:front_app()", tmp_path, workers=1, threads=40,
            env={"DOWNSTREAM_URL": downstream_url, "BULKHEAD": "4",
                 "FRONT_LOG": str(tmp_path / "front.jsonl")},
        )  # fmt: skip
        with front:
            answers: list[tuple[int, dict[str, Any], str | None]] = []
            start = threading.Barrier(32)

            def caller() -> None:
                start.wait()
                response = requests.get(f"{front.base_url}/slow", timeout=60)
                answers.append(
                    (response.status_code, response.json(), response.headers.get("Retry-After"))
                )

            threads = [threading.Thread(target=caller) for _ in range(32)]
            for thread in threads:
                thread.start()
            try:
                # 28 refusals come back while the 4 admitted calls are still held.
                _wait_until(lambda: len(answers) >= 28 and downstream.in_flight == 4, "refusals")
                assert len(answers) == 28 and not downstream.release.is_set()
                health = requests.get(f"{front.base_url}/health", timeout=10)
                assert health.status_code == 200  # the front still has threads for the rest
            finally:
                downstream.release.set()
                for thread in threads:
                    thread.join(timeout=60)
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 4 + [503] * 28
    for status, body, retry_after in answers:
        if status == 503:
            assert body["error"]["code"] == "BULKHEAD_FULL"
            assert body["error"]["metadata"]["service"] == "slow-downstream"
            assert retry_after == "1"
    assert downstream.most_in_flight == 4


# --------------------------------------------------------------------------- retry budgets


CALLS = 100
RETRIES = 3


@pytest.fixture
def failing() -> Iterator[tuple[FailingService, str]]:
    downstream = FailingService()
    with serve_app(downstream.app) as url:
        yield downstream, url


def _calls_through(session: requests.Session, url: str) -> None:
    for _ in range(CALLS):
        assert session.get(f"{url}/x", timeout=10).status_code == 503


def test_plain_urllib3_retries_multiply_the_load_on_a_failing_service(
    failing: tuple[FailingService, str],
) -> None:
    downstream, url = failing
    plain = requests.Session()
    retry = Retry(total=RETRIES, status_forcelist=[503], backoff_factor=0, raise_on_status=False)
    plain.mount("http://", HTTPAdapter(max_retries=retry))
    _calls_through(plain, url)
    assert downstream.received == (1 + RETRIES) * CALLS


@pytest.mark.parametrize(
    ("config", "most"),
    [
        (RetryBudgetConfig(ratio=0.2, min_per_second=0), int(1.2 * CALLS)),
        # The default: 20% plus one retry a second over the 10 s window.
        (RetryBudgetConfig(), int(1.2 * CALLS) + 10),
        (None, (1 + RETRIES) * CALLS),
    ],
    ids=["20%", "default", "no-budget"],
)
def test_a_retry_budget_bounds_the_load_on_a_failing_service(
    failing: tuple[FailingService, str], config: RetryBudgetConfig | None, most: int
) -> None:
    downstream, url = failing
    session = ServiceSession(
        base_url=url,
        service_name=f"budget-{uuid.uuid4().hex}",
        use_circuit_breaker=False,  # the budget alone, not the breaker, bounds the load
        retries=make_retry(RETRIES, backoff_factor=0, backoff_jitter=0),
        retry_budget=config,
    )
    _calls_through(session, "")
    if config is None:
        assert downstream.received == most
    else:
        assert CALLS < downstream.received <= most


# --------------------------------------------------------------------------- fallbacks


def test_the_last_good_response_answers_while_the_service_is_down_and_its_breaker_open() -> None:
    app = Flask("networks")
    GenNet(app)
    app.add_url_rule("/networks/abc", view_func=lambda: jsonify(id="abc", nodes=["p", "q"]))
    session = ServiceSession(
        service_name=f"fallback-{uuid.uuid4().hex}",
        fallback=LastGoodResponse(),
        raise_errors=True,
        circuit_breaker_threshold=2,
    )
    with serve_app(app) as url:
        fresh = session.get(f"{url}/networks/abc")
    # The server is gone: refused connections, then the open breaker.
    for _ in range(4):
        stale = session.get(f"{url}/networks/abc")
        assert stale.json() == fresh.json()
        assert stale.headers["Warning"] == FALLBACK_WARNING
    breaker = session.circuit_breaker
    assert breaker is not None and breaker.state.value == "open"
    with pytest.raises(requests.ConnectionError):  # nothing remembered for it
        session.get(f"{url}/networks/other")

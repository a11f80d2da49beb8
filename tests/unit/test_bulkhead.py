"""gennet_sync.bulkhead: slots, refusals, waiting, and ServiceSession's bulkhead
(transport mocked by ``responses``)."""

from __future__ import annotations

import threading

import pytest
import requests
import responses

from gennet_sync.bulkhead import Bulkhead, get_bulkhead, remove_bulkhead
from gennet_sync.exceptions import BulkheadFullError, ServiceUnavailableError
from gennet_sync.http_client import ServiceSession

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

BASE = "http://grn.test"


def test_calls_beyond_the_limit_are_refused_with_a_503_and_retry_after() -> None:
    bulkhead = Bulkhead("grn", max_concurrent_calls=2)
    bulkhead.acquire()
    bulkhead.acquire()
    with pytest.raises(BulkheadFullError) as raised:
        bulkhead.acquire()
    error = raised.value
    assert isinstance(error, ServiceUnavailableError)
    assert (error.status_code, error.code) == (503, "BULKHEAD_FULL")
    assert error.headers == {"Retry-After": "1"}
    assert error.metadata == {"service": "grn", "retry_after": 1, "max_concurrent_calls": 2}
    assert (bulkhead.in_flight, bulkhead.admitted, bulkhead.rejected, bulkhead.peak) == (2, 2, 1, 2)
    bulkhead.release()
    bulkhead.acquire()  # a freed slot is taken again
    assert bulkhead.in_flight == 2


def test_a_decorated_function_and_a_with_block_give_their_slot_back_even_when_they_raise() -> None:
    bulkhead = Bulkhead("grn", max_concurrent_calls=1)

    @bulkhead
    def fail() -> None:
        assert bulkhead.in_flight == 1
        raise KeyError("x")

    with pytest.raises(KeyError):
        fail()
    with pytest.raises(KeyError), bulkhead:
        raise KeyError("y")
    assert bulkhead.in_flight == 0
    assert fail.__name__ == "fail"


def test_a_call_inside_a_full_bulkhead_is_refused_not_deadlocked() -> None:
    bulkhead = Bulkhead("grn", max_concurrent_calls=1)
    with bulkhead, pytest.raises(BulkheadFullError):
        bulkhead.acquire()
    assert bulkhead.in_flight == 0


def test_with_max_wait_a_call_takes_the_slot_freed_while_it_waits() -> None:
    bulkhead = Bulkhead("grn", max_concurrent_calls=1, max_wait=60)
    bulkhead.acquire()
    admitted = threading.Event()

    def waiter() -> None:
        bulkhead.acquire()
        admitted.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    while not bulkhead._waiters:  # the waiter is parked on its condition
        threading.Event().wait(0.001)
    assert not admitted.is_set()
    bulkhead.release()
    thread.join(timeout=30)
    assert admitted.is_set()
    assert (bulkhead.in_flight, bulkhead.rejected) == (1, 0)


def test_a_freed_slot_goes_to_the_oldest_waiter_not_to_a_call_arriving_later() -> None:
    bulkhead = Bulkhead("grn", max_concurrent_calls=1, max_wait=60)
    bulkhead.acquire()
    order: list[str] = []

    def waiter(name: str) -> None:
        bulkhead.acquire()
        order.append(name)
        bulkhead.release()

    first = threading.Thread(target=waiter, args=("first",))
    first.start()
    while len(bulkhead._waiters) < 1:
        threading.Event().wait(0.001)
    second = threading.Thread(target=waiter, args=("second",))
    second.start()
    while len(bulkhead._waiters) < 2:
        threading.Event().wait(0.001)
    # A newcomer that does not wait is refused while others queue for the slot.
    with pytest.raises(BulkheadFullError):
        bulkhead.acquire(timeout=0)
    bulkhead.release()
    first.join(timeout=30)
    second.join(timeout=30)
    assert order == ["first", "second"]
    assert (bulkhead.in_flight, bulkhead.admitted, bulkhead.rejected) == (0, 3, 1)


def test_a_wait_for_a_slot_is_cut_to_the_timeout_given() -> None:
    bulkhead = Bulkhead("grn", max_concurrent_calls=1, max_wait=60)
    bulkhead.acquire()
    with pytest.raises(BulkheadFullError):
        bulkhead.acquire(timeout=0.01)  # would hang for a minute if max_wait held
    assert not bulkhead._waiters and bulkhead.in_flight == 1


def test_threads_never_hold_more_slots_than_allowed_and_every_call_is_counted() -> None:
    bulkhead = Bulkhead("grn", max_concurrent_calls=4)
    start = threading.Barrier(32)
    over: list[int] = []

    def worker() -> None:
        start.wait()
        for _ in range(200):
            try:
                with bulkhead:
                    if bulkhead.in_flight > 4:
                        over.append(bulkhead.in_flight)
            except BulkheadFullError:
                pass

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert over == []
    assert bulkhead.admitted + bulkhead.rejected == 32 * 200
    assert bulkhead.in_flight == 0
    assert bulkhead.peak <= 4


def test_releasing_more_than_acquired_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="released more often"):
        Bulkhead("grn", 1).release()


@pytest.mark.parametrize(
    ("limit", "wait"), [(0, 0), (-1, 0), (True, 0), (1, -1), (1, float("nan"))]
)
def test_bad_settings_fail_at_construction(limit: int, wait: float) -> None:
    with pytest.raises(ValueError):
        Bulkhead("grn", limit, wait)


def test_the_registry_gives_one_bulkhead_per_service_and_refuses_other_settings() -> None:
    try:
        first = get_bulkhead("bulkhead-registry", 3)
        assert get_bulkhead("bulkhead-registry", 3, 0) is first
        with pytest.raises(ValueError, match="max_concurrent_calls=3"):
            get_bulkhead("bulkhead-registry", 4)
    finally:
        remove_bulkhead("bulkhead-registry")


@responses.activate
def test_a_session_refuses_a_call_past_its_bulkhead_as_a_connection_error_before_the_breaker() -> (
    None
):
    session = ServiceSession(base_url=BASE, service_name="bulkhead-session", max_concurrent_calls=1)
    refusals: list[BaseException] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        # The first call holds the only slot: a second one (another thread's, or
        # this hook's) is refused at once.
        try:
            session.get("/inner")
        except BulkheadFullError as error:
            refusals.append(error)
        return 200, {}, "{}"

    responses.add_callback(responses.GET, f"{BASE}/outer", callback=answer)
    responses.get(f"{BASE}/inner", json={})
    assert session.get("/outer").status_code == 200
    (refusal,) = refusals
    assert isinstance(refusal, requests.ConnectionError)
    assert refusal.to_dict()["error"]["code"] == "BULKHEAD_FULL"  # type: ignore[attr-defined]
    assert [call.request.url for call in responses.calls] == [f"{BASE}/outer"]
    breaker = session.circuit_breaker
    assert breaker is not None and breaker.failure_count == 0
    assert session._bulkhead is not None and session._bulkhead.in_flight == 0
    session.get("/inner")  # the slot is free again


@responses.activate
def test_a_slot_is_given_back_when_the_breaker_refuses_the_call() -> None:
    session = ServiceSession(base_url=BASE, service_name="bulkhead-breaker", max_concurrent_calls=1)
    breaker = session.circuit_breaker
    assert breaker is not None
    breaker.open()
    for _ in range(3):
        with pytest.raises(requests.ConnectionError, match=r"(?i)circuit"):
            session.get("/x")
    assert session._bulkhead is not None and session._bulkhead.in_flight == 0


def test_sessions_for_one_service_share_its_bulkhead() -> None:
    first = ServiceSession(base_url=BASE, service_name="bulkhead-shared", max_concurrent_calls=2)
    second = ServiceSession(base_url=BASE, service_name="bulkhead-shared", max_concurrent_calls=2)
    assert first._bulkhead is second._bulkhead
    with pytest.raises(ValueError, match="bulkhead"):
        ServiceSession(base_url=BASE, service_name="bulkhead-shared", max_concurrent_calls=5)
    assert ServiceSession(base_url=BASE, service_name="bulkhead-none")._bulkhead is None

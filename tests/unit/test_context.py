"""Request-ID context shared by the Flask side and the requests side."""

from __future__ import annotations

import logging
import threading

import pytest

from gennet_sync.context import (
    RequestIdFilter,
    current_request_id,
    is_valid_request_id,
    new_request_id,
    reset_request_id,
    set_request_id,
)


@pytest.mark.parametrize("value", ["a", "A-b_c.9", "x" * 128, new_request_id()])
def test_sane_ids_are_valid(value: str) -> None:
    assert is_valid_request_id(value)


@pytest.mark.parametrize("value", [None, "", "x" * 129, "a b", "a\nb", "ü", "a/b", "a;b"])
def test_insane_ids_are_rejected(value: str | None) -> None:
    assert not is_valid_request_id(value)


def test_new_ids_are_unique_and_valid() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_valid_request_id(i) for i in ids)


def test_binding_is_per_thread_and_reset_restores_the_previous_id() -> None:
    token = set_request_id("outer")
    seen_in_thread: list[str | None] = []
    thread = threading.Thread(target=lambda: seen_in_thread.append(current_request_id()))
    thread.start()
    thread.join()
    assert seen_in_thread == [None]
    assert current_request_id() == "outer"
    reset_request_id(token)
    assert current_request_id() is None


def test_log_filter_stamps_records_with_the_current_id() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    log_filter = RequestIdFilter()
    assert log_filter.filter(record)
    assert getattr(record, "request_id", None) == "-"
    token = set_request_id("req-7")
    try:
        fresh = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
        log_filter.filter(fresh)
        assert getattr(fresh, "request_id", None) == "req-7"
    finally:
        reset_request_id(token)


def test_log_filter_keeps_an_id_the_caller_put_on_the_record() -> None:
    # Code logging after the request context is gone passes the ID itself
    # (extra={"request_id": ...}); the filter must not replace it with "-".
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "msg", None, None)
    record.request_id = "req-from-environ"
    token = set_request_id("req-other")
    try:
        assert RequestIdFilter().filter(record)
    finally:
        reset_request_id(token)
    assert getattr(record, "request_id", None) == "req-from-environ"


@pytest.mark.parametrize("value", ["abc\n", "abc\r\n", "\nabc"])
def test_ids_with_a_line_break_anywhere_are_rejected(value: str) -> None:
    # A header value ending in a newline would split the response's headers.
    assert not is_valid_request_id(value)

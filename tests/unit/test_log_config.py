"""gennet_sync.log_config: IDs on every record, one JSON object per line, a ready config."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.test.globals_test import reset_trace_globals

from gennet_sync.context import reset_request_id, set_request_id
from gennet_sync.log_config import JsonFormatter, TraceContextFilter, logging_config


@pytest.fixture
def tracer() -> Iterator[trace.Tracer]:
    reset_trace_globals()
    provider = TracerProvider()
    trace.set_tracer_provider(provider)
    yield trace.get_tracer("test")
    reset_trace_globals()


def _record(message: str = "hello", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("app", logging.WARNING, __file__, 1, message, args or None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def _line(record: logging.LogRecord, service: str = "svc") -> dict[str, object]:
    TraceContextFilter().filter(record)
    text = JsonFormatter(service).format(record)
    assert "\n" not in text
    line: dict[str, object] = json.loads(text)
    return line


def test_outside_a_request_and_a_span_the_ids_are_dashes() -> None:
    line = _line(_record())
    assert list(line)[:8] == [
        "time",
        "level",
        "service",
        "logger",
        "request_id",
        "trace_id",
        "span_id",
        "message",
    ]
    assert (line["request_id"], line["trace_id"], line["span_id"]) == ("-", "-", "-")
    assert (line["level"], line["service"], line["message"]) == ("WARNING", "svc", "hello")


def test_inside_a_span_and_a_request_the_ids_are_on_the_line(tracer: trace.Tracer) -> None:
    token = set_request_id("req-9")
    try:
        with tracer.start_as_current_span("work") as span:
            line = _line(_record())
    finally:
        reset_request_id(token)
    context = span.get_span_context()
    assert line["request_id"] == "req-9"
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_a_gunicorn_access_line_takes_the_ids_the_request_left_in_its_environ() -> None:
    atoms = {
        "{gennet_sync.request_id}e": "req-7",
        "{gennet_sync.trace_id}e": "ab" * 16,
        "{gennet_sync.span_id}e": "cd" * 8,
        "s": "200",
    }
    line = _line(_record("%(s)s", atoms))
    assert (line["request_id"], line["trace_id"], line["span_id"]) == ("req-7", "ab" * 16, "cd" * 8)
    assert line["message"] == "200"


def test_a_traceback_and_hostile_text_stay_on_one_line() -> None:
    try:
        raise ValueError("bad\nline")
    except ValueError:
        record = logging.LogRecord(
            "app", logging.ERROR, __file__, 1, 'forged\n{"level": "INFO"}', None, sys.exc_info()
        )
    line = _line(record)
    assert line["message"] == 'forged\n{"level": "INFO"}'
    assert "ValueError: bad\nline" in str(line["exception"])


def test_extra_fields_are_kept_and_unencodable_values_are_text() -> None:
    class Weird:
        def __str__(self) -> str:
            raise RuntimeError("no")

    line = _line(_record(user="ana", when={1, 2}, weird=Weird(), gennet_escape_traceback=True))
    assert line["user"] == "ana"
    assert line["when"] == "{1, 2}"
    assert line["weird"] == "Weird"
    assert "gennet_escape_traceback" not in line


def test_a_value_json_cannot_write_strictly_is_text_and_the_record_is_kept() -> None:
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    line = _line(
        _record(
            by_pair={(1, 2): "x"},  # a key json.dumps refuses
            cycle=cycle,
            ratio=float("nan"),  # bare NaN is no JSON
            limit=float("inf"),
            fine=[1, "a"],
        )
    )
    assert line["message"] == "hello"
    assert line["by_pair"] == "{(1, 2): 'x'}"
    assert line["cycle"] == "{'self': {...}}"
    assert (line["ratio"], line["limit"]) == ("nan", "inf")
    assert line["fine"] == [1, "a"]


def test_an_extra_field_named_like_a_key_of_the_line_is_kept_under_its_own_name() -> None:
    line = _line(_record(service="billing", level="debug", time="then"), service="svc")
    assert (line["service"], line["level"]) == ("svc", "WARNING")
    assert line["extra.service"] == "billing"
    assert line["extra.level"] == "debug"
    assert line["extra.time"] == "then"


def test_unicode_line_separators_are_escaped() -> None:
    record = _record("one\u2028two\u2029three\x85four", note="a\u2028b")
    TraceContextFilter().filter(record)
    text = JsonFormatter("svc").format(record)
    assert len(text.splitlines()) == 1  # str.splitlines splits on all three
    for separator in ("\u2028", "\u2029", "\x85"):
        assert separator not in text
    line = json.loads(text)
    assert line["message"] == "one\u2028two\u2029three\x85four"
    assert line["note"] == "a\u2028b"


def test_a_message_whose_arguments_do_not_fit_is_still_written() -> None:
    line = _line(_record("%s and %s", "only one"))
    assert "%s and %s" in str(line["message"])
    assert "only one" in str(line["message"])


def test_the_ready_config_writes_json_lines_for_the_root_and_gunicorn_loggers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    loggers = [logging.getLogger(name) for name in ("", "gunicorn.error", "gunicorn.access")]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    try:
        logging.config.dictConfig(logging_config("svc", level="INFO"))
        logging.getLogger("examples.anything").info("from the app")
        logging.getLogger("gunicorn.error").warning("from gunicorn")
        logging.getLogger("examples.anything").debug("below the level")
    finally:
        for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert [(line["logger"], line["message"], line["service"]) for line in lines] == [
        ("examples.anything", "from the app", "svc"),
        ("gunicorn.error", "from gunicorn", "svc"),
    ]


def test_the_text_config_has_the_same_fields() -> None:
    config = logging_config("svc", json_lines=False)
    text = config["formatters"]["gennet"]["format"]
    for field in ("%(request_id)s", "%(trace_id)s", "%(levelname)s", "%(message)s", "svc"):
        assert field in text

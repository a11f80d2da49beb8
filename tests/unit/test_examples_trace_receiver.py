"""examples.trace_receiver.span_tree: a trace's spans as the demo prints them."""

from __future__ import annotations

from examples.trace_receiver import ReceivedSpan, span_tree


def _span(name: str, span_id: str, parent: str, start: int, **attributes: object) -> ReceivedSpan:
    return ReceivedSpan(
        service="svc",
        instance="i",
        name=name,
        kind=2 if not parent or parent == "aa" * 8 else 3,
        trace_id="t" * 32,
        span_id=span_id,
        parent_span_id=parent,
        status_code=2 if attributes.get("error.type") else 0,
        attributes=dict(attributes),
        start_ns=start,
        end_ns=start + 1_500_000,
    )


def test_children_are_indented_under_their_parent_in_start_order() -> None:
    root = _span("POST /x", "01" * 8, "", 0, **{"http.response.status_code": 503})
    second = _span("POST", "03" * 8, "01" * 8, 20, **{"error.type": "CircuitBreakerError"})
    first = _span("GET", "02" * 8, "01" * 8, 10)
    other_trace = ReceivedSpan("svc", "i", "x", 2, "u" * 32, "04" * 8, "", 0, {})
    lines = span_tree([second, other_trace, root, first], "t" * 32)
    assert lines == [
        "svc SERVER POST /x 1.5 ms http.response.status_code=503",
        "  svc CLIENT GET 1.5 ms",
        "  svc CLIENT POST 1.5 ms ERROR error.type=CircuitBreakerError",
    ]


def test_events_follow_their_span_and_an_orphan_is_shown_at_the_top() -> None:
    orphan = ReceivedSpan(
        "svc",
        "i",
        "POST",
        3,
        "t" * 32,
        "05" * 8,
        "ff" * 8,  # its parent was never exported
        2,
        {},
        [
            ("exception", {"exception.type": "ValueError", "exception.message": "no"}),
            ("gennet.breaker.state_change", {"gennet.breaker.state": "open"}),
        ],
    )
    assert span_tree([orphan], "t" * 32) == [
        "svc CLIENT POST 0.0 ms ERROR",
        "  * exception ValueError: no",
        "  * gennet.breaker.state_change gennet.breaker.state=open",
    ]

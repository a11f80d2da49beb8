"""The pieces ``python -m examples.demo`` is made of."""

from __future__ import annotations

import io

import pytest

from examples.demo import StoryFailed, Timeline, describe_path, rules_from_network


def test_rules_from_a_signed_network() -> None:
    network = {
        "nodes": ["x", "y", "z"],
        "edges": [
            {"source": "x", "target": "y", "sign": -1},
            {"source": "z", "target": "y", "sign": 1},
            {"source": "y", "target": "x", "sign": -1},
        ],
    }
    assert rules_from_network(network) == {"x": "!y", "y": "!x & z", "z": "z"}


def test_describe_path_marks_the_loop() -> None:
    path = [{"x": False, "y": False}, {"x": False, "y": True}]
    assert describe_path(path, 1) == ("x=0 y=0 -> x=0 y=1  (then loops back to state 2 forever)")
    assert describe_path(path, None) == "x=0 y=0 -> x=0 y=1"


def test_timeline_fails_the_story_on_a_broken_expectation() -> None:
    out = io.StringIO()
    timeline = Timeline(out=out)
    timeline.step("Do a thing")
    timeline.event("it happened", latency_ms=1.5)
    timeline.expect(True, "fine")
    with pytest.raises(StoryFailed, match="the breaker opens"):
        timeline.expect(False, "the breaker opens")
    assert "== 1. Do a thing" in out.getvalue()
    assert "it happened  (1.5 ms)" in out.getvalue()

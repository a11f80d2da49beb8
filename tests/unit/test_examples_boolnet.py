"""Boolean networks: rule parsing, error positions and state transition graphs."""

from __future__ import annotations

import pytest

from examples.boolnet import (
    MAX_NODES,
    And,
    BooleanNetwork,
    Const,
    Deadline,
    Not,
    Or,
    RuleSyntaxError,
    TimeLimitError,
    UnknownNodeError,
    Var,
    parse_rule,
)


def test_word_and_symbol_operators_parse_to_the_same_tree() -> None:
    words = parse_rule("a and not (b or c)")
    symbols = parse_rule("a & !(b | c)")
    assert words == symbols
    assert words == And((Var("a", 0), Not(Or((Var("b", 0), Var("c", 0))))))


def test_precedence_is_not_then_and_then_or() -> None:
    assert str(parse_rule("a | b & !c")) == "a or (b and not c)"
    assert str(parse_rule("(a | b) & c")) == "(a or b) and c"


def test_constants() -> None:
    assert parse_rule("true") == Const(True)
    assert parse_rule("not false") == Not(Const(False))


@pytest.mark.parametrize(
    ("rule", "position"),
    [
        ("a and", 5),  # end of input where an operand was expected
        ("a b", 2),  # two names in a row
        ("(a or b", 7),  # unclosed parenthesis
        ("a $ b", 2),  # character that starts no token
        ("", 0),
        ("a and )", 6),
    ],
)
def test_syntax_errors_give_the_position(rule: str, position: int) -> None:
    with pytest.raises(RuleSyntaxError) as raised:
        parse_rule(rule, node="x")
    assert raised.value.position == position
    assert raised.value.node == "x"
    assert f"position {position}" in raised.value.message


def test_unknown_node_in_a_rule_is_named_with_its_position() -> None:
    with pytest.raises(UnknownNodeError) as raised:
        BooleanNetwork({"a": "b", "b": "a and zz"})
    assert raised.value.unknown == "zz"
    assert raised.value.node == "b"
    assert raised.value.position == 6
    assert "zz" in raised.value.message


def test_more_than_max_nodes_is_refused() -> None:
    rules = {f"n{i}": "true" for i in range(MAX_NODES + 1)}
    with pytest.raises(ValueError, match="21 nodes"):
        BooleanNetwork(rules)
    BooleanNetwork({f"n{i}": "true" for i in range(MAX_NODES)})


def test_reserved_word_cannot_name_a_node() -> None:
    with pytest.raises(RuleSyntaxError, match="not a valid node name"):
        BooleanNetwork({"and": "true"})


def test_encode_decode_round_trip() -> None:
    net = BooleanNetwork({"a": "a", "b": "b", "c": "c"})
    state = net.encode({"a": True, "b": False, "c": True})
    assert state == 0b101
    assert net.decode(state) == {"a": True, "b": False, "c": True}
    with pytest.raises(ValueError, match="b"):
        net.encode({"a": True, "c": True})


def test_states_matching_a_partial_assignment() -> None:
    net = BooleanNetwork({"a": "a", "b": "b", "c": "c"})
    states = sorted(net.states_matching({"b": True}))
    assert states == [0b010, 0b011, 0b110, 0b111]
    with pytest.raises(UnknownNodeError):
        list(net.states_matching({"q": True}))


def test_synchronous_oscillator_has_one_successor_per_state() -> None:
    # a' = not b, b' = a: the 4-cycle 00 -> 01(a) -> 11 -> 10(b) -> 00
    net = BooleanNetwork({"a": "not b", "b": "a"}, update="synchronous")
    graph = net.transition_graph()
    enc = net.encode
    assert graph.successors(enc({"a": False, "b": False})) == [enc({"a": True, "b": False})]
    assert graph.successors(enc({"a": True, "b": False})) == [enc({"a": True, "b": True})]
    assert graph.successors(enc({"a": True, "b": True})) == [enc({"a": False, "b": True})]
    assert graph.successors(enc({"a": False, "b": True})) == [enc({"a": False, "b": False})]


def test_asynchronous_toggle_switch_changes_one_node_per_step() -> None:
    net = BooleanNetwork({"x": "not y", "y": "not x"}, update="asynchronous")
    graph = net.transition_graph()
    both_off = net.encode({"x": False, "y": False})
    x_only = net.encode({"x": True, "y": False})
    y_only = net.encode({"x": False, "y": True})
    both_on = net.encode({"x": True, "y": True})
    assert sorted(graph.successors(both_off)) == sorted([x_only, y_only])
    assert sorted(graph.successors(both_on)) == sorted([x_only, y_only])
    # fixed points loop on themselves
    assert graph.successors(x_only) == [x_only]
    assert graph.is_fixed_point(y_only)
    assert sorted(graph.predecessors(x_only)) == sorted([both_off, both_on, x_only])


def test_graph_explores_only_what_the_initial_states_reach() -> None:
    net = BooleanNetwork({"x": "not y", "y": "not x"}, update="asynchronous")
    start = net.encode({"x": True, "y": False})
    graph = net.transition_graph([start])
    assert graph.states == [start]
    assert graph.predecessors(start) == [start]  # unreachable predecessors left out


def test_initial_states_are_counted_once_and_must_exist() -> None:
    net = BooleanNetwork({"x": "not y", "y": "not x"}, update="asynchronous")
    start = net.encode({"x": True, "y": False})
    graph = net.transition_graph([start, start])
    assert graph.initial == [start]
    assert graph.states == [start]
    with pytest.raises(ValueError, match="is not a state"):
        net.transition_graph([net.state_count])


def test_predecessors_invert_successors_in_both_schemes() -> None:
    rules = {"a": "b & !c", "b": "a | c", "c": "!a"}
    for update in ("synchronous", "asynchronous"):
        graph = BooleanNetwork(rules, update=update).transition_graph()
        edges = {(s, t) for s in graph.states for t in graph.successors(s)}
        back = {(p, t) for t in graph.states for p in graph.predecessors(t)}
        assert edges == back


@pytest.mark.parametrize("rule", ["(" * 65 + "a" + ")" * 65, "not " * 65 + "a"])
def test_nesting_deeper_than_the_limit_is_a_syntax_error_not_a_crash(rule: str) -> None:
    with pytest.raises(RuleSyntaxError, match="more than 64 levels of nesting"):
        BooleanNetwork({"a": rule})


def test_nesting_up_to_the_limit_and_long_flat_chains_are_fine() -> None:
    deep = BooleanNetwork({"a": "(" * 63 + "not a" + ")" * 63})  # 64 levels
    assert deep.next_state(0) == 1
    flat = BooleanNetwork({"a": " & ".join(["a"] * 3000)})
    assert flat.next_state(1) == 1


class SteppingClock:
    """A fake monotonic clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.step
        return self.now


def test_deadline_reads_the_clock_every_check_every_steps() -> None:
    clock = SteppingClock(1.0)
    deadline = Deadline(2.5, clock)  # reading 1: ends at 3.5
    for _ in range(Deadline.CHECK_EVERY - 1):
        deadline.tick()
    assert clock.readings == 1
    deadline.tick()  # reading 2: 2.0, still in time
    assert clock.readings == 2
    deadline.tick(Deadline.CHECK_EVERY)  # reading 3: 3.0
    with pytest.raises(TimeLimitError, match=r"time limit of 2.5 s") as raised:
        deadline.tick(Deadline.CHECK_EVERY)  # reading 4: 4.0 > 3.5
    assert raised.value.seconds == 2.5


def test_deadline_rejects_a_negative_or_nan_limit() -> None:
    for seconds in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="time limit"):
            Deadline(seconds)


def test_exploring_a_large_graph_stops_at_the_deadline() -> None:
    # 2**14 states, four clock readings to explore them all (from a range, or
    # by search from a list); the fake clock says 10 s pass per reading.
    network = BooleanNetwork({f"n{i}": f"n{(i + 1) % 14}" for i in range(14)}, "asynchronous")
    every_state = list(range(2**14))
    for initial in (None, every_state):
        with pytest.raises(TimeLimitError):
            network.transition_graph(initial, Deadline(25.0, SteppingClock(10.0)))
        graph = network.transition_graph(initial, Deadline(60.0, SteppingClock(10.0)))
        assert len(graph.states) == 2**14

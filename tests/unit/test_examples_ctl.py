"""The CTL model checker: hand-checked networks and a brute-force reference."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.boolnet import (
    And,
    BooleanNetwork,
    Const,
    Deadline,
    Expr,
    Not,
    Or,
    RuleSyntaxError,
    TimeLimitError,
    TransitionGraph,
    UnknownNodeError,
    Var,
)
from examples.ctl import (
    Atom,
    Binary,
    CheckResult,
    Connective,
    Constant,
    Formula,
    ModelChecker,
    Negation,
    Temporal,
    Until,
    check,
    parse_formula,
)

TOGGLE = BooleanNetwork({"x": "not y", "y": "not x"}, update="asynchronous")
# a' = not b, b' = a: the synchronous 4-cycle 00 -> 10 -> 11 -> 01 -> 00 (written ab)
OSCILLATOR = BooleanNetwork({"a": "!b", "b": "a"}, update="synchronous")
# 11, 00 and 01 are fixed points; 10 steps to 00
FIXED = BooleanNetwork({"a": "a & b", "b": "b"}, update="synchronous")


def states(network: BooleanNetwork, *assignments: str) -> tuple[int, ...]:
    """States written as bit strings in node order: "10" = first node on."""
    return tuple(
        network.encode({name: bit == "1" for name, bit in zip(network.nodes, text, strict=True)})
        for text in assignments
    )


# ------------------------------------------------------------------ parsing


def test_parser_precedence_and_canonical_form() -> None:
    assert str(parse_formula("a -> b -> c")) == "a -> (b -> c)"
    assert str(parse_formula("!a & b | c")) == "(!a & b) | c"
    assert str(parse_formula("AG(a -> AF b)")) == "AG(a -> AF(b))"
    assert str(parse_formula("E[a U b & !c]")) == "E[a U b & !c]"
    assert parse_formula("not a and b") == parse_formula("!a & b")


def test_a_e_and_u_remain_usable_as_node_names() -> None:
    formula = parse_formula("A[E U U]")
    assert formula == Until(True, Atom("E"), Atom("U"))
    assert parse_formula("A & E") == Binary(Connective.AND, Atom("A"), Atom("E"))


@pytest.mark.parametrize(
    ("formula", "position"),
    [
        ("AG(x &)", 6),
        ("A[x y]", 4),
        ("E[x U y", 7),
        ("x y", 2),
        ("AG", 2),
        ("", 0),
        ("x # y", 2),
    ],
)
def test_formula_syntax_errors_give_the_position(formula: str, position: int) -> None:
    with pytest.raises(RuleSyntaxError) as raised:
        parse_formula(formula)
    assert raised.value.position == position


def test_unknown_node_in_formula_is_named_with_its_position() -> None:
    with pytest.raises(UnknownNodeError) as raised:
        check(TOGGLE, "AG(x -> EF zz)")
    assert raised.value.unknown == "zz"
    assert raised.value.position == 11


def test_unknown_node_in_initial_state() -> None:
    with pytest.raises(UnknownNodeError) as raised:
        check(TOGGLE, "x", {"nope": True})
    assert raised.value.unknown == "nope"


# ---------------------------------------------------- hand-checked networks


def test_toggle_switch_fixed_points_are_stable() -> None:
    assert check(TOGGLE, "AG(x & !y -> AG(x & !y))").holds
    assert check(TOGGLE, "AG(!x & y -> AG(!x & y))").holds


def test_toggle_switch_every_successor_has_a_node_on() -> None:
    result = check(TOGGLE, "AX(x | y)")
    assert result.holds
    assert result.states == 4
    assert result.satisfying_initial_states == 4


def test_ax_needs_every_successor_where_ex_needs_one() -> None:
    # 11 -> {10, 01} asynchronously: one successor has x & !y, the other not.
    both_on = {"x": True, "y": True}
    some = check(TOGGLE, "EX(x & !y)", both_on)
    assert some.holds
    assert some.trace is not None
    assert some.trace.path == states(TOGGLE, "11", "10")
    every = check(TOGGLE, "AX(x & !y)", both_on)
    assert not every.holds
    assert every.trace is not None
    assert every.trace.path == states(TOGGLE, "11", "01")


@pytest.mark.parametrize(
    ("formula", "holds", "path", "loop_start"),
    [
        ("EG x", True, ("11", "10"), 1),  # 10 is a fixed point: x stays on
        ("AG x", False, ("11", "01"), None),
        ("EF !x", True, ("11", "01"), None),
        ("AF !x", False, ("11", "10"), 1),  # stuck in 10, x never turns off
        ("E[y U !x]", True, ("11", "01"), None),
        ("A[y U !x]", False, ("11", "10"), None),  # 10: neither y nor !x
    ],
)
def test_universal_and_existential_operators_differ_where_paths_branch(
    formula: str, holds: bool, path: tuple[str, ...], loop_start: int | None
) -> None:
    result = check(TOGGLE, formula, {"x": True, "y": True})
    assert result.holds is holds
    assert result.trace is not None
    assert result.trace.path == states(TOGGLE, *path)
    assert result.trace.loop_start == loop_start


def test_toggle_switch_cannot_reach_x_from_the_y_fixed_point() -> None:
    result = check(TOGGLE, "EF(x & !y)")
    assert not result.holds
    assert result.satisfying_initial_states == 3
    assert result.trace is not None
    assert result.trace.path == states(TOGGLE, "01")


def test_toggle_switch_from_both_off_x_is_reachable_with_a_witness() -> None:
    result = check(TOGGLE, "EF(x & !y)", {"x": False, "y": False})
    assert result.holds
    assert result.states == 3  # 00, 10, 01: both-on is not reachable
    assert result.trace is not None
    assert result.trace.kind == "witness"
    assert result.trace.path == states(TOGGLE, "00", "10")


def test_toggle_switch_af_fails_with_a_lasso_to_the_other_fixed_point() -> None:
    result = check(TOGGLE, "AF(x & !y)", {"x": False, "y": False})
    assert not result.holds
    assert result.trace is not None
    assert result.trace.kind == "counterexample"
    assert result.trace.path == states(TOGGLE, "00", "01")
    assert result.trace.loop_start == 1


def test_toggle_switch_ag_counterexample_is_a_path_to_the_bad_state() -> None:
    result = check(TOGGLE, "AG(x)", {"x": True, "y": True})
    assert not result.holds
    assert result.trace is not None
    assert result.trace.path == states(TOGGLE, "11", "01")


def test_toggle_switch_ag_from_both_on_only_reaches_three_states() -> None:
    result = check(TOGGLE, "AG(x | y)", {"x": True, "y": True})
    assert result.states == 3
    # 11 -> {10, 01}; both are fixed points; 00 is unreachable, so x | y holds.
    assert result.holds


def test_oscillator_keeps_coming_back() -> None:
    assert check(OSCILLATOR, "AG(AF a)").holds
    assert check(OSCILLATOR, "AG(AF(!a & !b))").holds
    assert check(OSCILLATOR, "AG(a & !b -> AX(a & b))").holds
    assert check(OSCILLATOR, "A[!b U b]").holds


def test_oscillator_never_stays_on() -> None:
    result = check(OSCILLATOR, "EG a")
    assert not result.holds
    assert result.satisfying_initial_states == 0


def test_oscillator_eu_witness_and_counterexample() -> None:
    failing = check(OSCILLATOR, "E[a U !a & b]")
    assert not failing.holds
    assert failing.trace is not None
    assert failing.trace.path == states(OSCILLATOR, "00")  # neither a nor the goal
    holding = check(OSCILLATOR, "E[a U !a & b]", {"a": True, "b": False})
    assert holding.holds
    assert holding.trace is not None
    assert holding.trace.path == states(OSCILLATOR, "10", "11", "01")


def test_oscillator_ax_counterexample_is_the_successor() -> None:
    result = check(OSCILLATOR, "AX a", {"a": True, "b": True})
    assert not result.holds
    assert result.trace is not None
    assert result.trace.path == states(OSCILLATOR, "11", "01")


def test_fixed_point_network() -> None:
    assert check(FIXED, "AG(b -> AG b)").holds
    assert check(FIXED, "AF(!a | b)").holds
    assert check(FIXED, "EG true").holds
    witness = check(FIXED, "EX(!a & !b)", {"a": True, "b": False})
    assert witness.holds
    assert witness.trace is not None
    assert witness.trace.path == states(FIXED, "10", "00")
    eg = check(FIXED, "EG(a & b)", {"a": True, "b": True})
    assert eg.holds
    assert eg.trace is not None
    assert eg.trace.path == states(FIXED, "11")
    assert eg.trace.loop_start == 0


def test_au_counterexample_where_the_left_side_fails_first() -> None:
    # FIXED from 10: a & !b, then 00 where neither a nor b: A[a U b] fails on the path
    result = check(FIXED, "A[a U b]", {"a": True, "b": False})
    assert not result.holds
    assert result.trace is not None
    assert result.trace.path == states(FIXED, "10", "00")


# ------------------------------------------------- brute-force reference


def reference_sat(graph: TransitionGraph, formula: Formula) -> set[int]:
    """CTL semantics by naive fixpoint iteration; no dualities, no shortcuts."""
    every = set(graph.states)

    def pre_exists(target: set[int]) -> set[int]:
        return {s for s in every if any(t in target for t in graph.successors(s))}

    def pre_all(target: set[int]) -> set[int]:
        return {s for s in every if all(t in target for t in graph.successors(s))}

    def least(step: Callable[[set[int]], set[int]]) -> set[int]:
        current: set[int] = set()
        while (following := step(current)) != current:
            current = following
        return current

    def greatest(step: Callable[[set[int]], set[int]]) -> set[int]:
        current = set(every)
        while (following := step(current)) != current:
            current = following
        return current

    def sat(f: Formula) -> set[int]:
        if isinstance(f, Constant):
            return set(every) if f.value else set()
        if isinstance(f, Atom):
            bit = graph.network.index[f.name]
            return {s for s in every if s >> bit & 1}
        if isinstance(f, Negation):
            return every - sat(f.operand)
        if isinstance(f, Binary):
            left, right = sat(f.left), sat(f.right)
            if f.connective is Connective.AND:
                return left & right
            if f.connective is Connective.OR:
                return left | right
            return (every - left) | right
        if isinstance(f, Until):
            left, right = sat(f.left), sat(f.right)
            pre = pre_all if f.universal else pre_exists
            return least(lambda z: right | (left & pre(z)))
        inner = sat(f.operand)
        return {
            "EX": lambda: pre_exists(inner),
            "AX": lambda: pre_all(inner),
            "EF": lambda: least(lambda z: inner | pre_exists(z)),
            "AF": lambda: least(lambda z: inner | pre_all(z)),
            "EG": lambda: greatest(lambda z: inner & pre_exists(z)),
            "AG": lambda: greatest(lambda z: inner & pre_all(z)),
        }[f.operator]()

    return sat(formula)


NODE_NAMES = ("p", "q", "r")


def rule_exprs(names: tuple[str, ...]) -> st.SearchStrategy[Expr]:
    leaves: st.SearchStrategy[Expr] = st.one_of(
        st.builds(Const, st.booleans()), st.sampled_from([Var(n) for n in names])
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(Not, inner),
            st.builds(lambda a, b: And((a, b)), inner, inner),
            st.builds(lambda a, b: Or((a, b)), inner, inner),
        ),
        max_leaves=4,
    )


def formulas(names: tuple[str, ...]) -> st.SearchStrategy[Formula]:
    leaves: st.SearchStrategy[Formula] = st.one_of(
        st.builds(Constant, st.booleans()), st.sampled_from([Atom(n) for n in names])
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(Negation, inner),
            st.builds(Binary, st.sampled_from(list(Connective)), inner, inner),
            st.builds(Temporal, st.sampled_from(["AX", "EX", "AF", "EF", "AG", "EG"]), inner),
            st.builds(Until, st.booleans(), inner, inner),
        ),
        max_leaves=5,
    )


@st.composite
def problems(draw: st.DrawFn) -> tuple[BooleanNetwork, Formula, dict[str, bool]]:
    size = draw(st.integers(1, 3))
    names = NODE_NAMES[:size]
    rules = {name: draw(rule_exprs(names)) for name in names}
    network = BooleanNetwork(rules, update=draw(st.sampled_from(["synchronous", "asynchronous"])))
    initial = draw(st.dictionaries(st.sampled_from(names), st.booleans(), max_size=size))
    return network, draw(formulas(names)), initial


def assert_trace_is_a_path(network: BooleanNetwork, result: CheckResult) -> None:
    if result.trace is None:
        return
    graph = network.transition_graph()
    path = result.trace.path
    for source, target in itertools.pairwise(path):
        assert target in graph.successors(source)
    if result.trace.loop_start is not None:
        assert path[result.trace.loop_start] in graph.successors(path[-1])


@settings(max_examples=150, deadline=None)
@given(problems())
def test_checker_agrees_with_brute_force_fixpoints(
    problem: tuple[BooleanNetwork, Formula, dict[str, bool]],
) -> None:
    network, formula, initial = problem
    result = check(network, formula, initial)
    graph = network.transition_graph(network.states_matching(initial))
    expected = reference_sat(graph, formula)
    labelled = ModelChecker(graph).sat(formula)
    assert {state for state in graph.states if labelled[state]} == expected
    initial_states = set(network.states_matching(initial))
    assert result.holds == initial_states.issubset(expected)
    assert result.satisfying_initial_states == len(initial_states & expected)
    assert result.states == len(graph.states)
    assert_trace_is_a_path(network, result)
    if result.trace is not None:
        assert result.trace.path[0] in initial_states


# Random rules rarely make a state with two successors (17 in 150 draws, none
# of them with an AX), so universal and existential operators need networks
# that branch: an asynchronous toggle switch and repressilator.
BRANCHING = (
    BooleanNetwork({"p": "!q", "q": "!p"}, update="asynchronous"),
    BooleanNetwork({"p": "!r", "q": "!p", "r": "!q"}, update="asynchronous"),
    BooleanNetwork({"p": "q | r", "q": "!p", "r": "p & !q"}, update="asynchronous"),
)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(BRANCHING), st.data())
def test_checker_agrees_with_brute_force_on_branching_networks(
    network: BooleanNetwork, data: st.DataObject
) -> None:
    formula = data.draw(formulas(network.nodes))
    initial = data.draw(st.dictionaries(st.sampled_from(network.nodes), st.booleans()))
    result = check(network, formula, initial)
    graph = network.transition_graph(network.states_matching(initial))
    expected = reference_sat(graph, formula)
    labelled = ModelChecker(graph).sat(formula)
    assert {state for state in graph.states if labelled[state]} == expected
    initial_states = set(network.states_matching(initial))
    assert result.holds == initial_states.issubset(expected)
    assert_trace_is_a_path(network, result)


@pytest.mark.parametrize(
    "formula",
    [
        "AG " * 65 + "x",
        "(" * 65 + "x" + ")" * 65,
        " & ".join(["x"] * 3000),
        " -> ".join(["x"] * 3000),
    ],
)
def test_formulas_nested_too_deep_are_syntax_errors_not_crashes(formula: str) -> None:
    with pytest.raises(RuleSyntaxError, match="levels of nesting") as raised:
        check(TOGGLE, formula)
    assert raised.value.position is not None


def test_long_implication_chains_stay_right_associative() -> None:
    formula = parse_formula(" -> ".join(["x", "y", "x", "y"]))
    assert str(formula) == "x -> (y -> (x -> y))"


def test_a_check_gives_up_at_its_deadline() -> None:
    # 2**12 states: one clock reading to explore them, then one per 4096 steps
    # of each search; the fake clock moves one second per reading.
    network = BooleanNetwork({f"n{i}": f"!n{(i + 1) % 12}" for i in range(12)}, "asynchronous")

    def deadline() -> Deadline:
        ticks = itertools.count(1.0)
        return Deadline(2.5, lambda: next(ticks))

    assert check(network, "n0 | !n0", deadline=deadline()).holds
    with pytest.raises(TimeLimitError, match=r"2\.5 s"):
        check(network, "EG EG EG EG n0", deadline=deadline())


@pytest.mark.parametrize(
    ("rules", "update", "formula", "initial", "holds"),
    [
        # a fixed point's self-loop is an infinite path: EG holds on it
        ({"a": "a"}, "asynchronous", "EG a", {"a": True}, True),
        ({"a": "a"}, "synchronous", "EG a", {"a": True}, True),
        # a state with a pending change has no self-loop: it must move
        ({"x": "!x"}, "asynchronous", "EG !x", {"x": False}, False),
        ({"x": "!x"}, "asynchronous", "AF x", {"x": False}, True),
        # until needs its right side to happen
        ({"x": "!x"}, "asynchronous", "A[true U false]", None, False),
        ({"x": "x", "y": "false"}, "asynchronous", "A[x U y]", {"y": False}, False),
        # b toggles forever while a stays off: AF a fails asynchronously,
        # holds synchronously (b's first step turns a on)
        ({"a": "a | b", "b": "!b"}, "asynchronous", "AF a", {"a": False, "b": False}, False),
        ({"a": "a | b", "b": "!b"}, "asynchronous", "A[!a U a]", {"a": False, "b": False}, False),
        ({"a": "a | b", "b": "!b"}, "asynchronous", "EF a & EG !a", {"a": False, "b": False}, True),
        ({"a": "a | b", "b": "!b"}, "synchronous", "AF a", {"a": False, "b": False}, True),
    ],
)
def test_textbook_semantics_checked_by_hand(
    rules: dict[str, str],
    update: str,
    formula: str,
    initial: dict[str, bool] | None,
    holds: bool,
) -> None:
    assert check(BooleanNetwork(rules, update=update), formula, initial).holds is holds

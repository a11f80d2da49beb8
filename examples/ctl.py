"""CTL formulas and an explicit-state model checker over Boolean networks.

Formulas use node names as atoms, ``true``/``false``, ``not``/``!``,
``and``/``&``, ``or``/``|``, ``->`` (right associative, binds loosest), the
unary temporal operators ``AX EX AF EF AG EG`` and the until forms
``A[f U g]`` and ``E[f U g]``::

    network = BooleanNetwork({"x": "not y", "y": "not x"}, update="asynchronous")
    result = check(network, "AG(x -> EF !y)")
    result.holds   # True

The checker labels every reachable state with the set of subformulas true
there (the textbook algorithm): ``EX`` by predecessors, ``E[f U g]`` by a
backward search from the ``g`` states through ``f`` states, ``EG f`` as the
greatest fixpoint computed by deleting ``f`` states whose successors all left
the set; the ``A`` operators by the usual dualities.  A formula *holds* when it
is true in every initial state.  Where one is cheap, the result carries a path
that shows why: a counterexample when the formula fails, a witness when an
existential formula holds.  Pure Python: no Flask, no I/O.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from examples.boolnet import (
    NO_DEADLINE,
    BooleanNetwork,
    Deadline,
    RuleSyntaxError,
    TokenKind,
    TokenStream,
    TransitionGraph,
    UnknownNodeError,
)

__all__ = [
    "MAX_TRACE_LENGTH",
    "TEMPORAL_OPERATORS",
    "Atom",
    "Binary",
    "CheckResult",
    "Constant",
    "Formula",
    "ModelChecker",
    "Negation",
    "Temporal",
    "Trace",
    "Until",
    "check",
    "parse_formula",
]

#: Longest path a counterexample or witness reports; longer ones are cut.
MAX_TRACE_LENGTH: Final = 1000

#: The unary temporal operators; a formula cannot use them as node names.
TEMPORAL_OPERATORS: Final = frozenset({"AX", "EX", "AF", "EF", "AG", "EG"})


# -------------------------------------------------------------------- syntax


@dataclass(frozen=True)
class Constant:
    """``true`` or ``false``."""

    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(frozen=True)
class Atom:
    """A node is on.  ``position`` (where it appears) does not take part in equality."""

    name: str
    position: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Negation:
    """``not f``."""

    operand: Formula

    def __str__(self) -> str:
        return f"!{_wrap(self.operand)}"


class Connective(enum.StrEnum):
    """Binary Boolean connectives, by their canonical spelling."""

    AND = "&"
    OR = "|"
    IMPLIES = "->"


@dataclass(frozen=True)
class Binary:
    """``f & g``, ``f | g`` or ``f -> g``."""

    connective: Connective
    left: Formula
    right: Formula

    def __str__(self) -> str:
        return f"{_wrap(self.left)} {self.connective} {_wrap(self.right)}"


@dataclass(frozen=True)
class Temporal:
    """``AX f``, ``EX f``, ``AF f``, ``EF f``, ``AG f`` or ``EG f``."""

    operator: str
    operand: Formula

    def __str__(self) -> str:
        return f"{self.operator}({self.operand})"


@dataclass(frozen=True)
class Until:
    """``A[f U g]`` (``universal``) or ``E[f U g]``."""

    universal: bool
    left: Formula
    right: Formula

    def __str__(self) -> str:
        return f"{'A' if self.universal else 'E'}[{self.left} U {self.right}]"


Formula = Constant | Atom | Negation | Binary | Temporal | Until


def _wrap(formula: Formula) -> str:
    return f"({formula})" if isinstance(formula, Binary) else str(formula)


def atoms(formula: Formula) -> Iterator[Atom]:
    """Every atom of ``formula``, left to right."""
    if isinstance(formula, Atom):
        yield formula
    elif isinstance(formula, Negation | Temporal):
        yield from atoms(formula.operand)
    elif isinstance(formula, Binary | Until):
        yield from atoms(formula.left)
        yield from atoms(formula.right)


class _FormulaParser:
    """Recursive descent over::

    formula     := implication END
    implication := disjunction ("->" implication)?
    disjunction := conjunction (("or" | "|") conjunction)*
    conjunction := unary (("and" | "&") unary)*
    unary       := ("not" | "!") unary | TEMPORAL unary
                 | ("A" | "E") "[" implication "U" implication "]" | atom
    atom        := NAME | "true" | "false" | "(" implication ")"

    ``TEMPORAL`` is one of ``AX EX AF EF AG EG``; ``A``, ``E`` and ``U`` are
    keywords only where the grammar expects them, so they can still name nodes.
    """

    def __init__(self, text: str) -> None:
        self.stream = TokenStream(text, what="formula")

    def parse(self) -> Formula:
        formula = self.implication()
        if self.stream.current.kind is not TokenKind.END:
            raise self.stream.error("expected an operator or the end of the formula")
        return formula

    # Each operand after the first makes the tree one level deeper, so chains
    # count towards the nesting limit like parentheses do.

    def implication(self) -> Formula:
        with contextlib.ExitStack() as depth:
            operands = [self.disjunction()]
            while self.stream.current.kind is TokenKind.IMPLIES:
                depth.enter_context(self.stream.nested())
                self.stream.advance()
                operands.append(self.disjunction())
        formula = operands.pop()
        while operands:  # right associative: a -> b -> c is a -> (b -> c)
            formula = Binary(Connective.IMPLIES, operands.pop(), formula)
        return formula

    def disjunction(self) -> Formula:
        with contextlib.ExitStack() as depth:
            formula = self.conjunction()
            while self.stream.current.kind is TokenKind.OR:
                depth.enter_context(self.stream.nested())
                self.stream.advance()
                formula = Binary(Connective.OR, formula, self.conjunction())
        return formula

    def conjunction(self) -> Formula:
        with contextlib.ExitStack() as depth:
            formula = self.unary()
            while self.stream.current.kind is TokenKind.AND:
                depth.enter_context(self.stream.nested())
                self.stream.advance()
                formula = Binary(Connective.AND, formula, self.unary())
        return formula

    def unary(self) -> Formula:
        token = self.stream.current
        prefix = token.kind is TokenKind.NOT or (
            token.kind is TokenKind.NAME
            and (
                token.text in TEMPORAL_OPERATORS
                or (token.text in ("A", "E") and self.stream.peek().kind is TokenKind.LBRACKET)
            )
        )
        if not prefix:
            return self.atom()
        with self.stream.nested():
            return self.prefixed()

    def prefixed(self) -> Formula:
        stream = self.stream
        token = stream.current
        if stream.accept(TokenKind.NOT):
            return Negation(self.unary())
        if token.text in TEMPORAL_OPERATORS:
            stream.advance()
            return Temporal(token.text, self.unary())
        # A[f U g] or E[f U g]
        stream.advance()
        stream.advance()
        left = self.implication()
        until = stream.current
        if until.kind is not TokenKind.NAME or until.text != "U":
            raise stream.error("expected 'U'")
        stream.advance()
        right = self.implication()
        stream.expect(TokenKind.RBRACKET, "']'")
        return Until(token.text == "A", left, right)

    def atom(self) -> Formula:
        stream = self.stream
        token = stream.current
        if token.kind is TokenKind.NAME:
            stream.advance()
            return Atom(token.text, token.position)
        if token.kind in (TokenKind.TRUE, TokenKind.FALSE):
            stream.advance()
            return Constant(token.kind is TokenKind.TRUE)
        if token.kind is TokenKind.LPAREN:
            with stream.nested():
                stream.advance()
                formula = self.implication()
                stream.expect(TokenKind.RPAREN, "')'")
                return formula
        raise stream.error("expected a node name, 'true', 'false', '!', '(' or a temporal operator")


def parse_formula(text: str) -> Formula:
    """Parse a CTL formula.

    Args:
        text: E.g. ``"AG(a -> AF b)"`` or ``"E[a U b & !c]"``.

    Returns:
        The formula's syntax tree.

    Raises:
        RuleSyntaxError: With the 0-based ``position`` where parsing failed.
    """
    if not text.strip():
        raise RuleSyntaxError("The formula is empty", position=0, text=text)
    return _FormulaParser(text).parse()


# ------------------------------------------------------------------ checking


@dataclass(frozen=True)
class Trace:
    """A path through the state transition graph that explains a result.

    Attributes:
        kind: ``"counterexample"`` or ``"witness"``.
        description: What the path shows, in words.
        path: States, first to last; the first is an initial state.
        loop_start: When the path ends in a cycle, the index in ``path`` of the
            state the last state steps back to; ``None`` for a finite path.
        truncated: True when the path was longer than :data:`MAX_TRACE_LENGTH`
            and only its beginning is given.
    """

    kind: str
    description: str
    path: tuple[int, ...]
    loop_start: int | None = None
    truncated: bool = False


@dataclass(frozen=True)
class CheckResult:
    """The answer of :func:`check`.

    Attributes:
        holds: The formula is true in every initial state.
        formula: The parsed formula.
        states: Number of states reachable from the initial states.
        initial_states: Number of initial states.
        satisfying_initial_states: Initial states where the formula is true.
        trace: A counterexample or witness path, when one is given.
    """

    holds: bool
    formula: Formula
    states: int
    initial_states: int
    satisfying_initial_states: int
    trace: Trace | None = None


class ModelChecker:
    """Labels the states of a transition graph with the formulas true there.

    Sets of states are ``bytearray`` masks indexed by state (1 = in the set),
    zero outside the reachable states; Boolean connectives run on whole masks.
    Results are cached per subformula.

    Example::

        checker = ModelChecker(network.transition_graph())
        mask = checker.sat(parse_formula("EF(a & b)"))
        [s for s in checker.graph.states if mask[s]]

    Args:
        graph: The reachable state space to label.
    """

    def __init__(self, graph: TransitionGraph) -> None:
        self.graph = graph
        self.network: BooleanNetwork = graph.network
        self._size = graph.size
        self._reachable = bytes(graph.reachable)
        self._reachable_int = int.from_bytes(self._reachable, "little")
        self._cache: dict[Formula, bytearray] = {}

    # -- masks

    def _combine(self, left: bytearray, right: bytearray, connective: Connective) -> bytearray:
        # Each byte is 0 or 1, so big-integer bit operations act per state.
        a = int.from_bytes(left, "little")
        b = int.from_bytes(right, "little")
        if connective is Connective.AND:
            value = a & b
        elif connective is Connective.OR:
            value = a | b
        else:
            value = (a ^ self._reachable_int) | b
        return bytearray(value.to_bytes(self._size, "little"))

    def _complement(self, mask: bytearray) -> bytearray:
        value = int.from_bytes(mask, "little") ^ self._reachable_int
        return bytearray(value.to_bytes(self._size, "little"))

    def _atom(self, name: str) -> bytearray:
        bit = self.network.index[name]
        half = 1 << bit
        pattern = (b"\x00" * half + b"\x01" * half) * (self._size // (2 * half))
        value = int.from_bytes(pattern, "little") & self._reachable_int
        return bytearray(value.to_bytes(self._size, "little"))

    # -- labelling

    def sat(self, formula: Formula) -> bytearray:
        """The reachable states where ``formula`` is true, as a 0/1 mask.

        Raises:
            UnknownNodeError: The formula names a node the network lacks.
        """
        cached = self._cache.get(formula)
        if cached is None:
            cached = self._label(formula)
            self._cache[formula] = cached
        return cached

    def _label(self, formula: Formula) -> bytearray:
        if isinstance(formula, Constant):
            return bytearray(self._reachable) if formula.value else bytearray(self._size)
        if isinstance(formula, Atom):
            if formula.name not in self.network.index:
                raise UnknownNodeError(formula.name, where="the formula", position=formula.position)
            return self._atom(formula.name)
        if isinstance(formula, Negation):
            return self._complement(self.sat(formula.operand))
        if isinstance(formula, Binary):
            return self._combine(
                self.sat(formula.left), self.sat(formula.right), formula.connective
            )
        if isinstance(formula, Until):
            if not formula.universal:
                return self.exists_until(self.sat(formula.left), self.sat(formula.right))
            # A[f U g] = !(E[!g U (!f & !g)] | EG !g); the parts are cached
            # subformulas, so a counterexample reuses them.
            bad = self._combine(
                self.sat(Until(False, Negation(formula.right), _stuck(formula))),
                self.sat(_never(formula.right)),
                Connective.OR,
            )
            return self._complement(bad)
        operand = self.sat(formula.operand)
        match formula.operator:
            case "EX":
                return self.exists_next(operand)
            case "AX":
                return self._complement(self.exists_next(self._complement(operand)))
            case "EF":
                return self.exists_until(bytearray(self._reachable), operand)
            case "AG":
                reach_bad = self.exists_until(bytearray(self._reachable), self._complement(operand))
                return self._complement(reach_bad)
            case "EG":
                return self.exists_globally(operand)
            case _:  # "AF": AF f = !EG !f
                return self._complement(self.sat(_never(formula.operand)))

    def exists_next(self, target: bytearray) -> bytearray:
        """States with at least one successor in ``target``."""
        result = bytearray(self._size)
        tick = self.graph.deadline.tick
        for state in self.graph.states:
            tick()
            if target[state]:
                for source in self.graph.predecessors(state):
                    result[source] = 1
        return result

    def exists_until(self, hold: bytearray, goal: bytearray) -> bytearray:
        """``E[hold U goal]``: backward search from ``goal`` through ``hold`` states."""
        return self.graph.backward_search(goal, hold)

    def exists_globally(self, hold: bytearray) -> bytearray:
        """``EG hold``: the ``hold`` states from which a path stays in ``hold`` forever.

        Greatest fixpoint: repeatedly drop ``hold`` states none of whose
        successors are left, counting each state's remaining successors so every
        transition is looked at a bounded number of times.
        """
        result = bytearray(hold)
        remaining: dict[int, int] = {}
        dropped: list[int] = []
        tick = self.graph.deadline.tick
        for state in self.graph.states:
            tick()
            if hold[state]:
                count = sum(1 for successor in self.graph.successors(state) if hold[successor])
                remaining[state] = count
                if count == 0:
                    dropped.append(state)
        while dropped:
            tick()
            state = dropped.pop()
            result[state] = 0
            for source in self.graph.predecessors(state):
                if result[source]:
                    remaining[source] -= 1
                    if remaining[source] == 0:
                        dropped.append(source)
        return result

    # -- explanations

    def lasso(self, start: int, inside: bytearray) -> tuple[list[int], int]:
        """A path from ``start`` that stays in ``inside`` until it closes a cycle.

        Every state of ``inside`` must have a successor in it (true of any
        ``EG`` set).  Returns the path and the index where its cycle starts.
        """
        path: list[int] = []
        seen: dict[int, int] = {}
        state = start
        while state not in seen:
            seen[state] = len(path)
            path.append(state)
            state = next(s for s in self.graph.successors(state) if inside[s])
        return path, seen[state]

    def explain(self, formula: Formula, holds: bool, state: int) -> Trace | None:
        """A counterexample at ``state`` (``holds`` False) or a witness from it (True).

        Given for ``AG``, ``AX``, ``AF``, ``A[U]`` failing and for ``EF``, ``EX``,
        ``EG``, ``E[U]`` holding; ``None`` for other formulas.
        """
        graph = self.graph
        if not isinstance(formula, Temporal | Until):
            return None
        if isinstance(formula, Until):
            if holds and not formula.universal:
                right, left = self.sat(formula.right), self.sat(formula.left)
                path = graph.shortest_path([state], right, through=left)
                return _trace("witness", f"a path through {formula.left} to {formula.right}", path)
            if not holds and formula.universal:
                stuck = self.sat(_stuck(formula))
                path = graph.shortest_path(
                    [state], stuck, through=self.sat(Negation(formula.right))
                )
                if path is not None:
                    return _trace(
                        "counterexample",
                        f"a path where {formula.left} fails before {formula.right} holds",
                        path,
                    )
                loop, start = self.lasso(state, self.sat(_never(formula.right)))
                return _trace(
                    "counterexample", f"a cycle on which {formula.right} never holds", loop, start
                )
            return None
        operand = self.sat(formula.operand)
        match formula.operator, holds:
            case "AG", False:
                path = graph.shortest_path([state], self._complement(operand))
                return _trace(
                    "counterexample", f"a reachable state where {formula.operand} fails", path
                )
            case "EF", True:
                path = graph.shortest_path([state], operand)
                return _trace("witness", f"a reachable state where {formula.operand} holds", path)
            case "AX", False:
                successor = next(s for s in graph.successors(state) if not operand[s])
                return _trace(
                    "counterexample",
                    f"a successor where {formula.operand} fails",
                    [state, successor],
                )
            case "EX", True:
                successor = next(s for s in graph.successors(state) if operand[s])
                return _trace(
                    "witness", f"a successor where {formula.operand} holds", [state, successor]
                )
            case "AF", False:
                loop, start = self.lasso(state, self.sat(_never(formula.operand)))
                return _trace(
                    "counterexample", f"a cycle on which {formula.operand} never holds", loop, start
                )
            case "EG", True:
                loop, start = self.lasso(state, self.sat(formula))
                return _trace(
                    "witness", f"a cycle on which {formula.operand} always holds", loop, start
                )
        return None

    def check(self, formula: Formula) -> CheckResult:
        """Whether ``formula`` holds in every initial state, with a trace when cheap."""
        mask = self.sat(formula)
        initial = self.graph.initial
        satisfying = sum(mask[state] for state in initial)
        holds = satisfying == len(initial)
        if holds:
            trace = self.explain(formula, True, initial[0])
        else:
            failing = next(state for state in initial if not mask[state])
            trace = self.explain(formula, False, failing) or Trace(
                "counterexample", "an initial state where the formula is false", (failing,)
            )
        return CheckResult(
            holds=holds,
            formula=formula,
            states=len(self.graph.states),
            initial_states=len(initial),
            satisfying_initial_states=satisfying,
            trace=trace,
        )


def _never(formula: Formula) -> Temporal:
    """``EG !f``: the states with a path on which ``formula`` never holds."""
    return Temporal("EG", Negation(formula))


def _stuck(until: Until) -> Binary:
    """``!f & !g`` for ``A[f U g]``: where a path fails before ``g`` holds."""
    return Binary(Connective.AND, Negation(until.left), Negation(until.right))


def _trace(
    kind: str, description: str, path: list[int] | None, loop_start: int | None = None
) -> Trace | None:
    if path is None:
        return None
    truncated = len(path) > MAX_TRACE_LENGTH
    if truncated:
        path = path[:MAX_TRACE_LENGTH]
        loop_start = None
    return Trace(kind, description, tuple(path), loop_start, truncated)


def check(
    network: BooleanNetwork,
    formula: str | Formula,
    initial: Mapping[str, bool] | None = None,
    *,
    deadline: Deadline = NO_DEADLINE,
) -> CheckResult:
    """Model-check ``formula`` on ``network``.

    Args:
        network: The Boolean network.
        formula: A CTL formula, as text or parsed.
        initial: A partial assignment; the initial states are all states that
            agree with it (every state when ``None`` or empty).
        deadline: Polled by every search; the check gives up when it passes.

    Returns:
        The :class:`CheckResult`.

    Raises:
        RuleSyntaxError: The formula does not parse (``position`` says where).
        UnknownNodeError: The formula or ``initial`` names an unknown node.
        TimeLimitError: The check ran past ``deadline``.
    """
    parsed = parse_formula(formula) if isinstance(formula, str) else formula
    for atom in atoms(parsed):
        if atom.name not in network.index:
            raise UnknownNodeError(
                atom.name,
                where="the formula",
                position=atom.position,
                text=formula if isinstance(formula, str) else None,
            )
    graph = network.transition_graph(
        network.states_matching(initial) if initial else None, deadline
    )
    checker = ModelChecker(graph)
    return checker.check(parsed)

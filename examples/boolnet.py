"""Boolean networks: update rules, their parser and the state transition graph.

A Boolean network gives each node an update rule over the nodes' current
values, written with node names, ``and``/``or``/``not`` (or ``&``/``|``/``!``),
parentheses and ``true``/``false``::

    network = BooleanNetwork({"a": "not b", "b": "not a"}, update="synchronous")
    graph = network.transition_graph()

A state is an ``int`` whose bit *i* is the value of the *i*-th node (in the
order the rules were given); :meth:`BooleanNetwork.decode` and
:meth:`BooleanNetwork.encode` convert to and from ``{"node": bool}``.

Update schemes:

- ``synchronous``: every node takes its rule's value at once; one successor.
- ``asynchronous``: one node whose rule disagrees with its value changes per
  step, so a state has one successor per such node; a state where no rule
  disagrees (a fixed point) has itself as its only successor.

Both schemes give every state at least one successor, which is what the CTL
model checker in :mod:`examples.ctl` relies on.  Networks are limited to
:data:`MAX_NODES` nodes (2**20 states).  Pure Python: no Flask, no I/O.
"""

from __future__ import annotations

import enum
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MAX_NESTING",
    "MAX_NODES",
    "NO_DEADLINE",
    "And",
    "BooleanNetwork",
    "Const",
    "Deadline",
    "Expr",
    "NetworkError",
    "NetworkSizeError",
    "Not",
    "Or",
    "RuleSyntaxError",
    "TimeLimitError",
    "TransitionGraph",
    "UnknownNodeError",
    "UpdateScheme",
    "Var",
    "parse_rule",
]

#: Largest network accepted: its state space has 2**MAX_NODES states.
MAX_NODES: Final = 20
#: Deepest nesting of parentheses and prefix operators in a rule or formula (in a
#: formula, each operand of a chain of binary operators counts as a level too);
#: keeps the parsers' recursion and the compiled rule far from Python's limits.
MAX_NESTING: Final = 64

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
#: Words with a meaning in rules; they cannot name a node.
RESERVED_WORDS: Final = frozenset({"and", "or", "not", "true", "false"})


# --------------------------------------------------------------------- errors


class NetworkError(ValueError):
    """A network or formula the checker cannot accept; says where and why.

    Attributes:
        message: What is wrong, for a human.
        node: The node the problem is about (its rule, or an unknown name), if any.
        position: 0-based character offset in :attr:`text` where it was found, if any.
        text: The rule or formula being read, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        position: int | None = None,
        text: str | None = None,
    ) -> None:
        self.message = message
        self.node = node
        self.position = position
        self.text = text
        super().__init__(message)


class RuleSyntaxError(NetworkError):
    """A rule (or formula) that does not parse; :attr:`position` is where it broke."""


class UnknownNodeError(NetworkError):
    """A rule, formula or initial state names a node the network does not have.

    Attributes:
        unknown: The unknown name.
    """

    def __init__(
        self,
        unknown: str,
        *,
        where: str,
        node: str | None = None,
        position: int | None = None,
        text: str | None = None,
    ) -> None:
        self.unknown = unknown
        super().__init__(
            f"Unknown node '{unknown}' in {where}",
            node=node,
            position=position,
            text=text,
        )


class NetworkSizeError(NetworkError):
    """No nodes, or more than :data:`MAX_NODES`."""


class TimeLimitError(NetworkError):
    """A computation ran past its :class:`Deadline`: the input is too costly to answer.

    Attributes:
        seconds: The time limit that was passed.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(
            f"The check did not finish within its time limit of {seconds:g} s: "
            "use fewer nodes, simpler rules, fewer temporal operators or an initial state"
        )


class Deadline:
    """A time limit that long loops poll cheaply: the clock is read every few thousand steps.

    Example::

        deadline = Deadline(20.0)
        for state in states:
            deadline.tick()  # raises TimeLimitError once 20 s have passed
            ...

    Args:
        seconds: The time allowed from now; ``None`` for no limit.
        clock: Monotonic seconds (injected by tests).
    """

    #: Steps between two readings of the clock.
    CHECK_EVERY: Final = 4096

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds is not None and not seconds >= 0:
            raise ValueError(f"A time limit must be a number of seconds >= 0, not {seconds!r}")
        self.seconds = seconds
        self._clock = clock
        self._end = math.inf if seconds is None else clock() + seconds
        self._steps = 0

    def tick(self, steps: int = 1) -> None:
        """Count ``steps`` units of work; every :attr:`CHECK_EVERY`, look at the clock.

        Raises:
            TimeLimitError: The time is up.
        """
        self._steps += steps
        if self._steps >= self.CHECK_EVERY:
            self._steps = 0
            self.check()

    def check(self) -> None:
        """Look at the clock now.

        Raises:
            TimeLimitError: The time is up.
        """
        if self.seconds is not None and self._clock() > self._end:
            raise TimeLimitError(self.seconds)


#: A deadline that never passes.
NO_DEADLINE: Final = Deadline(None)


# ------------------------------------------------------------------ rule AST


@dataclass(frozen=True)
class Const:
    """The constant ``true`` or ``false``."""

    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(frozen=True)
class Var:
    """A node's current value.  ``position`` (where the name appears) is not compared."""

    name: str
    position: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Not:
    """Negation."""

    operand: Expr

    def __str__(self) -> str:
        return f"not {_wrap(self.operand)}"


@dataclass(frozen=True)
class And:
    """Conjunction of two or more operands."""

    operands: tuple[Expr, ...]

    def __str__(self) -> str:
        return " and ".join(_wrap(op) for op in self.operands)


@dataclass(frozen=True)
class Or:
    """Disjunction of two or more operands."""

    operands: tuple[Expr, ...]

    def __str__(self) -> str:
        return " or ".join(_wrap(op) for op in self.operands)


Expr = Const | Var | Not | And | Or


def _wrap(expr: Expr) -> str:
    return f"({expr})" if isinstance(expr, And | Or) else str(expr)


def variables(expr: Expr) -> Iterator[Var]:
    """Every :class:`Var` in ``expr``, left to right."""
    if isinstance(expr, Var):
        yield expr
    elif isinstance(expr, Not):
        yield from variables(expr.operand)
    elif isinstance(expr, And | Or):
        for operand in expr.operands:
            yield from variables(operand)


# ---------------------------------------------------------------- tokenizer


class TokenKind(enum.Enum):
    """Kinds of token shared by the rule and formula grammars."""

    NAME = "name"
    AND = "and"
    OR = "or"
    NOT = "not"
    TRUE = "true"
    FALSE = "false"
    LPAREN = "("
    RPAREN = ")"
    LBRACKET = "["
    RBRACKET = "]"
    IMPLIES = "->"
    END = "end of input"


@dataclass(frozen=True)
class Token:
    """One token: its kind, its text and where it starts."""

    kind: TokenKind
    text: str
    position: int

    def describe(self) -> str:
        """How an error message names this token."""
        return "end of input" if self.kind is TokenKind.END else f"'{self.text}'"


_SYMBOLS: Final = {
    "->": TokenKind.IMPLIES,
    "&&": TokenKind.AND,
    "||": TokenKind.OR,
    "&": TokenKind.AND,
    "|": TokenKind.OR,
    "!": TokenKind.NOT,
    "~": TokenKind.NOT,
    "(": TokenKind.LPAREN,
    ")": TokenKind.RPAREN,
    "[": TokenKind.LBRACKET,
    "]": TokenKind.RBRACKET,
}
_WORDS: Final = {
    "and": TokenKind.AND,
    "or": TokenKind.OR,
    "not": TokenKind.NOT,
    "true": TokenKind.TRUE,
    "false": TokenKind.FALSE,
}


def tokenize(text: str, *, node: str | None = None) -> list[Token]:
    """Split ``text`` into tokens, ending with an ``END`` token.

    Args:
        text: A rule or a formula.
        node: The node whose rule this is, for error messages.

    Raises:
        RuleSyntaxError: On a character that starts no token.
    """
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
            continue
        match = _NAME.match(text, position)
        if match:
            word = match.group()
            tokens.append(Token(_WORDS.get(word, TokenKind.NAME), word, position))
            position = match.end()
            continue
        for symbol, kind in _SYMBOLS.items():  # longest symbols come first
            if text.startswith(symbol, position):
                tokens.append(Token(kind, symbol, position))
                position += len(symbol)
                break
        else:
            raise RuleSyntaxError(
                f"Unexpected character '{char}' at position {position}",
                node=node,
                position=position,
                text=text,
            )
    tokens.append(Token(TokenKind.END, "", len(text)))
    return tokens


class TokenStream:
    """A cursor over tokens with the error reporting both parsers share."""

    def __init__(self, text: str, *, node: str | None = None, what: str = "rule") -> None:
        self.text = text
        self.node = node
        self.what = what
        self.tokens = tokenize(text, node=node)
        self.index = 0
        self.depth = 0

    @property
    def current(self) -> Token:
        """The next unread token."""
        return self.tokens[self.index]

    def peek(self, ahead: int = 1) -> Token:
        """The token ``ahead`` places after the current one (``END`` past the end)."""
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        """Consume and return the current token."""
        token = self.current
        if token.kind is not TokenKind.END:
            self.index += 1
        return token

    def accept(self, kind: TokenKind) -> Token | None:
        """Consume the current token if it is of ``kind``."""
        return self.advance() if self.current.kind is kind else None

    def expect(self, kind: TokenKind, wanted: str) -> Token:
        """Consume a token of ``kind`` or fail saying ``wanted`` was expected."""
        token = self.accept(kind)
        if token is None:
            raise self.error(f"expected {wanted}")
        return token

    @contextmanager
    def nested(self) -> Iterator[None]:
        """One level deeper (a parenthesis or a prefix operator at the current token).

        Raises:
            RuleSyntaxError: Deeper than :data:`MAX_NESTING` levels.
        """
        if self.depth >= MAX_NESTING:
            token = self.current
            subject = f"{self.what} of node '{self.node}'" if self.node else self.what
            raise RuleSyntaxError(
                f"Syntax error in {subject} at position {token.position}: "
                f"more than {MAX_NESTING} levels of nesting (parentheses and operators)",
                node=self.node,
                position=token.position,
                text=self.text,
            )
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def error(self, expectation: str, token: Token | None = None) -> RuleSyntaxError:
        """A syntax error at ``token`` (default: the current one)."""
        token = token or self.current
        subject = f"{self.what} of node '{self.node}'" if self.node else self.what
        return RuleSyntaxError(
            f"Syntax error in {subject} at position {token.position}: "
            f"{expectation}, found {token.describe()}",
            node=self.node,
            position=token.position,
            text=self.text,
        )


# ------------------------------------------------------------------- parser


class _RuleParser:
    """Recursive descent over::

    rule    := or_expr END
    or_expr := and_expr (("or" | "|") and_expr)*
    and_expr:= unary (("and" | "&") unary)*
    unary   := ("not" | "!") unary | atom
    atom    := NAME | "true" | "false" | "(" or_expr ")"
    """

    def __init__(self, text: str, node: str | None) -> None:
        self.stream = TokenStream(text, node=node)

    def parse(self) -> Expr:
        expr = self.or_expr()
        if self.stream.current.kind is not TokenKind.END:
            raise self.stream.error("expected an operator or the end of the rule")
        return expr

    def or_expr(self) -> Expr:
        operands = [self.and_expr()]
        while self.stream.accept(TokenKind.OR):
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self) -> Expr:
        operands = [self.unary()]
        while self.stream.accept(TokenKind.AND):
            operands.append(self.unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def unary(self) -> Expr:
        if self.stream.current.kind is TokenKind.NOT:
            with self.stream.nested():
                self.stream.advance()
                return Not(self.unary())
        return self.atom()

    def atom(self) -> Expr:
        token = self.stream.current
        if token.kind is TokenKind.NAME:
            self.stream.advance()
            return Var(token.text, token.position)
        if token.kind in (TokenKind.TRUE, TokenKind.FALSE):
            self.stream.advance()
            return Const(token.kind is TokenKind.TRUE)
        if token.kind is TokenKind.LPAREN:
            with self.stream.nested():
                self.stream.advance()
                expr = self.or_expr()
                self.stream.expect(TokenKind.RPAREN, "')'")
                return expr
        raise self.stream.error("expected a node name, 'true', 'false', 'not' or '('")


def parse_rule(text: str, *, node: str | None = None) -> Expr:
    """Parse a Boolean update rule.

    Precedence, tightest first: ``not``, ``and``, ``or``.

    Args:
        text: The rule, e.g. ``"a and not (b | c)"``.
        node: The node it updates, for error messages.

    Returns:
        The rule's syntax tree.

    Raises:
        RuleSyntaxError: With the 0-based ``position`` where parsing failed.
    """
    return _RuleParser(text, node).parse()


# ------------------------------------------------------------------ network


class UpdateScheme(enum.StrEnum):
    """How a state's successors are computed."""

    SYNCHRONOUS = "synchronous"
    ASYNCHRONOUS = "asynchronous"


def _compile(expr: Expr, index: Mapping[str, int]) -> str:
    """Python source of ``expr`` over the state ``s``; names become bit tests."""
    if isinstance(expr, Const):
        return "True" if expr.value else "False"
    if isinstance(expr, Var):
        return f"(s >> {index[expr.name]} & 1 == 1)"
    if isinstance(expr, Not):
        return f"(not {_compile(expr.operand, index)})"
    joiner = " and " if isinstance(expr, And) else " or "
    return "(" + joiner.join(_compile(op, index) for op in expr.operands) + ")"


class BooleanNetwork:
    """A Boolean network with at most :data:`MAX_NODES` nodes.

    Example::

        toggle = BooleanNetwork({"x": "not y", "y": "not x"}, update="asynchronous")
        graph = toggle.transition_graph()
        graph.successors(toggle.encode({"x": True, "y": True}))  # [0b10, 0b01]

    Args:
        rules: Update rule of each node, as text or as an already parsed :data:`Expr`.
            The order of the mapping is the order of the state's bits.
        update: ``"synchronous"`` or ``"asynchronous"``.

    Raises:
        NetworkSizeError: More than :data:`MAX_NODES` nodes, or none.
        RuleSyntaxError: A rule does not parse, or a node name is not a valid name.
        UnknownNodeError: A rule uses a name that is not a node.
        ValueError: An unknown update scheme.
    """

    def __init__(
        self,
        rules: Mapping[str, str | Expr],
        update: UpdateScheme | str = UpdateScheme.SYNCHRONOUS,
    ) -> None:
        if not rules:
            raise NetworkSizeError("A network needs at least one node")
        if len(rules) > MAX_NODES:
            raise NetworkSizeError(
                f"The network has {len(rules)} nodes; at most {MAX_NODES} are supported"
            )
        self.update = UpdateScheme(update)
        self.nodes: tuple[str, ...] = tuple(rules)
        for name in self.nodes:
            if not _NAME.fullmatch(name) or name in RESERVED_WORDS:
                raise RuleSyntaxError(
                    f"'{name}' is not a valid node name (letters, digits, '_' and '.', "
                    "not starting with a digit, not a reserved word)",
                    node=name,
                )
        self.index: dict[str, int] = {name: i for i, name in enumerate(self.nodes)}
        self.rules: dict[str, Expr] = {}
        for name, rule in rules.items():
            expr = parse_rule(rule, node=name) if isinstance(rule, str) else rule
            for var in variables(expr):
                if var.name not in self.index:
                    raise UnknownNodeError(
                        var.name,
                        where=f"the rule of node '{name}'",
                        node=name,
                        position=var.position,
                        text=rule if isinstance(rule, str) else None,
                    )
            self.rules[name] = expr
        self._next_state = self._compile_next_state()

    def _compile_next_state(self) -> Callable[[int], int]:
        # The source is built only from our own syntax tree (bit indices and
        # operators), never from user text, so compiling it is safe.
        terms = [
            f"({_compile(self.rules[name], self.index)} and {1 << i})"
            for i, name in enumerate(self.nodes)
        ]
        source = "def next_state(s):\n    return 0 | " + " | ".join(terms) + "\n"
        namespace: dict[str, Callable[[int], int]] = {}
        exec(compile(source, "<boolean network>", "exec"), namespace)
        return namespace["next_state"]

    @property
    def state_count(self) -> int:
        """Number of states: 2 ** number of nodes."""
        return 1 << len(self.nodes)

    def next_state(self, state: int) -> int:
        """The state every rule gives from ``state`` (the synchronous successor)."""
        return self._next_state(state)

    def encode(self, values: Mapping[str, bool]) -> int:
        """The state with these node values (every node must be given).

        Raises:
            UnknownNodeError: A name that is not a node.
            ValueError: A node is missing.
        """
        pattern, fixed = self.partial(values)
        if fixed != self.state_count - 1:
            missing = [n for i, n in enumerate(self.nodes) if not fixed >> i & 1]
            raise ValueError(f"No value for node(s) {', '.join(missing)}")
        return pattern

    def partial(self, values: Mapping[str, bool]) -> tuple[int, int]:
        """A partial assignment as ``(pattern, fixed)`` bit masks.

        A state ``s`` matches when ``s & fixed == pattern``.

        Raises:
            UnknownNodeError: A name that is not a node.
        """
        pattern = fixed = 0
        for name, value in values.items():
            if name not in self.index:
                raise UnknownNodeError(name, where="the initial state", node=name)
            bit = 1 << self.index[name]
            fixed |= bit
            if value:
                pattern |= bit
        return pattern, fixed

    def decode(self, state: int) -> dict[str, bool]:
        """``{"node": value}`` for ``state``."""
        return {name: bool(state >> i & 1) for i, name in enumerate(self.nodes)}

    def states_matching(self, values: Mapping[str, bool] | None = None) -> Iterator[int]:
        """Every state agreeing with the partial assignment ``values`` (all when None)."""
        pattern, fixed = self.partial(values or {})
        free = [1 << i for i in range(len(self.nodes)) if not fixed >> i & 1]
        for combination in range(1 << len(free)):
            state = pattern
            for j, bit in enumerate(free):
                if combination >> j & 1:
                    state |= bit
            yield state

    def transition_graph(
        self, initial: Iterable[int] | None = None, deadline: Deadline = NO_DEADLINE
    ) -> TransitionGraph:
        """The state transition graph reachable from ``initial`` (default: all states).

        Raises:
            TimeLimitError: Exploring it took longer than ``deadline`` allows.
        """
        return TransitionGraph(self, initial, deadline)


class TransitionGraph:
    """The states reachable from some initial states, and their transitions.

    Every state has at least one successor (see the module docstring).  States
    are ints; only reachable states are explored, and per-state data is kept
    in flat arrays indexed by state.

    Example::

        graph = network.transition_graph([network.encode({"a": True, "b": False})])
        for state in graph.states: print(network.decode(state), graph.successors(state))

    Args:
        network: The network.
        initial: Initial states; all 2**n states when ``None``.
        deadline: Polled while exploring, and by the searches over the graph.

    Raises:
        TimeLimitError: Exploring took longer than ``deadline`` allows.
    """

    def __init__(
        self,
        network: BooleanNetwork,
        initial: Iterable[int] | None = None,
        deadline: Deadline = NO_DEADLINE,
    ) -> None:
        self.network = network
        self.deadline = deadline
        self.size = network.state_count
        self.asynchronous = network.update is UpdateScheme.ASYNCHRONOUS
        self._bits = tuple(1 << i for i in range(len(network.nodes)))
        # _next[s]: the synchronous successor; for the asynchronous scheme
        # _next[s] ^ s is the set of nodes that may change in s.
        self._next: list[int] = [0] * self.size
        self.reachable = bytearray(self.size)
        self.is_initial = bytearray(self.size)
        self.initial: list[int] = []
        self.states: list[int] = []
        self._explore(range(self.size) if initial is None else initial)
        self._predecessors: dict[int, list[int]] | None = None

    def _explore(self, initial: Iterable[int]) -> None:
        next_state = self.network.next_state
        if isinstance(initial, range) and initial == range(self.size):
            # Every state is initial, hence reachable: no search needed.
            self.initial = self.states = list(initial)
            self._next = []
            for start in range(0, self.size, Deadline.CHECK_EVERY):
                self.deadline.check()
                chunk = range(start, min(start + Deadline.CHECK_EVERY, self.size))
                self._next.extend(map(next_state, chunk))
            self.reachable[:] = self.is_initial[:] = b"\x01" * self.size
            return
        queue: deque[int] = deque()
        for state in initial:
            if not 0 <= state < self.size:
                raise ValueError(f"{state} is not a state of this network")
            if self.is_initial[state]:
                continue
            self.is_initial[state] = 1
            self.initial.append(state)
            if not self.reachable[state]:
                self.reachable[state] = 1
                queue.append(state)
        tick = self.deadline.tick
        while queue:
            tick()
            state = queue.popleft()
            self.states.append(state)
            self._next[state] = next_state(state)
            for successor in self.successors(state):
                if not self.reachable[successor]:
                    self.reachable[successor] = 1
                    queue.append(successor)

    def successors(self, state: int) -> list[int]:
        """The successors of reachable ``state`` (never empty)."""
        target = self._next[state]
        if not self.asynchronous:
            return [target]
        changed = target ^ state
        if not changed:
            return [state]
        return [state ^ bit for bit in self._bits if changed & bit]

    def predecessors(self, state: int) -> list[int]:
        """The reachable states that have ``state`` as a successor."""
        if not self.asynchronous:
            if self._predecessors is None:
                self._predecessors = {}
                for source in self.states:
                    self._predecessors.setdefault(self._next[source], []).append(source)
            return self._predecessors.get(state, [])
        result = [state] if self._next[state] == state else []
        for bit in self._bits:
            source = state ^ bit
            # source steps to state by flipping `bit` when its rule disagrees there
            if self.reachable[source] and (self._next[source] ^ source) & bit:
                result.append(source)
        return result

    def backward_search(self, goal: bytearray, through: bytearray) -> bytearray:
        """The states with a path to ``goal`` whose states before the last are in ``through``.

        ``through`` must be zero outside the reachable states.  This is
        ``E[through U goal]``, the model checker's hot loop, so the asynchronous
        case computes predecessors inline.
        """
        result = bytearray(goal)
        frontier = [state for state in self.states if goal[state]]
        tick = self.deadline.tick
        if not self.asynchronous:
            while frontier:
                tick()
                for source in self.predecessors(frontier.pop()):
                    if through[source] and not result[source]:
                        result[source] = 1
                        frontier.append(source)
            return result
        next_state, bits = self._next, self._bits
        while frontier:
            tick()
            state = frontier.pop()
            for bit in bits:
                source = state ^ bit
                # source steps to state when its rule for `bit` agrees with state
                if (
                    through[source]
                    and not result[source]
                    and not (next_state[source] ^ state) & bit
                ):
                    result[source] = 1
                    frontier.append(source)
        return result

    def is_fixed_point(self, state: int) -> bool:
        """True when ``state`` is its own (only) successor."""
        return self._next[state] == state

    def shortest_path(
        self, sources: Iterable[int], targets: bytearray, through: bytearray | None = None
    ) -> list[int] | None:
        """A shortest path from one of ``sources`` to a state marked in ``targets``.

        Args:
            sources: Where the path may start.
            targets: A 0/1 mark per state.
            through: When given, every state before the last must be marked here.

        Returns:
            The path's states, or ``None`` when no target is reachable that way.
        """
        parent: dict[int, int] = {}
        queue: deque[int] = deque()
        for source in sources:
            if source not in parent:
                parent[source] = -1
                queue.append(source)
        tick = self.deadline.tick
        while queue:
            tick()
            state = queue.popleft()
            if targets[state]:
                path = [state]
                while parent[path[-1]] != -1:
                    path.append(parent[path[-1]])
                return path[::-1]
            if through is not None and not through[state]:
                continue
            for successor in self.successors(state):
                if successor not in parent:
                    parent[successor] = state
                    queue.append(successor)
        return None

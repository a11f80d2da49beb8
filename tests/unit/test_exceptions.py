"""The exception hierarchy and the envelope it renders to."""

from __future__ import annotations

import copy
import enum
import itertools
import json
import math
import pickle
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gennet_sync.exceptions import (
    MAX_METADATA_ITEMS,
    MAX_METADATA_VALUES,
    MAX_RETRY_AFTER,
    MAX_STRING_LENGTH,
    ConflictError,
    ForbiddenError,
    GenNetException,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
    json_safe,
    retry_after_seconds,
)

# (instance, status, code, message, metadata, headers) for every class in DESIGN.md's table.
TABLE: list[tuple[GenNetException, int, str, str, dict[str, Any], dict[str, str]]] = [
    (
        NotFoundError("Network", "abc123"),
        404,
        "NOT_FOUND",
        "Network with id 'abc123' not found",
        {"resource_type": "Network", "resource_id": "abc123"},
        {},
    ),
    (
        ValidationError("Too many nodes", field="nodes"),
        422,
        "VALIDATION_ERROR",
        "Too many nodes",
        {"field": "nodes"},
        {},
    ),
    (
        ValidationError("Bad body", errors={"name": ["Missing"]}),
        422,
        "VALIDATION_ERROR",
        "Bad body",
        {"errors": {"name": ["Missing"]}},
        {},
    ),
    (UnauthorizedError(), 401, "UNAUTHORIZED", "Authentication required", {}, {}),
    (ForbiddenError(), 403, "FORBIDDEN", "Access forbidden", {}, {}),
    (ConflictError("Name taken"), 409, "CONFLICT", "Name taken", {}, {}),
    (ServiceUnavailableError(), 503, "SERVICE_UNAVAILABLE", "Service unavailable", {}, {}),
    (
        ServiceUnavailableError("down", service="grn", retry_after=30),
        503,
        "SERVICE_UNAVAILABLE",
        "down",
        {"service": "grn", "retry_after": 30},
        {"Retry-After": "30"},
    ),
    (RateLimitError(), 429, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded", {}, {}),
    (
        RateLimitError(retry_after=2.2),
        429,
        "RATE_LIMIT_EXCEEDED",
        "Rate limit exceeded",
        {"retry_after": 2.2},
        {"Retry-After": "3"},
    ),
    (InternalServerError(), 500, "INTERNAL_SERVER_ERROR", "Internal server error", {}, {}),
]


@pytest.mark.parametrize(("error", "status", "code", "message", "metadata", "headers"), TABLE)
def test_each_class_renders_its_row_of_the_table(
    error: GenNetException,
    status: int,
    code: str,
    message: str,
    metadata: dict[str, Any],
    headers: dict[str, str],
) -> None:
    assert error.status_code == status
    assert error.code == code
    assert error.message == message
    assert error.metadata == metadata
    assert error.headers == headers
    assert error.to_dict() == {
        "error": {
            "code": code,
            "type": type(error).__name__,
            "message": message,
            "metadata": metadata,
        }
    }
    assert str(error) == message


def test_every_subclass_is_a_gennet_exception_and_catchable_as_one() -> None:
    with pytest.raises(GenNetException) as caught:
        raise NotFoundError("Gene", 7)
    assert caught.value.metadata == {"resource_type": "Gene", "resource_id": 7}


def test_metadata_keyword_is_merged_into_the_class_metadata() -> None:
    error = NotFoundError("Network", "x", metadata={"hint": "check the id"})
    assert error.metadata == {
        "resource_type": "Network",
        "resource_id": "x",
        "hint": "check the id",
    }
    unavailable = ServiceUnavailableError(service="a", metadata={"service": "b"})
    assert unavailable.metadata["service"] == "b"
    assert ConflictError("dup", metadata={"name": "n"}).metadata == {"name": "n"}


def test_code_can_be_overridden_per_instance_without_changing_the_class() -> None:
    error = ConflictError("Version mismatch", code="VERSION_CONFLICT")
    assert error.to_dict()["error"]["code"] == "VERSION_CONFLICT"
    assert ConflictError("x").code == "CONFLICT"


def test_retry_after_header_is_whole_seconds_rounded_up_and_never_negative() -> None:
    assert ServiceUnavailableError(retry_after=0.01).headers == {"Retry-After": "1"}
    assert ServiceUnavailableError(retry_after=0).headers == {"Retry-After": "0"}
    assert ServiceUnavailableError(retry_after=-5).headers == {"Retry-After": "0"}


@pytest.mark.parametrize("retry_after", [math.inf, -math.inf, math.nan])
def test_a_non_finite_retry_after_gives_no_header_instead_of_failing(retry_after: float) -> None:
    assert ServiceUnavailableError(retry_after=retry_after).headers == {}
    assert RateLimitError(retry_after=retry_after).headers == {}


def test_a_custom_subclass_gets_the_envelope_from_class_attributes() -> None:
    class PaymentRequiredError(GenNetException):
        status_code = 402
        code = "PAYMENT_REQUIRED"

    error = PaymentRequiredError("Plan limit reached", metadata={"plan": "free"})
    assert error.status_code == 402
    assert error.to_dict()["error"] == {
        "code": "PAYMENT_REQUIRED",
        "type": "PaymentRequiredError",
        "message": "Plan limit reached",
        "metadata": {"plan": "free"},
    }


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class _Color(enum.IntEnum):
    RED = 1


def test_metadata_that_json_cannot_encode_is_rendered_as_strings() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    error = GenNetException(
        "odd",
        metadata={
            "obj": object(),
            "set": {1},
            "tuple": (1, "a"),
            "nan": math.nan,
            "inf": -math.inf,
            "bytes": b"\x00\xff",
            "keys": {1: "one", (2, 3): "pair"},
            "unprintable": _Unprintable(),
            "cyclic": cyclic,
            "enum": _Color.RED,
        },
    )
    envelope = error.to_dict()
    text = json.dumps(envelope, allow_nan=False)
    metadata = json.loads(text)["error"]["metadata"]
    assert metadata["set"] == [1]
    assert metadata["tuple"] == [1, "a"]
    assert metadata["nan"] == "nan"
    assert metadata["inf"] == "-inf"
    assert metadata["keys"] == {"1": "one", "(2, 3)": "pair"}
    assert metadata["unprintable"] == "<unprintable _Unprintable>"
    assert metadata["enum"] == 1
    assert isinstance(metadata["cyclic"]["self"], str)


def test_deep_nesting_is_cut_off_instead_of_recursing_forever() -> None:
    nested: list[Any] = []
    for _ in range(10_000):
        nested = [nested]
    rendered = json_safe({"deep": nested})
    json.dumps(rendered)
    level, inner = 0, rendered["deep"]
    while isinstance(inner, list):
        level, inner = level + 1, inner[0]
    # The mapping and 31 lists are rendered; the 32nd level becomes its string.
    assert level == 31
    assert isinstance(inner, str)


def _containers_of(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function: hypothesis reads a lambda's source to check it recurses,
    # which misfires on a multi-line lambda.
    return st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=8), children, max_size=4
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    _containers_of,
    max_leaves=20,
)
anything = json_values | st.builds(object) | st.binary() | st.sets(st.integers(), max_size=3)


@given(
    message=st.text(),
    metadata=st.dictionaries(st.text(max_size=10), anything, max_size=6),
    code=st.none() | st.text(min_size=1, max_size=20),
)
def test_any_message_and_metadata_give_a_valid_envelope(
    message: str, metadata: dict[str, Any], code: str | None
) -> None:
    envelope = GenNetException(message, code=code, metadata=metadata).to_dict()
    decoded = json.loads(json.dumps(envelope, allow_nan=False))
    assert set(decoded) == {"error"}
    assert set(decoded["error"]) == {"code", "type", "message", "metadata"}
    # Messages over the bound are cut (tested below); hypothesis rarely draws one.
    assert decoded["error"]["message"].startswith(message[:MAX_STRING_LENGTH])
    assert (decoded["error"]["message"] == message) is (len(message) <= MAX_STRING_LENGTH)
    assert decoded["error"]["code"] == (code or "INTERNAL_SERVER_ERROR")
    assert set(decoded["error"]["metadata"]) == set(metadata)


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("Network", "abc123", metadata={"tenant": "t1"}),
        ValidationError("Too many nodes", field="nodes", errors=["x"]),
        ServiceUnavailableError("down", service="grn", retry_after=3),
        RateLimitError(retry_after=2),
        ConflictError("Version mismatch", code="VERSION_CONFLICT"),
        GenNetException("plain", metadata={"a": 1}),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_survive_pickling_and_copying(error: GenNetException) -> None:
    for twin in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(twin) is type(error)
        assert twin.to_dict() == error.to_dict()
        assert twin.headers == error.headers
        assert twin.args == error.args
        assert vars(twin) == vars(error)


class _Shout(str):
    def __str__(self) -> str:
        return "SHOUTED"


class _BrokenMapping(Mapping[str, Any]):
    """A mapping whose items cannot be listed (a lazy view over a closed resource)."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("closed")

    def __len__(self) -> int:
        return 1

    def __str__(self) -> str:
        return "<broken mapping>"


def test_json_values_keep_their_json_type() -> None:
    rendered = GenNetException(
        "x", metadata={"flag": True, "off": False, "none": None, "n": 3, "f": 1.5, "s": "a"}
    ).to_dict()["error"]["metadata"]
    # True stays true, not 1: bool is an int subclass, yet a client reads a boolean.
    assert rendered == {"flag": True, "off": False, "none": None, "n": 3, "f": 1.5, "s": "a"}
    assert rendered["flag"] is True and rendered["off"] is False


def test_int_and_str_subclasses_become_plain_values_without_their_overrides() -> None:
    rendered = json_safe({"enum": _Color.RED, "shout": _Shout("quiet")})
    assert type(rendered["enum"]) is int and rendered["enum"] == 1
    assert type(rendered["shout"]) is str and rendered["shout"] == "quiet"


def test_a_mapping_that_cannot_be_listed_is_rendered_as_its_string() -> None:
    assert json_safe({"view": _BrokenMapping()}) == {"view": "<broken mapping>"}


def test_nesting_up_to_the_limit_is_rendered_intact() -> None:
    nested: Any = "leaf"
    for _ in range(15):  # 30 levels of containers, under the 32-level cut-off
        nested = {"child": [nested]}
    assert json_safe(nested) == nested


_NOW = datetime.now(UTC)


@pytest.mark.parametrize(
    ("retry_after", "header", "seconds"),
    [
        (30, "30", 30),
        (2.5, "3", 2.5),
        ("30", "30", 30),
        (" 1.5 ", "2", 1.5),
        (timedelta(minutes=2), "120", 120),
        (timedelta(seconds=-3), "0", 0),
        (Decimal("4.25"), "5", 4.25),
        (Fraction(1, 2), "1", 0.5),
        (9_999_999_999, "9999999999", 9_999_999_999),  # ten digits: the most kept
        (_NOW - timedelta(hours=1), "0", 0),  # a moment already past: retry now
    ],
)
def test_retry_after_accepts_what_users_naturally_pass(
    retry_after: Any, header: str, seconds: float
) -> None:
    for error in (
        ServiceUnavailableError(retry_after=retry_after),
        RateLimitError(retry_after=retry_after),
    ):
        assert error.headers == {"Retry-After": header}
        assert error.retry_after == seconds
        assert error.to_dict()["error"]["metadata"]["retry_after"] == seconds


@pytest.mark.parametrize(
    "moment_of",
    [
        lambda at: at,
        lambda at: at.replace(tzinfo=None),  # naive: UTC, as in HTTP
        lambda at: at.astimezone(timezone(timedelta(hours=-5))),
        lambda at: format_datetime(at, usegmt=True),  # a downstream's header
    ],
    ids=["aware", "naive-utc", "other-zone", "http-date"],
)
def test_retry_after_as_a_moment_counts_from_now(moment_of: Callable[[datetime], Any]) -> None:
    moment = moment_of(datetime.now(UTC) + timedelta(seconds=90))
    delay = int(ServiceUnavailableError(retry_after=moment).headers["Retry-After"])
    assert 80 <= delay <= 91  # 90 s less the time since, on a loaded machine


@pytest.mark.parametrize(
    "junk",
    ["soon", "", "nan", "inf", "-inf", "1e999", True, object(), [30], {"s": 30}, b"30", math.nan],
)
def test_an_unusable_retry_after_is_dropped_never_fatal(junk: Any) -> None:
    for error in (ServiceUnavailableError(retry_after=junk), RateLimitError(retry_after=junk)):
        assert error.retry_after is None
        assert error.headers == {}
        assert "retry_after" not in error.to_dict()["error"]["metadata"]


def test_a_retry_after_set_after_construction_is_normalised_when_rendered() -> None:
    error = ServiceUnavailableError()
    error.retry_after = "7"  # type: ignore[assignment]
    assert error.headers == {"Retry-After": "7"}
    error.retry_after = "junk"  # type: ignore[assignment]
    assert error.headers == {}


def test_a_long_message_and_long_metadata_strings_are_cut_saying_how_much() -> None:
    envelope = GenNetException("m" * 5000, metadata={"k" * 2000: "v" * 1500}).to_dict()["error"]
    assert envelope["message"] == "m" * MAX_STRING_LENGTH + "... (4000 more characters)"
    [(key, value)] = envelope["metadata"].items()
    assert key == "k" * MAX_STRING_LENGTH + "... (1000 more characters)"
    assert value == "v" * MAX_STRING_LENGTH + "... (500 more characters)"
    # The exception itself keeps what it was given.
    assert len(GenNetException("m" * 5000).message) == 5000


def test_big_mappings_and_lists_keep_their_first_items_and_count_the_rest() -> None:
    metadata = {"ids": list(range(10_000)), "seen": {f"k{i}": i for i in range(10_000)}}
    rendered = json_safe(metadata)
    assert rendered["ids"] == [*range(MAX_METADATA_ITEMS), f"... ({10_000 - 100} more items)"]
    assert len(rendered["seen"]) == MAX_METADATA_ITEMS + 1
    assert rendered["seen"]["k99"] == 99
    assert rendered["seen"]["..."] == f"{10_000 - MAX_METADATA_ITEMS} more keys"


def test_the_whole_metadata_is_bounded_however_it_is_spread() -> None:
    # 100 lists of 100 items: each container is under its own bound, the whole is not.
    rendered = json_safe({f"list{i}": list(range(100)) for i in range(100)})
    text = json.dumps(rendered)
    assert len(text) < 10 * MAX_METADATA_VALUES  # a few KB, not the 30 KB given
    scalars = sum(isinstance(v, int) for items in rendered.values() for v in items)
    assert scalars < MAX_METADATA_VALUES
    assert any(
        isinstance(items[-1], str) and "more items" in items[-1] for items in rendered.values()
    )


def test_a_huge_mapping_is_rendered_without_being_listed() -> None:
    class Endless(Mapping[str, int]):
        """A mapping that would never finish listing its items."""

        def __getitem__(self, key: str) -> int:
            return 1

        def __iter__(self) -> Iterator[str]:
            return (f"k{i}" for i in itertools.count())

        def __len__(self) -> int:
            return 10**12

    rendered = json_safe({"endless": Endless()})
    assert len(rendered["endless"]) == MAX_METADATA_ITEMS + 1
    assert rendered["endless"]["..."] == f"{10**12 - MAX_METADATA_ITEMS} more keys"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (MAX_RETRY_AFTER, MAX_RETRY_AFTER),
        (MAX_RETRY_AFTER + 1, None),
        (10**400, None),
        ("1e300", None),
        (1e300, None),
        ("30", 30),
    ],
)
def test_retry_after_keeps_at_most_ten_digits_of_seconds(given: object, kept: object) -> None:
    assert retry_after_seconds(given) == kept


class _CountingList(list[int]):
    """A list that counts how often it is turned into text."""

    printed = 0

    def __repr__(self) -> str:
        _CountingList.printed += 1
        return super().__repr__()

    __str__ = __repr__


@pytest.fixture
def counting() -> Iterator[type[_CountingList]]:
    _CountingList.printed = 0
    yield _CountingList


@pytest.mark.parametrize("levels", range(26, 36))
def test_a_container_past_the_depth_limit_is_summed_up_not_printed(
    counting: type[_CountingList], levels: int
) -> None:
    # Whichever level the limit falls on, the big list is never turned into text.
    deep: list[object] = []
    inner = deep
    for _ in range(levels):
        nested: list[object] = []
        inner.append(nested)
        inner = nested
    inner.append(counting(range(1_000_000)))
    text = repr(json_safe({"x": deep}))
    assert counting.printed == 0
    assert len(text) < 1000
    if levels == 30:  # the big list itself sits at the limit
        assert "<_CountingList of 1000000 items>" in text


def test_a_cycle_is_summed_up_not_printed(counting: type[_CountingList]) -> None:
    cycle: dict[str, object] = {"items": counting(range(1_000_000))}
    cycle["self"] = cycle
    rendered = json_safe(cycle)
    assert counting.printed == 0
    assert rendered["self"] == "<dict of 2 items>"
    assert len(rendered["items"]) == 101  # 100 items and the count of the rest


def test_bytes_are_cut_before_they_are_printed() -> None:
    rendered = json_safe({"body": b"\x00" * 20_000_000})
    assert rendered["body"].endswith("(20000000 bytes)")
    assert len(rendered["body"]) < 1100

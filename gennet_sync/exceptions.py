"""The exception hierarchy and the JSON error envelope it renders to.

Every error a gennet_sync service returns has the same shape::

    {"error": {"code": "NOT_FOUND", "type": "NotFoundError",
               "message": "Network with id 'abc123' not found",
               "metadata": {"resource_type": "Network", "resource_id": "abc123"}}}

Defaults (``status_code``, ``code``, ``default_message``) are class attributes, and
the HTTP headers a response must carry come from one hook, :meth:`get_headers`,
the way werkzeug's ``HTTPException`` does it.  So is what the error catalogue and
the OpenAPI document say about a class: ``description`` (one line) and
``metadata_fields`` (the keys its ``metadata`` carries, each a
:class:`MetadataField`).  This module imports nothing else from
the package, nor Flask, nor requests.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypeAlias

__all__ = [
    "MAX_FIELD_ERRORS",
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_ITEMS",
    "MAX_METADATA_VALUES",
    "MAX_RETRY_AFTER",
    "MAX_STRING_LENGTH",
    "BulkheadFullError",
    "ConflictError",
    "DeadlineExceededError",
    "ForbiddenError",
    "GenNetException",
    "InternalServerError",
    "MetadataField",
    "NotFoundError",
    "RateLimitError",
    "RetryAfter",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "ValidationError",
    "json_safe",
    "make_envelope",
    "retry_after_seconds",
]

# Bounds on what one envelope renders, whatever it is given: the cost of an error
# response follows what is kept, not what a hostile request made a schema report.
#: Longest ``message``, and longest string or key in ``metadata``, in characters;
#: longer ones end with ``... (N more characters)``.
MAX_STRING_LENGTH = 1000
#: Most keys of one mapping, or items of one list, in ``metadata``; the rest is
#: summed up as a ``"..."`` key (``"N more keys"``) or a last ``"... (N more items)"``.
MAX_METADATA_ITEMS = 100
#: Most values (containers and scalars) rendered in one envelope's ``metadata``.
MAX_METADATA_VALUES = 500
#: How deep nested metadata is rendered before the rest is turned into a string.
MAX_METADATA_DEPTH = 32
#: Most fields a 422 ``VALIDATION_ERROR`` lists in ``metadata.fields``, depth first;
#: ``metadata.fields_omitted`` counts the entries left out (a nested object as one).
MAX_FIELD_ERRORS = 50
#: The longest ``retry_after`` kept, in seconds (ten digits, over 300 years, as
#: ``ServiceSession`` reads a ``Retry-After``); a longer one is dropped, not fatal.
MAX_RETRY_AFTER = 9_999_999_999


def _to_str(value: object) -> str:
    """``str(value)``, or something printable when ``__str__`` itself fails."""
    try:
        return str(value)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__name__}>"


def _cut(text: str) -> str:
    """``text`` cut to :data:`MAX_STRING_LENGTH` characters, saying how much was cut."""
    if len(text) <= MAX_STRING_LENGTH:
        return text
    return f"{text[:MAX_STRING_LENGTH]}... ({len(text) - MAX_STRING_LENGTH} more characters)"


#: An integer with more bits than this has more decimal digits than a string may
#: hold (and Python refuses to print one past 4300 digits): it is rendered by size.
_MAX_INT_BITS = int(MAX_STRING_LENGTH / math.log10(2))


def _summary(value: object) -> str:
    """A short string for ``value``, costing what is kept, not what was given.

    Used where the value itself is not rendered: past the depth limit, at a cycle,
    and for objects JSON has no form for.
    """
    if isinstance(value, int):  # only the huge ones get here
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"<integer of about {digits} digits>"
    if isinstance(value, (bytes, bytearray, memoryview)):
        shown = _cut(repr(bytes(value[:MAX_STRING_LENGTH])))
        return shown if len(value) <= MAX_STRING_LENGTH else f"{shown} ({len(value)} bytes)"
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        return f"<{type(value).__name__} of {_left_over(value, 0)} items>"
    return _cut(_to_str(value))


def _left_over(container: object, shown: int) -> str:
    try:
        return str(len(container) - shown)  # type: ignore[arg-type]
    except Exception:
        return "some"


def json_safe(value: object) -> Any:
    """Return ``value`` as something ``json.dumps`` accepts, bounded, without ever raising.

    Dict keys become strings, tuples and sets become lists, non-finite floats and
    any other object become their string form.  Cycles and nesting deeper than
    :data:`MAX_METADATA_DEPTH` levels are cut off as strings, so no input can make
    rendering fail; and the result is bounded (:data:`MAX_STRING_LENGTH`,
    :data:`MAX_METADATA_ITEMS`, :data:`MAX_METADATA_VALUES`), its cost following
    what is kept: a mapping of a million keys costs a hundred.

    Args:
        value: Any object.

    Returns:
        A JSON-serialisable copy of ``value``, cut where it passes a bound.
    """
    return _Renderer().render(value, 0, frozenset())


class _Renderer:
    """One :func:`json_safe` walk, with its budget of values left to render."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_METADATA_VALUES

    def render(self, value: object, depth: int, seen: frozenset[int]) -> Any:
        self.left -= 1
        if value is None or isinstance(value, bool):
            return value
        # Subclasses (IntEnum, StrEnum...) are rendered as their plain value, without
        # calling methods they may have overridden.
        if isinstance(value, int):
            number = int.__index__(value)
            return number if number.bit_length() <= _MAX_INT_BITS else _summary(number)
        if isinstance(value, str):
            return _cut(str.__str__(value))
        if isinstance(value, float):
            return value if math.isfinite(value) else _to_str(value)
        if depth >= MAX_METADATA_DEPTH or id(value) in seen:
            return _summary(value)
        inner = seen | {id(value)}
        try:
            if isinstance(value, Mapping):
                return self._mapping(value, depth + 1, inner)
            if isinstance(value, (list, tuple, set, frozenset)):
                return self._sequence(value, depth + 1, inner)
        except Exception:  # a mapping whose items() fails, a set changed meanwhile
            return _cut(_to_str(value))
        return _summary(value)

    def _mapping(self, value: Mapping[Any, Any], depth: int, seen: frozenset[int]) -> Any:
        rendered: dict[str, Any] = {}
        # Lazily: a million keys are never all listed.
        for shown, (key, item) in enumerate(value.items()):
            if shown == MAX_METADATA_ITEMS or self.left <= 0:
                rendered["..."] = f"{_left_over(value, shown)} more keys"
                break
            rendered[_cut(_to_str(key))] = self.render(item, depth, seen)
        return rendered

    def _sequence(self, value: Any, depth: int, seen: frozenset[int]) -> Any:
        rendered: list[Any] = []
        for item in value:
            if len(rendered) == MAX_METADATA_ITEMS or self.left <= 0:
                rendered.append(f"... ({_left_over(value, len(rendered))} more items)")
                break
            rendered.append(self.render(item, depth, seen))
        return rendered


def make_envelope(
    code: str, type_: str, message: str, metadata: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Build the error envelope; the one place its shape is defined.

    Args:
        code: Machine-readable code in UPPER_SNAKE (``NOT_FOUND``).
        type_: The error's type name (``NotFoundError``).
        message: Human-readable message; cut to :data:`MAX_STRING_LENGTH` characters.
        metadata: Extra details; made JSON-safe and bounded here (:func:`json_safe`).

    Returns:
        ``{"error": {"code", "type", "message", "metadata"}}``.
    """
    safe = json_safe(metadata) if metadata else {}
    return {
        "error": {
            "code": _cut(_to_str(code)),
            "type": _cut(_to_str(type_)),
            "message": _cut(_to_str(message)),
            "metadata": safe if isinstance(safe, dict) else {"value": safe},
        }
    }


@dataclass(frozen=True)
class MetadataField:
    """One key an error's ``metadata`` carries, as the error catalogue documents it.

    Example::

        class QuotaExceededError(GenNetException):
            status_code = 429
            code = "QUOTA_EXCEEDED"
            description = "The account used up its monthly quota"
            metadata_fields = {
                "quota": MetadataField(int, "Requests allowed per month", required=True,
                                       example=10_000),
            }

    Attributes:
        type: The Python type of the value, or a tuple of them (``(int, float)``):
            ``str``, ``int``, ``float``, ``bool``, ``list``, ``dict``, ``type(None)``,
            or ``object`` for any JSON value.  The catalogue shows it as JSON Schema.
        description: What the value means, in one line.
        required: Every envelope of this class carries the key.
        example: A value for the example envelope; ``None`` leaves the key out.
    """

    type: type | tuple[type, ...] = object
    description: str = ""
    required: bool = False
    example: Any = None


class GenNetException(Exception):
    """Base of every gennet_sync error; rendered as the JSON envelope.

    Subclasses set ``status_code``, ``code`` and ``default_message`` as class
    attributes and add headers by overriding :meth:`get_headers`.  For the error
    catalogue and the OpenAPI document they may also set ``description`` (one
    line; the first line of the class docstring when unset) and
    ``metadata_fields`` (added to those of the base classes).

    Example::

        class PaymentRequiredError(GenNetException):
            \"\"\"The plan's limit is reached.\"\"\"

            status_code = 402
            code = "PAYMENT_REQUIRED"
            metadata_fields = {"plan": MetadataField(str, "The caller's plan", example="free")}

        raise PaymentRequiredError("Plan limit reached", metadata={"plan": "free"})

    Args:
        message: Human-readable message; ``default_message`` when omitted.
        code: Overrides the class's ``code`` for this instance.
        metadata: Extra details for the envelope's ``metadata``.
    """

    status_code: ClassVar[int] = 500
    code: str = "INTERNAL_SERVER_ERROR"
    default_message: ClassVar[str] = "Internal server error"
    #: One line for the error catalogue; read from the class itself only (a
    #: subclass without one is described by its docstring's first line).
    description: ClassVar[str | None] = None
    #: The keys this class puts in ``metadata``; the catalogue adds the base classes'.
    metadata_fields: ClassVar[Mapping[str, MetadataField]] = {}

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.message: str = self.default_message if message is None else _to_str(message)
        if code is not None:
            self.code = code
        self.metadata: dict[str, Any] = dict(metadata) if metadata else {}
        super().__init__(self.message)

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the error response must carry."""
        return self.get_headers()

    def get_headers(self) -> dict[str, str]:
        """Hook for subclasses that need response headers (``Retry-After``...)."""
        return {}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the JSON envelope; never raises, whatever the metadata holds."""
        return make_envelope(self.code, type(self).__name__, self.message, self.metadata)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling (multiprocessing, a process pool) and copy.copy rebuild an
        # exception by calling its class with its args, but subclass constructors
        # take other arguments than the message (NotFoundError's resource_type and
        # resource_id): rebuild it from its attributes instead.
        return (_restore, (type(self), self.message), self.__dict__)


def _restore(cls: type[GenNetException], message: str) -> GenNetException:
    """A bare ``cls`` instance for unpickling; its attributes are set right after."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(base)
    if extra:
        merged.update(extra)
    return merged


#: What ``retry_after=`` accepts: seconds (a number or a numeric string), an HTTP
#: date string (a downstream's ``Retry-After`` passed on), a ``timedelta``, or the
#: ``datetime`` to come back at (naive means UTC, as in HTTP).
RetryAfter: TypeAlias = float | str | timedelta | datetime | None


def retry_after_seconds(value: object) -> float | None:
    """The delay ``value`` stands for, in seconds, or ``None`` when it says nothing usable.

    Never raises: NaN, infinity, text that is neither a number nor an HTTP date,
    ``True`` and any other type are ``None`` (no ``Retry-After`` header, rather
    than a 500 in place of the 503 being rendered).  A moment in the past, or a
    negative delay, is 0.  A whole number of seconds is returned as an ``int``.

    Example::

        >>> retry_after_seconds("30"), retry_after_seconds(timedelta(minutes=1))
        (30, 60)
        >>> retry_after_seconds("soon") is None
        True
    """
    seconds: float
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        whole = int.__index__(value)
        return None if whole > MAX_RETRY_AFTER else max(0, whole)
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, datetime):
        seconds = _until(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = _until(parsedate_to_datetime(text))
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
    elif isinstance(value, numbers.Number):  # Fraction, Decimal, numpy scalars; complex fails
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            return None
    else:
        return None
    if not math.isfinite(seconds) or seconds > MAX_RETRY_AFTER:
        return None
    seconds = max(0.0, seconds)
    return int(seconds) if seconds.is_integer() else seconds


def _until(moment: datetime) -> float:
    """Seconds from now until ``moment`` (naive: UTC, as HTTP dates are)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime.now(UTC)).total_seconds()


class _RetryAfterMixin(GenNetException):
    """Adds ``retry_after`` (seconds) and the ``Retry-After`` header it implies."""

    retry_after: float | None = None
    metadata_fields: ClassVar[Mapping[str, MetadataField]] = {
        "retry_after": MetadataField(
            (int, float),
            "Seconds to wait before trying again; also the Retry-After header, rounded up",
            example=30,
        ),
    }

    def get_headers(self) -> dict[str, str]:
        headers = super().get_headers()
        # Normalised again: the attribute may have been set after construction.
        seconds = retry_after_seconds(self.retry_after)
        if seconds is not None:
            # HTTP wants whole non-negative seconds; round up so clients never come back early.
            headers["Retry-After"] = str(math.ceil(seconds))
        return headers


class NotFoundError(GenNetException):
    """A resource does not exist (404).

    Example::

        raise NotFoundError("Network", network_id)
    """

    status_code = 404
    code = "NOT_FOUND"
    default_message = "Resource not found"
    description = "The resource named in the request does not exist"
    metadata_fields: ClassVar[Mapping[str, MetadataField]] = {
        "resource_type": MetadataField(str, "The kind of resource", True, "Network"),
        "resource_id": MetadataField(object, "The identifier that was asked for", True, "abc123"),
    }

    def __init__(
        self,
        resource_type: str,
        resource_id: object,
        *,
        metadata: Mapping[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        self.resource_type = resource_type
        self.resource_id = resource_id
        super().__init__(
            f"{resource_type} with id '{_to_str(resource_id)}' not found",
            code=code,
            metadata=_merge({"resource_type": resource_type, "resource_id": resource_id}, metadata),
        )


class ValidationError(GenNetException):
    """The request is well-formed but its content is invalid (422).

    Example::

        raise ValidationError("Too many nodes", field="nodes")
    """

    status_code = 422
    code = "VALIDATION_ERROR"
    default_message = "Validation failed"
    description = "The request is well-formed but its content is invalid"
    metadata_fields: ClassVar[Mapping[str, MetadataField]] = {
        "field": MetadataField(str, "The invalid field (dotted for nested ones)", example="name"),
        "errors": MetadataField(object, "Details of what is invalid"),
    }

    def __init__(
        self,
        message: str | None = None,
        *,
        field: str | None = None,
        errors: Any = None,
        metadata: Mapping[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        self.field = field
        self.errors = errors
        base: dict[str, Any] = {}
        if field is not None:
            base["field"] = field
        if errors is not None:
            base["errors"] = errors
        super().__init__(message, code=code, metadata=_merge(base, metadata))


class UnauthorizedError(GenNetException):
    """Authentication is missing or invalid (401)."""

    status_code = 401
    code = "UNAUTHORIZED"
    default_message = "Authentication required"
    description = "Authentication is missing or invalid"


class ForbiddenError(GenNetException):
    """The caller is authenticated but not allowed (403)."""

    status_code = 403
    code = "FORBIDDEN"
    default_message = "Access forbidden"
    description = "The caller is authenticated but not allowed to do this"


class ConflictError(GenNetException):
    """The request conflicts with the resource's current state (409)."""

    status_code = 409
    code = "CONFLICT"
    default_message = "Conflict"
    description = "The request conflicts with the resource's current state"


class ServiceUnavailableError(_RetryAfterMixin):
    """A dependency or this service cannot serve now (503), maybe with ``Retry-After``.

    ``retry_after`` takes any :data:`RetryAfter` (``30``, ``2.5``, ``"30"``,
    ``timedelta(seconds=30)``, a ``datetime``, an HTTP date); it is kept as seconds
    (:func:`retry_after_seconds`), and a value saying nothing usable is dropped.

    Example::

        raise ServiceUnavailableError("GRN store is down", service="grn", retry_after=30)
    """

    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    default_message = "Service unavailable"
    description = "A dependency or this service cannot serve now; retry later"
    metadata_fields: ClassVar[Mapping[str, MetadataField]] = {
        "service": MetadataField(str, "The service that is unavailable", example="grn-service"),
    }

    def __init__(
        self,
        message: str | None = None,
        *,
        service: str | None = None,
        retry_after: RetryAfter = None,
        metadata: Mapping[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        self.service = service
        self.retry_after = retry_after = retry_after_seconds(retry_after)
        base: dict[str, Any] = {}
        if service is not None:
            base["service"] = service
        if retry_after is not None:
            base["retry_after"] = retry_after
        super().__init__(message, code=code, metadata=_merge(base, metadata))


class BulkheadFullError(ServiceUnavailableError):
    """A call was refused because its service's bulkhead had no free slot (503).

    Raised at once, without waiting for a slot longer than the bulkhead's
    ``max_wait``: the calls already in flight to that service are as many as it
    allows.  A ``ServiceUnavailableError``, with ``Retry-After``.

    Example::

        raise BulkheadFullError("grn: 8 calls in flight", service="grn", retry_after=1)
    """

    status_code = 503
    code = "BULKHEAD_FULL"
    default_message = "Too many calls in flight to this service"


class DeadlineExceededError(ServiceUnavailableError):
    """The request's time budget ran out before a call could finish (504).

    Raised without any network I/O when a call starts with no time left, and when
    the budget passes during a call.  A ``ServiceUnavailableError`` with status
    504, so code catching that keeps catching it.

    Example::

        raise DeadlineExceededError("no time left to call grn", service="grn")
    """

    status_code = 504
    code = "DEADLINE_EXCEEDED"
    default_message = "The request's deadline has passed"


class RateLimitError(_RetryAfterMixin):
    """The caller sent too many requests (429), maybe with ``Retry-After``.

    ``retry_after`` takes the same values as :class:`ServiceUnavailableError`'s.
    """

    status_code = 429
    code = "RATE_LIMIT_EXCEEDED"
    default_message = "Rate limit exceeded"
    description = "The caller sent too many requests; retry later"

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: RetryAfter = None,
        metadata: Mapping[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        self.retry_after = retry_after = retry_after_seconds(retry_after)
        base: dict[str, Any] = {} if retry_after is None else {"retry_after": retry_after}
        super().__init__(message, code=code, metadata=_merge(base, metadata))


class InternalServerError(GenNetException):
    """An unexpected server-side failure (500)."""

    status_code = 500
    code = "INTERNAL_SERVER_ERROR"
    default_message = "Internal server error"
    description = "An unexpected failure in the service"

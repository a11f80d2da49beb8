"""What a failed ``ServiceSession`` call means: for its caller and for the breaker.

A transport failure (a timeout, a refused connection, a redirect loop, the call's
total time limit...) is classified once, as a ``_Failure``: the error raised for it
with ``raise_errors``, the reason in its metadata and message, and whether the
service's breaker counts it.  Kept in one place, apart from the session, so the
rules "whose fault was it" can be read, and changed, together.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final, NamedTuple

import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from gennet_sync.downstream import BadGatewayError, GatewayTimeoutError, _flavour
from gennet_sync.exceptions import (
    DeadlineExceededError,
    GenNetException,
    ServiceUnavailableError,
)
from gennet_sync.transport import _Call, _TotalTimeoutExceeded

if TYPE_CHECKING:
    from urllib3.response import BaseHTTPResponse


class _Failure(NamedTuple):
    """What a transport failure means: the error raised for it, why, and whether the
    service's breaker counts it."""

    error_class: type[ServiceUnavailableError]
    reason: str
    counts: bool


_TOTAL_TIMEOUT = _Failure(GatewayTimeoutError, "total_timeout", counts=True)
# The deadline in force (of the request being served, or a deadline_scope) cut the
# call off before the session's own limits would have: the caller chose that
# budget, and a healthy service cannot answer within any budget a client sends.
# Not counted (else any client could open a shared breaker with a tiny
# Request-Timeout); a failure the service showed before the cut still is.
_DEADLINE = _Failure(DeadlineExceededError, "deadline_exceeded", counts=False)
_TIMEOUT = _Failure(GatewayTimeoutError, "timeout", counts=True)
_UNREACHABLE = _Failure(ServiceUnavailableError, "connection_error", counts=True)
_RETRIES_EXHAUSTED = _Failure(ServiceUnavailableError, "retries_exhausted", counts=True)
_BAD_RESPONSE = _Failure(BadGatewayError, "bad_response", counts=True)
_REDIRECT_LOOP = _Failure(BadGatewayError, "redirect_loop", counts=True)
_BAD_REDIRECT = _Failure(BadGatewayError, "bad_redirect", counts=True)
# A dead or refusing proxy says nothing about the service behind it; a breaker for
# the proxy would refuse calls to every host it serves, a worse outage than the
# proxy's own.  Not counted at all.
_PROXY = _Failure(ServiceUnavailableError, "proxy_error", counts=False)
# A certificate that does not verify is configuration (a CA bundle, a host name),
# not an outage: retrying will not fix it, and an open breaker would hide the real
# error behind "circuit open".  Other TLS failures (a handshake cut off) count.
_TLS_VERIFICATION = _Failure(ServiceUnavailableError, "tls_verification", counts=False)

_MESSAGES: Final[Mapping[str, str]] = {
    "total_timeout": "Service '{service}' did not answer within the call's total time limit",
    "deadline_exceeded": "Service '{service}' did not answer before the request's deadline",
    "timeout": "Service '{service}' did not answer in time",
    "connection_error": "Service '{service}' could not be reached",
    "retries_exhausted": "Service '{service}' kept failing after retries",
    "bad_response": "Service '{service}' sent a response that could not be read",
    "redirect_loop": "Service '{service}' redirected too many times",
    "bad_redirect": "Service '{service}' redirected to a URL that cannot be followed",
    "proxy_error": "Service '{service}' could not be reached through the proxy",
    "tls_verification": "Service '{service}' did not present a certificate that verifies",
}


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps: causes, contexts, and urllib3's ``reason``/args."""
    pending, seen = [error], set[int]()
    while pending and len(seen) < 32:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(inner, BaseException):
                pending.append(inner)
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))


def _classify(error: BaseException, call: _Call) -> _Failure | None:
    """What a failure of ``call`` means for the caller and the breaker; ``None``: not
    a failure of the service (a bad URL given by the caller, a hook that raised)."""
    if isinstance(error, GenNetException):  # already ours: a refusal, a mapped error
        return None
    if isinstance(error, _TotalTimeoutExceeded) or (
        call.deadline is not None and call.deadline.expired
    ):
        return (
            _DEADLINE if call.deadline is not None and call.deadline.inherited else _TOTAL_TIMEOUT
        )
    if not isinstance(error, requests.RequestException):
        return None
    if isinstance(error, requests.exceptions.ProxyError):
        return _PROXY
    if isinstance(error, requests.exceptions.SSLError) and any(
        isinstance(inner, ssl.SSLCertVerificationError) for inner in _causes(error)
    ):
        return _TLS_VERIFICATION
    if isinstance(error, requests.Timeout) or any(
        isinstance(inner, ReadTimeoutError) for inner in _causes(error)
    ):  # requests raises a body read that timed out as a ConnectionError
        connect = isinstance(error, requests.ConnectTimeout)
        return _DEADLINE if _lowered_by_deadline(call, connect=connect) else _TIMEOUT
    if isinstance(
        error, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)
    ):
        return _BAD_RESPONSE
    if isinstance(error, requests.TooManyRedirects):
        return _REDIRECT_LOOP
    if call.redirected and isinstance(
        error,
        (
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidHeader,
        ),
    ):
        return _BAD_REDIRECT
    if isinstance(error, requests.exceptions.RetryError):
        return _RETRIES_EXHAUSTED
    if isinstance(error, requests.ConnectionError):
        return _UNREACHABLE
    return None


def _lowered_by_deadline(call: _Call, *, connect: bool) -> bool:
    """Whether the deadline in force cut the call's connect (or read) timeout below
    the session's own: a timeout of that part is then the deadline's doing."""
    deadline = call.deadline
    if deadline is None or not deadline.inherited:
        return False
    return deadline.lowered[0] if connect else deadline.lowered[1]


def _service_failed(
    call: _Call, response: BaseHTTPResponse | None, error: Exception | None
) -> bool:
    """Whether an attempt about to be retried failed through the service's fault."""
    if call.deadline is not None and call.deadline.expired:
        # The limit cut its connection: the service's failure under the session's
        # own total limit, the caller's choice under the deadline in force.
        return not call.deadline.inherited
    if response is not None:
        return response.status in call.session.failure_statuses
    if isinstance(error, NewConnectionError):  # refused, unreachable (a ConnectTimeoutError)
        return True
    if isinstance(error, ConnectTimeoutError):
        return not _lowered_by_deadline(call, connect=True)
    return isinstance(error, ProtocolError)  # reset, closed before answering


def _transport_error(
    error: BaseException,
    failure: _Failure,
    service: str,
    request: requests.PreparedRequest,
) -> GenNetException:
    """The error raised with ``raise_errors`` for ``error``: ours and the requests one."""
    mapped = failure.error_class(
        _MESSAGES[failure.reason].format(service=service),
        service=service,
        metadata={"reason": failure.reason},
    )
    theirs = type(error) if isinstance(error, requests.RequestException) else None
    if theirs is None or (
        failure in (_TOTAL_TIMEOUT, _DEADLINE) and not issubclass(theirs, requests.Timeout)
    ):
        theirs = requests.exceptions.ReadTimeout  # the limit cut off a read
    return _flavour(mapped, theirs, request)

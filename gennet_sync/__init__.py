"""gennet_sync: resilience and one JSON error envelope for synchronous Flask services.

The names here are what a service author uses.  Everything else stays importable
from the module that defines it: the breaker's internals (``Outcome``,
``TransitionReason``, ``CallPermit``, the registry functions) from
:mod:`gennet_sync.circuit_breaker`, its settings and policies from
:mod:`gennet_sync.breaker_policy`, the Redis backend from
:mod:`gennet_sync.redis_storage`, the session's helpers from
:mod:`gennet_sync.http_client`.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from gennet_sync.breaker_policy import BreakerConfig
from gennet_sync.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerError,
    circuit_breaker,
    get_circuit_breaker,
)
from gennet_sync.compression import Compression
from gennet_sync.context import RequestIdFilter, current_request_id
from gennet_sync.error_handler import GenNet, setup_error_handlers
from gennet_sync.exceptions import (
    ConflictError,
    ForbiddenError,
    GenNetException,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
)
from gennet_sync.http_client import ServiceSession, raise_for_error
from gennet_sync.openapi import OpenAPI, doc
from gennet_sync.storage import BreakerStorage, CircuitState, MemoryStorage
from gennet_sync.versioning import VersionedAPI

try:
    __version__ = version("gennet_sync")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BreakerConfig",
    "BreakerStorage",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitState",
    "Compression",
    "ConflictError",
    "ForbiddenError",
    "GenNet",
    "GenNetException",
    "InternalServerError",
    "MemoryStorage",
    "NotFoundError",
    "OpenAPI",
    "RateLimitError",
    "RequestIdFilter",
    "ServiceSession",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "ValidationError",
    "VersionedAPI",
    "__version__",
    "circuit_breaker",
    "current_request_id",
    "doc",
    "get_circuit_breaker",
    "raise_for_error",
    "setup_error_handlers",
]

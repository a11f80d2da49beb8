"""gennet_sync: resilience and one JSON error envelope for synchronous Flask services."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from gennet_sync.circuit_breaker import (
    BreakerConfig,
    BreakerMetrics,
    BreakerMode,
    CallPermit,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitBreakerRegistry,
    CircuitState,
    ExponentialOpenDuration,
    FixedOpenDuration,
    Outcome,
    StateChangeEvent,
    TransitionReason,
    all_circuit_breakers,
    circuit_breaker,
    circuit_breaker_metrics,
    clear_circuit_breakers,
    get_circuit_breaker,
    register_config,
    set_default_storage,
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
from gennet_sync.http_client import (
    DownstreamError,
    ServiceRetry,
    ServiceSession,
    raise_for_error,
)
from gennet_sync.openapi import OpenAPI, doc
from gennet_sync.versioning import APIVersion, VersionedAPI

try:
    __version__ = version("gennet_sync")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "APIVersion",
    "BreakerConfig",
    "BreakerMetrics",
    "BreakerMode",
    "CallPermit",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitBreakerRegistry",
    "CircuitState",
    "Compression",
    "ConflictError",
    "DownstreamError",
    "ExponentialOpenDuration",
    "FixedOpenDuration",
    "ForbiddenError",
    "GenNet",
    "GenNetException",
    "InternalServerError",
    "NotFoundError",
    "OpenAPI",
    "Outcome",
    "RateLimitError",
    "RequestIdFilter",
    "ServiceRetry",
    "ServiceSession",
    "ServiceUnavailableError",
    "StateChangeEvent",
    "TransitionReason",
    "UnauthorizedError",
    "ValidationError",
    "VersionedAPI",
    "__version__",
    "all_circuit_breakers",
    "circuit_breaker",
    "circuit_breaker_metrics",
    "clear_circuit_breakers",
    "current_request_id",
    "doc",
    "get_circuit_breaker",
    "raise_for_error",
    "register_config",
    "set_default_storage",
    "setup_error_handlers",
]

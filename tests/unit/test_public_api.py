"""The top-level package exports what a service author uses, and nothing of the internals."""

from __future__ import annotations

import importlib

import gennet_sync


def test_the_top_level_exports_a_service_authors_names_only() -> None:
    exported = set(gennet_sync.__all__)
    assert len(exported) <= 30
    # What an author writes: errors, the Flask extensions, the session, the breaker
    # and the storage protocol to implement for another backend.
    assert {
        "setup_error_handlers",
        "GenNet",
        "NotFoundError",
        "ServiceSession",
        "CircuitBreaker",
        "get_circuit_breaker",
        "BreakerStorage",
        "MemoryStorage",
        "VersionedAPI",
        "Compression",
        "OpenAPI",
    } <= exported
    # The breaker's internals stay in their module, importable from there.
    internals = {"Outcome", "TransitionReason", "CallPermit", "CircuitBreakerRegistry"}
    assert not internals & exported
    breaker_module = importlib.import_module("gennet_sync.circuit_breaker")
    assert all(hasattr(breaker_module, name) for name in internals)
    assert all(hasattr(gennet_sync, name) for name in exported)


def test_every_export_is_defined_in_a_public_module() -> None:
    for name in gennet_sync.__all__:
        obj = getattr(gennet_sync, name)
        module = getattr(obj, "__module__", None)
        if module is None:  # __version__
            continue
        assert not any(part.startswith("_") for part in module.split(".")), (name, module)

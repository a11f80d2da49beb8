"""The breaker storage a URL names (``GENNET_BREAKER_STORAGE``, ``set_default_storage``).

Beside the backends it builds rather than in the protocol module they import,
so :mod:`gennet_sync.storage` depends on no backend.
"""

from __future__ import annotations

from gennet_sync.storage import BreakerStorage, MemoryStorage

__all__ = ["storage_from_url"]


def storage_from_url(url: str | None) -> BreakerStorage:
    """The storage a URL names: ``None``/``""``/``"memory://"`` or ``redis://host:port/db``.

    Example::

        storage = storage_from_url("redis://cache:6379/0?sync_interval=0.5")
        breaker = CircuitBreaker(name="payments", storage=storage)

    Raises:
        ValueError: for a URL scheme that names no storage.
    """
    if not url or url.startswith("memory:"):
        return MemoryStorage()
    if url.startswith(("redis://", "rediss://", "unix://")):
        # Imported here so the default path needs no redis-py.
        from gennet_sync.redis_storage import RedisStorage  # noqa: PLC0415

        return RedisStorage.from_url(url)
    raise ValueError(f"GENNET_BREAKER_STORAGE must be memory:// or a redis:// URL, not {url!r}")

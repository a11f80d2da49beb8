"""The breaker storage a URL names (``GENNET_BREAKER_STORAGE``, ``set_default_storage``).

Beside the backends it builds rather than in the protocol module they import,
so :mod:`gennet_sync.storage` depends on no backend.
"""

from __future__ import annotations

from gennet_sync.storage import BreakerStorage, MemoryStorage

__all__ = ["REDIS_URL_SCHEMES", "storage_from_url"]

#: Schemes of the URLs that name a :class:`~gennet_sync.redis_storage.RedisStorage`:
#: one server, Redis Sentinel or Redis Cluster, each also over TLS.
REDIS_URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)


def storage_from_url(url: str | None) -> BreakerStorage:
    """The storage a URL names: ``None``/``""``/``"memory://"``, or Redis.

    Redis URLs are ``redis://host:port/db`` for one server,
    ``redis+sentinel://host:port[,host:port...]/service_name[/db]`` for the
    primary a Redis Sentinel names and ``redis+cluster://host:port[,host:port...]``
    for a Redis Cluster (``rediss`` for TLS); see
    :meth:`~gennet_sync.redis_storage.RedisStorage.from_url`.

    Example::

        storage = storage_from_url("redis://cache:6379/0?sync_interval=0.5")
        breaker = CircuitBreaker(name="payments", storage=storage)

    Raises:
        ValueError: for a URL scheme that names no storage.
    """
    if not url or url.startswith("memory:"):
        return MemoryStorage()
    if url.lower().startswith(REDIS_URL_SCHEMES):
        # Imported here so the default path needs no redis-py.
        from gennet_sync.redis_storage import RedisStorage  # noqa: PLC0415

        return RedisStorage.from_url(url)
    raise ValueError(
        "GENNET_BREAKER_STORAGE must be memory://, a redis:// URL, redis+sentinel:// "
        f"or redis+cluster://, not {url!r}"
    )

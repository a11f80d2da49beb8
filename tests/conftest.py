"""Fixtures shared by every kind of test.

Helper classes live in :mod:`tests.support`; ``unit/`` and ``integration/``
add their own rules in their ``conftest.py``.
Fixtures that need a real binary (redis-server, gunicorn, chromium) fail, never
skip, when it is missing.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pytest

from gennet_sync.bulkhead import clear_bulkheads
from gennet_sync.circuit_breaker import clear_circuit_breakers
from gennet_sync.retry_budget import clear_retry_budgets
from tests.support.clock import FakeClock
from tests.support.redis_server import RedisServer, started_redis_server


@pytest.fixture
def clock() -> FakeClock:
    """A :class:`~tests.support.clock.FakeClock` at 1000.0, moved by hand."""
    return FakeClock()


@pytest.fixture
def fresh_breaker_registry() -> Iterator[None]:
    """The process-wide breaker registry (and the bulkheads and retry budgets
    sessions share by service name) empty before and after the test.

    A module uses it for all its tests with
    ``pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")``.
    """
    clear_circuit_breakers()
    clear_bulkheads()
    clear_retry_budgets()
    yield
    clear_circuit_breakers()
    clear_bulkheads()
    clear_retry_budgets()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free 127.0.0.1 port, shared by the session.

    Tests sharing it use their own key prefix and must leave it running; a test
    that kills or pauses Redis uses ``disposable_redis_server`` instead.
    """
    server = started_redis_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def disposable_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to kill, pause and restart."""
    server = started_redis_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gzip_bomb() -> bytes:
    """About 1 MB of gzip that inflates to 1 GiB of zeros, made without holding 1 GiB.

    A full flush resets the compressor's history, so every further MiB of zeros
    compresses to the same bytes: compress two, repeat the second, and write the
    gzip trailer (CRC-32 and size of the whole GiB) by hand.  A valid stream in
    a quarter of a second instead of compressing 1 GiB (5-8 s).
    """
    mib = 1024 * 1024
    zeros = bytes(mib)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    last_block = compressor.flush()[:-8]  # the final empty block, without the trailer
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    trailer = crc.to_bytes(4, "little") + (1024 * mib % 2**32).to_bytes(4, "little")
    return first + block * 1023 + last_block + trailer

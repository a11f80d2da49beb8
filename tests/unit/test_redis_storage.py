"""RedisStorage's settings and URLs, checked without a server."""

from __future__ import annotations

from typing import Any

import pytest

from gennet_sync.redis_storage import RedisStorage


def test_from_url_rejects_a_storage_option_that_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="sync_interval"):
        RedisStorage.from_url("redis://127.0.0.1:1/0?sync_interval=soon")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("sync_interval", -1.0),
        ("socket_timeout", 0.0),
        ("connect_timeout", float("nan")),
        ("key_ttl", float("inf")),
        ("retry_backoff", -0.5),
        ("prefix", ""),
    ],
)
def test_bad_settings_are_a_value_error_naming_them(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        RedisStorage("redis://127.0.0.1:1/0", **{option: value})


def test_max_retry_backoff_below_retry_backoff_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_retry_backoff"):
        RedisStorage("redis://127.0.0.1:1/0", retry_backoff=5.0, max_retry_backoff=1.0)


def test_repr_of_a_url_without_a_port_names_the_default_port() -> None:
    storage = RedisStorage("redis://cache.internal/2")
    try:
        assert "cache.internal:6379/2" in repr(storage)
    finally:
        storage.close()


# -- real processes sharing one breaker -------------------------------------------
#
# Each worker is a separate interpreter (spawn) that gets its breaker from the
# registry with GENNET_BREAKER_STORAGE set, as a gunicorn worker would.  The
# test process and the workers share CLOCK_MONOTONIC, so their times compare.

"""Shared fixtures.  Fixtures that need a real binary (redis-server, gunicorn,
chromium) fail, never skip, when it is missing."""

from __future__ import annotations

import shutil


def require_binary(name: str) -> str:
    """Path of executable ``name``; fails the test with a clear message when missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is required by this test but is not installed "
            f"(.ci/run installs it; locally: apt-get install {name})"
        )
    return path

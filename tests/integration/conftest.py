"""Integration tests: real HTTP servers on 127.0.0.1, gunicorn, redis-server,
headless Chromium, child processes and requests' own suite.

Every test collected here carries the ``integration`` marker, so
``-m "not integration"`` leaves them out wherever they are run from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's collection hook sees every item of the run: mark only ours.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)

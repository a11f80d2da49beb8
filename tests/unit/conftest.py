"""Unit tests: no sockets, no name lookups, no child processes.

Every unit test runs with real I/O forbidden
(:func:`tests.support.no_io.forbid_real_io`), from the setup of its fixtures to
their teardown: a socket that connects or binds, a name lookup, or a child
process fails the test, even when the code under test catches the error.  A
test that needs a real server belongs in ``tests/integration/``.  Sockets of
any family are refused: no unit test needs even an ``AF_UNIX`` one.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support.no_io import forbid_real_io


def _guarded(item: pytest.Item) -> Generator[None, object, object]:
    with forbid_real_io() as attempts:
        outcome = yield
    if attempts:
        # The code under test may have swallowed the error: fail anyway.
        pytest.fail(
            f"{item.nodeid} tried {', '.join(sorted(set(attempts)))} (see tests/unit/conftest.py)"
        )
    return outcome


# Hooks, not an autouse fixture: a session-scoped fixture (a redis-server, say)
# is set up before any function-scoped fixture could forbid it.  Hooks of a
# conftest.py run for the items of its directory only.


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))

"""The package imports where fork hooks do not exist (a child Python)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import PROJECT_ROOT

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")


def test_the_package_imports_where_fork_hooks_do_not_exist() -> None:
    # Its dependencies (and the stdlib's random) are imported first: only what the
    # package itself does without the hook is under test.
    code = (
        "import os, random, flask, requests, redis\n"
        "del os.register_at_fork\n"
        "import gennet_sync, gennet_sync.redis_storage, gennet_sync.http_client\n"
        "print('imported')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"

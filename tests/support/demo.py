"""Running ``python -m examples.demo`` as a user would, for the tests that need it."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support import PROJECT_ROOT


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.demo", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def ports_started(output: str) -> list[int]:
    line = next(line for line in output.splitlines() if "started grn on" in line)
    return [int(port) for port in re.findall(r" on :(\d+)", line)]

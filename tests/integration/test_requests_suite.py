"""requests' own test suite, run with ``requests.Session`` and again with ``ServiceSession``.

The suite comes from the sdist of the installed requests, which ``./dev test``
downloads into ``.cache/requests-sdist`` (tests never reach the network); it
runs, with its local httpbin and test servers on 127.0.0.1, in two pytest
subprocesses at once: plain, and with ``tests/support/requests_suite/gennet_session_swap.py``
putting ``ServiceSession`` (no service name, default settings) in place of
``requests.Session``.  Every test that passes plain must pass swapped, except
the differences listed in ``EXPECTED_DIFFERENCES``; a listed test that no longer
differs fails too, so the list, and README's copy of it, stay true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support import PROJECT_ROOT
from tests.support.suite_comparison import SuiteOutcome, compare, requests_sdist

PLUGINS: Final = PROJECT_ROOT / "tests" / "support" / "requests_suite"
RUN_TIMEOUT: Final = 600.0

#: Tests of requests' suite that pass with ``requests.Session`` and, on purpose,
#: not with ``ServiceSession``: node ID -> why.  README lists the same differences
#: under "Differences from plain requests (measured with requests' own test suite)".
EXPECTED_DIFFERENCES: Final[dict[str, str]] = {}


@dataclass(frozen=True)
class SuiteRun:
    """What one run of requests' suite produced."""

    outcomes: dict[str, SuiteOutcome]
    blocked: list[str]
    swap_report: dict[str, Any] | None
    output: str

    def count(self, outcome: str) -> int:
        return sum(1 for result in self.outcomes.values() if result.outcome == outcome)


def _start_run(sdist: Path, workdir: Path, *, swap: bool) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True)
    env = {
        name: value
        for name, value in os.environ.items()
        # Our own settings (a Redis breaker storage, pytest options) stay out of it.
        if not name.startswith(("GENNET_", "PYTEST_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(
        path for path in (str(PLUGINS), os.environ.get("PYTHONPATH")) if path
    )
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["GENNET_SUITE_OUTCOMES"] = str(workdir / "outcomes.json")
    env["GENNET_SWAP_REPORT"] = str(workdir / "swap.json")
    command = [
        sys.executable,
        "-m",
        "pytest",
        # Neither our pyproject (filterwarnings = error) nor requests' own
        # (--doctest-modules over its tests): requests' suite as its CI runs it.
        "-c",
        os.devnull,
        "--rootdir",
        str(sdist),
        "--confcutdir",
        str(sdist),
        "-p",
        "no:cacheprovider",
        "-p",
        "pytest_httpbin.plugin",
        "-p",
        "gennet_suite_run",
        *(("-p", "gennet_session_swap") if swap else ()),
        "-q",
        "-rN",
        "tests",
    ]
    with (workdir / "output.txt").open("wb") as output:
        return subprocess.Popen(
            command, cwd=sdist, env=env, stdout=output, stderr=subprocess.STDOUT
        )


def _finish_run(process: subprocess.Popen[bytes], workdir: Path) -> SuiteRun:
    try:
        returncode = process.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    output = (workdir / "output.txt").read_text(encoding="utf-8", errors="replace")
    # 0: all passed, 1: some failed; anything else is a broken run, not a result.
    assert returncode in (0, 1), f"pytest exited {returncode}:\n{output[-3000:]}"
    report = json.loads((workdir / "outcomes.json").read_text(encoding="utf-8"))
    swap_path = workdir / "swap.json"
    return SuiteRun(
        outcomes={
            test: SuiteOutcome(result["outcome"], result["message"])
            for test, result in report["outcomes"].items()
        },
        blocked=report["blocked"],
        swap_report=json.loads(swap_path.read_text(encoding="utf-8"))
        if swap_path.exists()
        else None,
        output=output,
    )


@pytest.fixture(scope="module")
def suite_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SuiteRun, SuiteRun]]:
    """requests' suite run plain and swapped, side by side (each mostly waits on sockets)."""
    sdist = requests_sdist()
    base = tmp_path_factory.mktemp("requests-suite")
    processes = [
        _start_run(sdist, base / name, swap=name == "swapped") for name in ("plain", "swapped")
    ]
    try:
        plain = _finish_run(processes[0], base / "plain")
        swapped = _finish_run(processes[1], base / "swapped")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    yield plain, swapped


# ------------------------------------------------------------------ the real runs


@pytest.mark.integration
def test_requests_suite_passes_with_service_session_as_with_requests(
    suite_runs: tuple[SuiteRun, SuiteRun],
) -> None:
    plain, swapped = suite_runs
    errors = {test: r for test, r in plain.outcomes.items() if r.outcome == "error"}
    assert not errors, f"requests' suite does not load: {errors}"
    # A broken setup (no httpbin, a missing test dependency) would leave nothing to
    # compare: most of the suite must pass plain, and both runs hold the same tests.
    ran = plain.count("passed") + plain.count("failed")
    assert plain.count("passed") >= 0.9 * ran, plain.output[-3000:]
    assert plain.outcomes.keys() == swapped.outcomes.keys()
    # The calls really went through ServiceSession and its breakers.
    assert swapped.swap_report is not None
    assert swapped.swap_report["session_class"] == "gennet_sync.http_client.ServiceSession"
    assert swapped.swap_report["calls"] >= 100, swapped.swap_report

    assert compare(plain.outcomes, swapped.outcomes, EXPECTED_DIFFERENCES) == []


@pytest.mark.integration
def test_requests_suite_stays_on_this_machine(suite_runs: tuple[SuiteRun, SuiteRun]) -> None:
    plain, swapped = suite_runs
    # requests' suite connects to an unroutable address (to time out a connect) and
    # looks up a made-up name under google.com: neither left the machine.
    for run in (plain, swapped):
        assert "10.255.255.1" in run.blocked
        assert "doesnotexist.google.com" in run.blocked

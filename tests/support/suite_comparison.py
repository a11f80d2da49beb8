"""How a run of requests' own test suite with ``ServiceSession`` is compared with a
plain run: used by ``tests/integration/test_requests_suite.py``, checked by
``tests/unit/test_requests_suite.py``."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NamedTuple

import pytest

from tests.support import PROJECT_ROOT

__all__ = ["SDIST_CACHE", "SuiteOutcome", "compare", "requests_sdist"]


SDIST_CACHE: Final = PROJECT_ROOT / ".cache" / "requests-sdist"


class SuiteOutcome(NamedTuple):
    """One test's outcome in a run, with the first line of its failure."""

    outcome: str  # passed, failed, error, skipped, xfailed, xpassed
    message: str = ""


def requests_sdist() -> Path:
    """The extracted sdist of the installed requests; fails the test when absent."""
    version = importlib.metadata.version("requests")
    sdist = SDIST_CACHE / f"requests-{version}"
    if not (sdist / "tests" / "conftest.py").is_file():
        pytest.fail(
            f"requests {version}'s own test suite is not in {sdist}: run ./dev test, "
            f"which downloads and extracts the sdist of the installed requests",
            pytrace=False,
        )
    return sdist


def compare(
    plain: Mapping[str, SuiteOutcome],
    swapped: Mapping[str, SuiteOutcome],
    expected: Mapping[str, str],
) -> list[str]:
    """Every way the swapped run departs from the plain run and the expected list.

    Args:
        plain: Outcomes with ``requests.Session``, by node ID.
        swapped: Outcomes with ``ServiceSession``, by node ID.
        expected: The listed differences: node ID -> reason.

    Returns:
        One line per problem; empty when the runs agree up to ``expected``.
    """
    baseline = {test for test, result in plain.items() if result.outcome == "passed"}
    problems = []
    for test in sorted(baseline - expected.keys()):
        result = swapped.get(test, SuiteOutcome("not run"))
        if result.outcome != "passed":
            problems.append(
                f"{test}: passes with requests.Session, {result.outcome} with "
                f"ServiceSession ({result.message or 'no message'})"
            )
    for test, reason in sorted(expected.items()):
        if test not in baseline:
            outcome = plain.get(test, SuiteOutcome("not run")).outcome
            problems.append(
                f"{test}: listed as a difference ({reason}) but {outcome} with "
                f"requests.Session: nothing to compare"
            )
        elif swapped.get(test, SuiteOutcome("not run")).outcome == "passed":
            problems.append(
                f"{test}: listed as a difference ({reason}) but passes with "
                f"ServiceSession now: drop it from EXPECTED_DIFFERENCES and README"
            )
    return problems

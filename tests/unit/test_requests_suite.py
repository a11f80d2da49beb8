"""How the runs of requests' own test suite are compared, and what a missing
sdist says (tests/integration/test_requests_suite.py runs the suite)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from tests.support import suite_comparison
from tests.support.suite_comparison import SuiteOutcome, compare, requests_sdist

# ------------------------------------------------------------------ the comparison itself


PLAIN: Final = {
    "t::passes_both": SuiteOutcome("passed"),
    "t::needs_internet": SuiteOutcome("failed", "call: gaierror"),
    "t::differs": SuiteOutcome("passed"),
    "t::skipped": SuiteOutcome("skipped"),
}


def test_compare_accepts_runs_that_agree() -> None:
    swapped = {**PLAIN, "t::needs_internet": SuiteOutcome("failed", "call: CircuitBreakerError")}
    assert compare(PLAIN, swapped, {}) == []


def test_compare_reports_a_test_that_passes_only_with_requests() -> None:
    swapped = {**PLAIN, "t::differs": SuiteOutcome("failed", "call: CircuitBreakerError")}
    (problem,) = compare(PLAIN, swapped, {})
    assert problem.startswith("t::differs: passes with requests.Session, failed with")
    assert "CircuitBreakerError" in problem


def test_compare_reports_a_test_missing_from_the_swapped_run() -> None:
    swapped = {test: result for test, result in PLAIN.items() if test != "t::passes_both"}
    assert compare(PLAIN, swapped, {}) == [
        "t::passes_both: passes with requests.Session, not run with ServiceSession (no message)"
    ]


def test_compare_accepts_a_listed_difference() -> None:
    swapped = {**PLAIN, "t::differs": SuiteOutcome("failed", "call: CircuitBreakerError")}
    assert compare(PLAIN, swapped, {"t::differs": "breaker"}) == []


def test_compare_reports_a_listed_difference_that_no_longer_differs() -> None:
    (problem,) = compare(PLAIN, PLAIN, {"t::differs": "breaker"})
    assert "passes with ServiceSession now" in problem


def test_compare_reports_a_listed_test_that_plain_requests_does_not_pass() -> None:
    (problem,) = compare(PLAIN, PLAIN, {"t::needs_internet": "breaker"})
    assert "failed with requests.Session: nothing to compare" in problem


def test_a_missing_sdist_fails_and_says_to_run_dev_test(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(suite_comparison, "SDIST_CACHE", tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"run \./dev test"):
        requests_sdist()

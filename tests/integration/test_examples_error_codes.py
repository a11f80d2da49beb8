"""The workflow service documents every code it answers, its downstream up, down or broken.

schemathesis drives the workflow service (in the test process) from its own
document while it calls a real qualitative service on 127.0.0.1; then the
checking test client replays what a failing downstream brings: not reachable
(503), its breaker open (503 from ``CircuitBreakerError``) and an answer that is
not JSON (502).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case

from examples.qualitative_service import create_app as create_qualitative_app
from examples.workflow_service import EXTENSION_KEY
from examples.workflow_service import create_app as create_workflow_app
from gennet_sync.testing import documented_errors_client
from tests.support.api_cases import CASE_CHECKS, operation_cases
from tests.support.redis_workers import closed_port
from tests.support.servers import serve_app

VERIFY = "/api/v1/workflows/verify"
BODY = {"network": {"nodes": {"a": "!b", "b": "a"}}, "formula": "AG(a | !a)"}


def workflow(url: str, threshold: int = 5) -> Flask:
    return create_workflow_app(
        {
            "TESTING": True,
            "QUALITATIVE_URL": url,
            # a breaker of this test's own: the registry is process-wide
            "QUALITATIVE_SERVICE_NAME": f"qualitative-{uuid.uuid4().hex[:8]}",
            "CIRCUIT_BREAKER_THRESHOLD": threshold,
            "QUALITATIVE_TIMEOUT": 10,
        }
    )


@pytest.fixture(scope="module")
def workflow_over_real_qualitative() -> Iterator[Flask]:
    with serve_app(create_qualitative_app({"CTL_TIME_LIMIT": 5})) as url:
        app = workflow(url, threshold=1000)
        yield app
        app.extensions[EXTENSION_KEY].close()


@pytest.fixture(scope="module")
def cases(workflow_over_real_qualitative: Flask) -> st.SearchStrategy[Case[Any]]:
    return operation_cases(workflow_over_real_qualitative)


@pytest.fixture(scope="module")
def statuses() -> Counter[int]:
    return Counter()


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_schemathesis_finds_no_undocumented_code_in_the_workflow_service(
    cases: st.SearchStrategy[Case[Any]], statuses: Counter[int], data: st.DataObject
) -> None:
    case = data.draw(cases)
    response = case.call(headers={"Accept-Encoding": "identity"})
    statuses[response.status_code] += 1
    case.validate_response(response, checks=CASE_CHECKS)


def test_the_workflow_run_reached_the_downstreams_errors(statuses: Counter[int]) -> None:
    # After the property test (file order): relayed 422s are what it is about.
    assert 422 in statuses, statuses
    assert not [status for status in statuses if status >= 500], statuses


def test_a_failing_downstream_answers_only_documented_codes() -> None:
    app = workflow(f"http://127.0.0.1:{closed_port()}", threshold=2)
    client = documented_errors_client(app)
    try:
        codes = []
        for _ in range(3):  # refused twice, then the breaker is open
            response = client.post(VERIFY, json=BODY)
            assert response.status_code == 503
            error = response.get_json()["error"]
            codes.append((error["code"], error["type"]))
        assert codes[-1] == ("SERVICE_UNAVAILABLE", "CircuitBreakerError")
        assert response.headers["Retry-After"]
    finally:
        app.extensions[EXTENSION_KEY].close()


def test_a_downstream_answering_garbage_is_a_documented_502() -> None:
    garbage = Flask(__name__)
    garbage.add_url_rule("/ctl/verify", "verify", lambda: "<html>", methods=["POST"])
    with serve_app(garbage) as url:
        app = workflow(url)
        try:
            response = documented_errors_client(app).post(VERIFY, json=BODY)
        finally:
            app.extensions[EXTENSION_KEY].close()
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "BAD_GATEWAY"

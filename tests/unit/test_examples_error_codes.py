"""The example services document every error code they return, and the check holds them to it.

schemathesis drives the GRN and qualitative services from their own
``/openapi.json`` (valid and invalid requests) with gennet_sync's check, its own
"no 5xx" check and its response schema check (so each envelope also matches
its code's schema).  The pytest helper's checking client then replays the
errors each service is known for, those random input rarely reaches (a taken
name, a locked database, a check past its time limit).  The workflow service
calls a real qualitative service: tests/integration/test_examples_error_codes.py.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case

from examples.grn_service import NetworkStore
from examples.grn_service import create_app as create_grn_app
from examples.qualitative_service import create_app as create_qualitative_app
from gennet_sync.testing import documented_errors_client
from tests.support.api_cases import CASE_CHECKS, operation_cases

TOGGLE = {
    "name": "toggle",
    "nodes": ["x", "y"],
    "edges": [{"source": "x", "target": "y", "sign": -1}],
}


@pytest.fixture(scope="module")
def grn_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    database = tmp_path_factory.mktemp("codes") / "grn.sqlite3"
    return create_grn_app({"TESTING": True, "DATABASE": str(database)})


@pytest.fixture(scope="module")
def statuses() -> Counter[int]:
    return Counter()


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_schemathesis_finds_no_undocumented_code_in_the_grn_service(
    grn_app: Flask, statuses: Counter[int], data: st.DataObject
) -> None:
    case = data.draw(cases_of(grn_app))
    # identity: schemathesis's WSGI transport does not decode a compressed body for
    # its schema check (gennet_sync's check does: tests/unit/test_testing.py).
    response = case.call(headers={"Accept-Encoding": "identity"})
    statuses[response.status_code] += 1
    case.validate_response(response, checks=CASE_CHECKS)


_STRATEGIES: dict[int, st.SearchStrategy[Case[Any]]] = {}


def cases_of(app: Flask) -> st.SearchStrategy[Case[Any]]:
    # Built once per app, not per example: loading the document would dominate the run.
    if id(app) not in _STRATEGIES:
        _STRATEGIES[id(app)] = operation_cases(app)
    return _STRATEGIES[id(app)]


def test_the_grn_run_reached_its_errors(statuses: Counter[int]) -> None:
    # Runs after the property test (file order): it must have seen errors, or
    # "no undocumented code" would say nothing.
    assert {404, 422} <= set(statuses), statuses
    assert not [status for status in statuses if status >= 500], statuses


@pytest.fixture(scope="module")
def qualitative_app() -> Flask:
    return create_qualitative_app({"TESTING": True})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_schemathesis_finds_no_undocumented_code_in_the_qualitative_service(
    qualitative_app: Flask, data: st.DataObject
) -> None:
    case = data.draw(cases_of(qualitative_app))
    response = case.call()
    case.validate_response(response, checks=CASE_CHECKS)


def test_the_grn_services_known_errors_are_documented(tmp_path: Path) -> None:
    database = str(tmp_path / "grn.sqlite3")
    app = create_grn_app({"TESTING": True, "DATABASE": database, "BUSY_TIMEOUT": 0.05})
    client = documented_errors_client(app)
    created = client.post("/api/v2/networks", json=TOGGLE)
    assert created.status_code == 201
    assert client.post("/api/v2/networks", json=TOGGLE).status_code == 409
    assert (
        client.post("/api/v1/networks", json={"name": "n", "nodes": ["a"] * 10_001}).status_code
        == 422
    )
    assert (
        client.post("/api/v2/networks", data="{", content_type="application/json").status_code
        == 400
    )
    assert client.post("/api/v2/networks", data="x", content_type="text/plain").status_code == 415
    huge = b'{"name": "' + b"n" * (17 * 1024 * 1024) + b'"}'
    assert (
        client.post("/api/v2/networks", data=huge, content_type="application/json").status_code
        == 413
    )
    assert client.post(
        "/api/v2/networks", data=b"\x1f\x8b broken", headers={"Content-Encoding": "gzip"},
        content_type="application/json",
    ).status_code == 400  # fmt: skip
    assert client.get("/api/v2/networks?cursor=forged").status_code == 422
    assert client.get("/api/v2/networks?limit=0").status_code == 422
    assert client.get("/api/v2/networks/unknown").status_code == 404
    assert client.delete("/api/v2/networks/unknown").status_code == 404
    with NetworkStore(database) as other_worker:
        other_worker.connection.execute("BEGIN IMMEDIATE")  # another worker mid-write
        busy = client.delete(f"/api/v2/networks/{created.get_json()['id']}")
        other_worker.connection.execute("ROLLBACK")
    assert busy.status_code == 503
    assert busy.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"


def test_the_qualitative_services_known_errors_are_documented() -> None:
    ticks = itertools.count(1.0)  # the clock moves a second per reading
    config = {"TESTING": True, "CTL_TIME_LIMIT": 2.5, "CTL_CLOCK": lambda: next(ticks)}
    client = documented_errors_client(create_qualitative_app(config))
    network = {"nodes": {f"n{i}": f"!n{(i + 1) % 12}" for i in range(12)}, "update": "asynchronous"}
    assert (
        client.post("/ctl/verify", json={"network": network, "formula": "AG(x"}).status_code == 422
    )
    slow = client.post("/ctl/verify", json={"network": network, "formula": "EG EG EG EG n0"})
    assert slow.status_code == 422
    assert "time_limit" in slow.get_json()["error"]["metadata"]
    assert client.post("/ctl/verify", data="[", content_type="application/json").status_code == 400
    too_large = b"x" * (2 * 1024 * 1024)
    response = client.post("/ctl/verify", data=too_large, content_type="application/json")
    assert response.status_code == 413
    assert client.post("/ctl/verify", data="{}", content_type="text/plain").status_code == 415


def test_each_services_docs_show_its_codes(grn_app: Flask, qualitative_app: Flask) -> None:
    expected = {
        grn_app: {"NOT_FOUND", "CONFLICT", "VALIDATION_ERROR", "SERVICE_UNAVAILABLE"},
        qualitative_app: {"VALIDATION_ERROR", "BAD_REQUEST", "REQUEST_ENTITY_TOO_LARGE"},
    }
    for app, codes in expected.items():
        client = app.test_client()
        docs = client.get("/docs")
        assert docs.status_code == 200
        assert '<a href="/errors">' in docs.text
        catalogue = client.get("/errors").get_json()
        assert codes <= {entry["code"] for entry in catalogue["errors"]}
        page = client.get("/errors", headers={"Accept": "text/html"}).text
        assert all(f'class="code">{code}<' in page for code in codes)
    delete = (
        grn_app.test_client()
        .get("/openapi.json")
        .get_json()["paths"]["/api/v2/networks/{network_id}"]["delete"]
    )
    assert delete["responses"]["503"]["x-error-codes"] == ["SERVICE_UNAVAILABLE"]
    assert "Retry-After" in delete["responses"]["503"]["headers"]

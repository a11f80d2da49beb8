"""Every example service serves the health probes and the breaker console; the
workflow service's console shows the breaker of its session to the qualitative
service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from examples import grn_service, qualitative_service, workflow_service

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

FACTORIES: dict[str, Callable[[Path], Flask]] = {
    "grn": lambda tmp: grn_service.create_app(
        {"TESTING": True, "DATABASE": str(tmp / "grn.sqlite3")}
    ),
    "qualitative": lambda tmp: qualitative_service.create_app({"TESTING": True}),
    "workflow": lambda tmp: workflow_service.create_app(
        {"TESTING": True, "QUALITATIVE_SERVICE_NAME": "ctl"}
    ),
}


@pytest.mark.parametrize("service", sorted(FACTORIES))
def test_each_service_serves_health_and_the_console(service: str, tmp_path: Path) -> None:
    client = FACTORIES[service](tmp_path).test_client()
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.mimetype == "application/health+json"
    console = client.get("/gennet/breakers")
    assert console.status_code == 200
    page = client.get("/gennet/breakers", headers={"Accept": "text/html"})
    assert page.mimetype == "text/html"
    # Actions stay off in the examples: no auth callback.
    assert console.json is not None
    assert console.json["actions"] == []


def test_the_workflow_services_breaker_is_in_the_console_and_the_probe(tmp_path: Path) -> None:
    client = FACTORIES["workflow"](tmp_path).test_client()
    name = "ctl"
    console: Any = client.get("/gennet/breakers").json
    assert [breaker["name"] for breaker in console["breakers"]] == [name]
    ready: Any = client.get("/health/ready").get_json(force=True)
    assert ready["checks"][f"{name}:circuitBreaker"][0]["observedValue"] == "closed"

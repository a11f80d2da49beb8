"""The qualitative service through a real HTTP server."""

from __future__ import annotations

import pytest
import requests
from flask.testing import FlaskClient

from examples.qualitative_service import create_app
from tests.support.qualitative import OSCILLATOR
from tests.support.servers import serve_app


@pytest.fixture
def client() -> FlaskClient:
    return create_app({"TESTING": True}).test_client()


@pytest.mark.integration
def test_verify_through_a_real_server() -> None:
    with serve_app(create_app()) as base_url, requests.Session() as session:
        ok = session.post(
            f"{base_url}/ctl/verify",
            json={"network": OSCILLATOR, "formula": "AG(AF a)"},
            timeout=10,
        )
        assert ok.status_code == 200
        assert ok.json()["holds"] is True
        assert ok.json()["states"] == 4
        bad = session.post(
            f"{base_url}/ctl/verify", json={"network": OSCILLATOR, "formula": "AG("}, timeout=10
        )
        assert bad.status_code == 422
        assert bad.headers["Content-Type"] == "application/json"
        assert bad.json()["error"]["metadata"]["position"] == 3

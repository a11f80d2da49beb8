"""A network and a call that the qualitative service tests share."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

__all__ = ["OSCILLATOR", "verify"]


#: Two genes that switch each other: a cycle of two states.
OSCILLATOR = {"nodes": {"a": "not b", "b": "a"}, "update": "synchronous"}


def verify(client: FlaskClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to ``/ctl/verify``; the status and the JSON object answered."""
    response = client.post("/ctl/verify", json=body)
    payload = response.get_json()
    assert isinstance(payload, dict)
    return response.status_code, payload

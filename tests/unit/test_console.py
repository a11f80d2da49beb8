"""The breaker console through Flask's test client: the JSON an operator reads, the
page by content negotiation, and actions that are off by default, need the app's
auth callback and cannot be sent by a cross-site form.
``tests/integration/test_console_browser.py`` renders the page in Chromium."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from flask import Flask, Request
from werkzeug.test import TestResponse

from gennet_sync import GenNet, OpenAPI
from gennet_sync.breaker_policy import BreakerMode
from gennet_sync.circuit_breaker import (
    CircuitBreaker,
    CircuitState,
    circuit_breaker,
    get_circuit_breaker,
)
from gennet_sync.console import ACTIONS, BreakerConsole, ConsoleAuth
from tests.support.breakers import ok, trip
from tests.support.clock import FakeClock
from tests.support.storages import RecordingStorage

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

TOKEN = "ops-token"


def token_auth(request: Request) -> bool | None:
    """401 without a token, 403 with a wrong one."""
    given = request.headers.get("X-Ops-Token")
    if given is None:
        return None
    return given == TOKEN


def make_app(**options: Any) -> Flask:
    app = Flask(__name__)
    GenNet(app)
    BreakerConsole(app, **options)
    return app


def get_json(app: Flask, path: str = "/gennet/breakers", **headers: str) -> dict[str, Any]:
    response = app.test_client().get(path, headers=headers)
    assert response.status_code == 200, response.data
    assert response.mimetype == "application/json"
    body: dict[str, Any] = json.loads(response.data)
    return body


def post(app: Flask, name: str, body: object, **headers: str) -> TestResponse:
    return app.test_client().post(f"/gennet/breakers/{name}", json=body, headers=headers)


def test_the_json_shows_every_breaker_with_counts_state_and_history(clock: FakeClock) -> None:
    app = make_app()
    grn = get_circuit_breaker("grn", failure_threshold=2, recovery_timeout=30, clock=clock)
    get_circuit_breaker("ctl", clock=clock).call(ok)
    grn.call(ok)
    trip(grn)
    body = get_json(app)
    assert body["actions"] == []
    assert body["pid"] == os.getpid()
    assert [b["name"] for b in body["breakers"]] == ["ctl", "grn"]
    view = body["breakers"][1]
    assert view["state"] == "open"
    assert view["mode"] == "normal"
    assert (view["calls"], view["successes"], view["failures"]) == (3, 1, 2)
    assert view["consecutive_failures"] == 2
    assert (view["fleet_state"], view["storage_up"]) == (None, None)
    assert 29 < view["retry_in"] <= 30
    assert view["retry_at"] == pytest.approx(body["generated_at"] + view["retry_in"], abs=1)
    assert [(t["from"], t["to"], t["reason"]) for t in view["transitions"]] == [
        ("closed", "open", "failure_threshold")
    ]
    assert body["breakers"][0]["state"] == "closed"
    assert body["breakers"][0]["retry_in"] is None


def test_the_failure_rate_is_shown_once_the_window_holds_enough_calls(clock: FakeClock) -> None:
    app = make_app()
    breaker = get_circuit_breaker(
        "grn", failure_threshold=None, failure_rate_threshold=0.9, window_size=4,
        minimum_calls=4, clock=clock,
    )  # fmt: skip
    breaker.call(ok)
    breaker.acquire().failure()
    assert get_json(app)["breakers"][0]["failure_rate"] is None
    breaker.call(ok)
    breaker.call(ok)
    assert get_json(app)["breakers"][0]["failure_rate"] == 0.25


@pytest.mark.parametrize(
    ("accept", "mimetype"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "text/html"),
        ("application/json", "application/json"),
        ("*/*", "application/json"),
        ("", "application/json"),
        ("image/png", "application/json"),
    ],
)
def test_content_negotiation(accept: str, mimetype: str) -> None:
    app = make_app()
    response = app.test_client().get("/gennet/breakers", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert "Accept" in response.headers["Vary"]
    assert response.headers["Cache-Control"] == "no-store"


def test_the_page_is_offline_and_allows_only_its_own_inline_code() -> None:
    app = make_app()
    response = app.test_client().get("/gennet/breakers", headers={"Accept": "text/html"})
    page = response.get_data(as_text=True)
    assert "<script>" in page
    assert "<style>" in page
    assert "http://" not in page
    assert "https://" not in page
    assert "src=" not in page  # nothing loaded from anywhere
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'sha256-" in policy
    assert "'unsafe-inline'" not in policy
    assert "frame-ancestors 'none'" in policy


def test_the_path_comes_from_the_config() -> None:
    app = Flask(__name__)
    app.config["GENNET_CONSOLE_PATH"] = "/ops/breakers/"
    BreakerConsole(app)
    assert app.test_client().get("/ops/breakers").status_code == 200
    assert app.test_client().get("/gennet/breakers").status_code == 404


def test_an_open_console_is_logged_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    make_app()
    assert any(
        record.levelname == "WARNING" and "view_auth" in record.getMessage()
        for record in caplog.records
    )
    caplog.clear()
    make_app(view_auth=token_auth)
    assert not [record for record in caplog.records if "view_auth" in record.getMessage()]


def test_view_auth_guards_the_json_and_the_page() -> None:
    app = make_app(view_auth=token_auth)
    client = app.test_client()
    response = client.get("/gennet/breakers", headers={"Accept": "text/html"})
    assert response.status_code == 401
    assert response.json is not None
    assert response.json["error"]["code"] == "UNAUTHORIZED"
    assert client.get("/gennet/breakers", headers={"X-Ops-Token": "no"}).status_code == 403
    assert get_json(app, **{"X-Ops-Token": TOKEN})["breakers"] == []


# -- actions ----------------------------------------------------------------------------------


def test_actions_are_off_by_default(clock: FakeClock) -> None:
    app = make_app()
    breaker = get_circuit_breaker("grn", clock=clock)
    response = post(app, "grn", {"action": "force_open"})
    assert response.status_code == 403
    assert response.json is not None
    assert response.json["error"]["code"] == "CONSOLE_ACTIONS_DISABLED"
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [({}, 401, "UNAUTHORIZED"), ({"X-Ops-Token": "guess"}, 403, "FORBIDDEN")],
)
def test_actions_need_the_auth_callback_to_allow_them(
    clock: FakeClock, headers: dict[str, str], status: int, code: str
) -> None:
    app = make_app(auth=token_auth)
    breaker = get_circuit_breaker("grn", clock=clock)
    response = post(app, "grn", {"action": "force_open"}, **headers)
    assert response.status_code == status
    assert response.json is not None
    assert response.json["error"]["code"] == code
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize(
    ("action", "state", "mode"),
    [
        ("force_open", CircuitState.OPEN, BreakerMode.FORCED_OPEN),
        ("close", CircuitState.CLOSED, BreakerMode.NORMAL),
        ("reset", CircuitState.CLOSED, BreakerMode.NORMAL),
        ("disable", CircuitState.CLOSED, BreakerMode.DISABLED),
        ("metrics_only", CircuitState.CLOSED, BreakerMode.METRICS_ONLY),
    ],
)
def test_each_action_acts_and_answers_the_breaker(
    clock: FakeClock, action: str, state: CircuitState, mode: BreakerMode
) -> None:
    app = make_app(auth=token_auth)
    breaker = get_circuit_breaker("grn", failure_threshold=1, clock=clock)
    if action in ("close", "reset"):
        trip(breaker)
    response = post(app, "grn", {"action": action}, **{"X-Ops-Token": TOKEN})
    assert response.status_code == 200, response.data
    assert (breaker.state, breaker.mode) == (state, mode)
    assert response.json is not None
    assert (response.json["state"], response.json["mode"]) == (state.value, mode.value)
    # No shared storage: whatever the action, other worker processes keep their own breaker.
    assert (response.json["action"], response.json["scope"]) == (action, "process")
    assert response.json["pid"] == os.getpid()
    assert get_json(app)["actions"] == sorted(ACTIONS)


@pytest.mark.parametrize(
    ("action", "scope"),
    [
        ("force_open", "fleet"),
        ("close", "fleet"),
        ("reset", "fleet"),
        ("disable", "process"),
        ("metrics_only", "process"),
    ],
)
def test_with_a_shared_storage_a_mode_action_says_it_reached_this_process_only(
    clock: FakeClock, action: str, scope: str
) -> None:
    storage = RecordingStorage()
    storage.checks_lock = False  # type: ignore[misc]
    breaker = CircuitBreaker(name="grn", clock=clock, storage=storage)
    app = make_app(breakers=[breaker], auth=token_auth)
    response = post(app, "grn", {"action": action}, **{"X-Ops-Token": TOKEN})
    assert response.json is not None
    assert (response.json["scope"], response.json["pid"]) == (scope, os.getpid())
    writes = {call[0] for call in storage.calls} - {"load"}
    assert bool(writes) == (scope == "fleet")  # "fleet" is what the storage was told


def test_a_form_post_is_refused_so_no_other_site_can_act(clock: FakeClock) -> None:
    app = make_app(auth=lambda request: True)  # say, a session cookie the browser sends
    breaker = get_circuit_breaker("grn", clock=clock)
    client = app.test_client()
    for content_type, data in [
        ("application/x-www-form-urlencoded", "action=force_open"),
        ("text/plain", '{"action": "force_open"}'),  # the classic JSON-CSRF form
        ("multipart/form-data; boundary=x", '--x\r\nContent-Disposition: form-data; name="action"'
         '\r\n\r\nforce_open\r\n--x--\r\n'),
    ]:  # fmt: skip
        response = client.post("/gennet/breakers/grn", data=data, content_type=content_type)
        assert response.status_code == 415, content_type
        assert response.json is not None
        assert response.json["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize(
    "body",
    [
        '{"action": "explode"}',
        '{"action": 1}',
        '["force_open"]',
        "{}",
        '"force_open"',
        "null",
        '{"action": "__class__"}',
    ],
)
def test_a_bad_action_is_a_422_envelope(clock: FakeClock, body: str) -> None:
    app = make_app(auth=lambda request: True)
    breaker = get_circuit_breaker("grn", clock=clock)
    response = app.test_client().post(
        "/gennet/breakers/grn", data=body, content_type="application/json"
    )
    assert breaker.state is CircuitState.CLOSED
    assert response.status_code == 422
    assert response.json is not None
    assert response.json["error"]["metadata"]["field"] == "action"


@pytest.mark.parametrize("body", [b'{"action": ', b"{'action': 'reset'}", b'{"action": "\xff"}'])
def test_malformed_json_is_a_400_as_everywhere_else(clock: FakeClock, body: bytes) -> None:
    app = make_app(auth=lambda request: True)
    breaker = get_circuit_breaker("grn", failure_threshold=1, clock=clock)
    trip(breaker)
    response = app.test_client().post(
        "/gennet/breakers/grn", data=body, content_type="application/json"
    )
    assert breaker.state is CircuitState.OPEN  # nothing done
    assert response.status_code == 400, response.data
    assert response.json is not None
    assert response.json["error"]["code"] == "BAD_REQUEST"


def test_an_unknown_breaker_is_a_404_and_a_name_with_a_slash_is_found(clock: FakeClock) -> None:
    app = make_app(auth=lambda request: True)
    breaker = get_circuit_breaker("api.example/v1", clock=clock)
    assert post(app, "nope", {"action": "reset"}).status_code == 404
    assert post(app, "api.example%2Fv1", {"action": "force_open"}).status_code == 200
    assert breaker.state is CircuitState.OPEN


def test_a_huge_action_body_is_refused_before_it_is_read() -> None:
    app = make_app(auth=lambda request: True)
    response = app.test_client().post(
        "/gennet/breakers/grn", data=b"[" * 10_000_000, content_type="application/json"
    )
    assert response.status_code == 413
    assert response.json is not None
    assert response.json["error"]["code"] == "REQUEST_ENTITY_TOO_LARGE"


def test_an_auth_callback_that_returns_a_truthy_non_bool_does_not_allow(
    clock: FakeClock,
) -> None:
    sloppy: ConsoleAuth = lambda request: "yes"  # type: ignore[assignment,return-value]  # noqa: E731
    app = make_app(auth=sloppy)
    get_circuit_breaker("grn", clock=clock)
    assert post(app, "grn", {"action": "force_open"}).status_code == 403


def test_breakers_outside_the_registry_can_be_shown(clock: FakeClock) -> None:
    own = CircuitBreaker(name="own", clock=clock)
    app = make_app(breakers=[own], auth=lambda request: True)
    assert [b["name"] for b in get_json(app)["breakers"]] == ["own"]
    assert post(app, "own", {"action": "force_open"}).status_code == 200
    assert own.mode is BreakerMode.FORCED_OPEN


def test_a_decorated_function_s_breaker_is_shown_and_acted_on(clock: FakeClock) -> None:
    @circuit_breaker(failure_threshold=1, name="payments", clock=clock)
    def pay() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        pay()
    app = make_app(auth=token_auth)
    (view,) = get_json(app)["breakers"]
    assert (view["name"], view["state"]) == ("payments", "open")
    assert post(app, "payments", {"action": "reset"}, **{"X-Ops-Token": TOKEN}).status_code == 200
    assert pay.circuit_breaker.state is CircuitState.CLOSED  # type: ignore[attr-defined]


def test_the_console_is_not_in_the_openapi_document() -> None:
    app = make_app()
    OpenAPI(app)
    paths = json.loads(app.test_client().get("/openapi.json").data)["paths"]
    assert not [path for path in paths if path.startswith("/gennet")]

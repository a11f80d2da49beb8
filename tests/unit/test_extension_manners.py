"""Every extension behaves the same way on a second init_app, keeps its state per
app, and keeps time the same way everywhere."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from gennet_sync import (
    CircuitBreaker,
    CircuitState,
    Compression,
    GenNet,
    OpenAPI,
    VersionedAPI,
    setup_error_handlers,
)
from gennet_sync.circuit_breaker import get_circuit_breaker, registry
from gennet_sync.console import BreakerConsole
from gennet_sync.error_handler import app_state
from gennet_sync.health import Health

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")

Extension = Callable[[], object]
EXTENSIONS_WITH_SETTINGS: dict[str, Extension] = {
    "BreakerConsole": BreakerConsole,
    "Compression": Compression,
    "Health": Health,
    "OpenAPI": OpenAPI,
    "VersionedAPI": VersionedAPI,
}


@pytest.mark.parametrize("name", sorted(EXTENSIONS_WITH_SETTINGS))
def test_the_same_extension_twice_on_an_app_changes_nothing(name: str) -> None:
    app = Flask(__name__)
    extension = EXTENSIONS_WITH_SETTINGS[name]()
    extension.init_app(app)  # type: ignore[attr-defined]
    rules = sorted(str(rule) for rule in app.url_map.iter_rules())
    hooks = (
        len(app.before_request_funcs.get(None, [])),
        len(app.after_request_funcs.get(None, [])),
    )
    extension.init_app(app)  # type: ignore[attr-defined]
    assert sorted(str(rule) for rule in app.url_map.iter_rules()) == rules
    assert hooks == (
        len(app.before_request_funcs.get(None, [])),
        len(app.after_request_funcs.get(None, [])),
    )


@pytest.mark.parametrize("name", sorted(EXTENSIONS_WITH_SETTINGS))
def test_a_second_instance_of_an_extension_with_settings_is_refused(name: str) -> None:
    app = Flask(__name__)
    EXTENSIONS_WITH_SETTINGS[name]().init_app(app)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match=f"already has an? {name}"):
        EXTENSIONS_WITH_SETTINGS[name]().init_app(app)  # type: ignore[attr-defined]


def test_the_envelope_set_up_twice_is_one_extension_with_its_handlers_once() -> None:
    # GenNet has no settings of its own, and features set it up on demand: any
    # instance is the same extension, so a second one is not an error.
    app = Flask(__name__)
    Compression(app)  # sets up the envelope first
    first = app_state(app).extension
    hooks = list(app.before_request_funcs[None]), list(app.after_request_funcs[None])
    handlers = dict(app.error_handler_spec[None][None])
    assert setup_error_handlers(app) is first
    GenNet(app)
    assert app_state(app).extension is first
    # Nothing registered twice: not a hook, not a handler.
    assert (app.before_request_funcs[None], app.after_request_funcs[None]) == hooks
    assert app.error_handler_spec[None][None] == handlers

    @app.get("/boom")
    def boom() -> str:
        raise KeyError("x")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "INTERNAL_SERVER_ERROR"


def test_a_version_declared_after_init_app_reaches_every_app_and_the_api_holds_none() -> None:
    api = VersionedAPI()
    first, second = Flask("first"), Flask("second")
    api.init_app(first)
    api.init_app(second)
    v2 = api.version("v2")

    @v2.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "v2"}

    for app in (first, second):
        response = app.test_client().get("/api/v2/ping")
        assert response.status_code == 200, app.name
        assert response.headers["API-Version"] == "v2"
    # Per-app state lives in app.extensions, not in a list of apps on the extension.
    assert not any(isinstance(value, Flask) for value in vars(api).values())
    assert not any(
        isinstance(value, list) and any(isinstance(item, Flask) for item in value)
        for value in vars(api).values()
    )


def test_two_apps_asking_for_different_breaker_storages_is_an_error_not_a_silent_switch() -> None:
    first = Flask("first")
    first.config["GENNET_BREAKER_STORAGE"] = "memory://"
    setup_error_handlers(first)
    breaker = get_circuit_breaker("grn")
    storage = breaker.storage

    second = Flask("second")
    second.config["GENNET_BREAKER_STORAGE"] = "redis://127.0.0.1:1/0"
    with pytest.raises(RuntimeError, match="must name the same storage"):
        setup_error_handlers(second)
    # The first app's breakers and the default for new ones are left alone.
    assert get_circuit_breaker("grn").storage is storage
    assert get_circuit_breaker("qualitative").storage is storage

    third = Flask("third")
    third.config["GENNET_BREAKER_STORAGE"] = "memory://"
    setup_error_handlers(third)  # the same storage: fine
    assert registry._resolve_default_storage() is storage


def test_a_clock_reading_of_zero_is_a_time_like_any_other() -> None:
    # The clock reads 0.0 while the failing call is timed and recorded, then jumps:
    # the breaker opened at 0.0, not at whatever a second reading says.
    readings = iter([0.0, 0.0, 500.0, 500.0, 500.0, 500.0])
    breaker = CircuitBreaker(
        failure_threshold=1,
        recovery_timeout=30,
        clock=lambda: next(readings),
        slow_call_duration=10.0,
    )
    with pytest.raises(ValueError, match="down"):
        breaker.call(_fail)
    assert breaker.state is CircuitState.HALF_OPEN  # 500 s after opening at 0.0


def _fail() -> None:
    raise ValueError("down")

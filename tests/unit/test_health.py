"""The health probes through Flask's test client: the health+json format, what a
breaker, a shared storage and an app's check report, and a hung or hostile check
that cannot hang or break the probe."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, current_app
from werkzeug.test import TestResponse

from gennet_sync import CircuitBreaker, GenNet, OpenAPI
from gennet_sync.circuit_breaker import circuit_breaker, get_circuit_breaker
from gennet_sync.health import HEALTH_MEDIA_TYPE, CheckResult, Health
from gennet_sync.storage import CircuitState, SharedState
from tests.support.breakers import trip
from tests.support.clock import FakeClock
from tests.support.storages import RecordingStorage

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")


def make_app(**options: Any) -> tuple[Flask, Health]:
    app = Flask(__name__)
    GenNet(app)
    return app, Health(app, **options)


def ready(app: Flask) -> tuple[TestResponse, dict[str, Any]]:
    response = app.test_client().get("/health/ready")
    assert response.mimetype == HEALTH_MEDIA_TYPE
    assert response.headers["Cache-Control"] == "no-store"
    return response, json.loads(response.data)


def concurrent_probes(
    app: Flask, health: Health, key: str, entered: threading.Event, go: threading.Event
) -> list[int]:
    """Two probes at once: the second arrives while the first one's task ``key`` runs."""
    codes: dict[int, int] = {}

    def probe(index: int) -> None:
        codes[index] = app.test_client().get("/health/ready").status_code

    first = threading.Thread(target=probe, args=(0,))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=probe, args=(1,))
    second.start()
    deadline = time.monotonic() + 10
    while health._runner.waiters(key) < 1 and second.is_alive():
        assert time.monotonic() < deadline, "the second probe never joined the run"
        time.sleep(0.001)
    go.set()
    first.join(10)
    second.join(10)
    return [codes[0], codes[1]]


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # let a hung check's thread end


def test_live_passes_whatever_the_breakers_say(clock: FakeClock) -> None:
    app, _ = make_app(critical_breakers={"db"})
    trip(get_circuit_breaker("db", failure_threshold=1, clock=clock))
    response = app.test_client().get("/health/live")
    assert response.status_code == 200
    assert response.mimetype == HEALTH_MEDIA_TYPE
    assert json.loads(response.data) == {"status": "pass"}


def test_ready_with_closed_breakers_passes_with_one_check_each(clock: FakeClock) -> None:
    app, _ = make_app()
    get_circuit_breaker("grn", clock=clock)
    get_circuit_breaker("ctl", clock=clock)
    response, body = ready(app)
    assert response.status_code == 200
    assert body["status"] == "pass"
    assert body["serviceId"] == app.name
    assert set(body["checks"]) == {"ctl:circuitBreaker", "grn:circuitBreaker"}
    (grn,) = body["checks"]["grn:circuitBreaker"]
    assert grn["componentId"] == "grn"
    assert grn["observedValue"] == "closed"
    assert grn["status"] == "pass"
    assert "output" not in grn  # the format leaves it out for pass
    assert grn["time"].endswith("Z")


def test_an_open_breaker_warns_and_keeps_the_pod_in_rotation(clock: FakeClock) -> None:
    app, _ = make_app()
    trip(get_circuit_breaker("grn", failure_threshold=1, recovery_timeout=30, clock=clock))
    response, body = ready(app)
    assert response.status_code == 200
    assert body["status"] == "warn"
    (grn,) = body["checks"]["grn:circuitBreaker"]
    assert (grn["status"], grn["observedValue"]) == ("warn", "open")
    assert "failure_threshold" in grn["output"]
    assert "next trial in 30 s" in grn["output"]


def test_a_critical_open_breaker_fails_with_503(clock: FakeClock) -> None:
    app, _ = make_app(critical_breakers={"db"})
    trip(get_circuit_breaker("db", failure_threshold=1, clock=clock))
    get_circuit_breaker("grn", clock=clock)
    response, body = ready(app)
    assert response.status_code == 503
    assert body["status"] == "fail"
    assert body["checks"]["db:circuitBreaker"][0]["status"] == "fail"
    assert body["checks"]["grn:circuitBreaker"][0]["status"] == "pass"


@pytest.mark.parametrize("setting", [["db"], "payments, db", "db"])
def test_critical_breakers_can_come_from_the_config(clock: FakeClock, setting: object) -> None:
    app, _ = make_app()
    app.config["GENNET_HEALTH_CRITICAL_BREAKERS"] = setting
    trip(get_circuit_breaker("db", failure_threshold=1, clock=clock))
    trip(get_circuit_breaker("d", failure_threshold=1, clock=clock))
    _, body = ready(app)
    assert body["checks"]["db:circuitBreaker"][0]["status"] == "fail"
    assert body["checks"]["d:circuitBreaker"][0]["status"] == "warn"  # not a substring match


def test_a_half_open_critical_breaker_only_warns(clock: FakeClock) -> None:
    app, _ = make_app(critical_breakers={"db"})
    trip(get_circuit_breaker("db", failure_threshold=1, recovery_timeout=5, clock=clock))
    clock.advance(5)
    response, body = ready(app)
    assert response.status_code == 200
    assert body["checks"]["db:circuitBreaker"][0]["observedValue"] == "half_open"


def test_a_forced_open_breaker_says_an_operator_did_it(clock: FakeClock) -> None:
    app, _ = make_app()
    get_circuit_breaker("grn", clock=clock).open()
    (grn,) = ready(app)[1]["checks"]["grn:circuitBreaker"]
    assert (grn["status"], grn["mode"]) == ("warn", "forced_open")
    assert grn["output"] == "forced open by an operator"


def test_breakers_given_explicitly_replace_the_registry(clock: FakeClock) -> None:
    own = CircuitBreaker(name="own", clock=clock)
    get_circuit_breaker("registered", clock=clock)
    app, _ = make_app(breakers=lambda: [own, own])
    assert set(ready(app)[1]["checks"]) == {"own:circuitBreaker"}


# -- the shared storage ----------------------------------------------------------------------


def test_a_decorated_function_s_critical_open_breaker_fails_readiness(clock: FakeClock) -> None:
    @circuit_breaker(failure_threshold=1, name="payments", clock=clock)
    def pay() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        pay()
    app, _ = make_app(critical_breakers={"payments"})
    response, body = ready(app)
    assert response.status_code == 503
    assert body["checks"]["payments:circuitBreaker"][0]["status"] == "fail"


def test_a_shared_storage_is_probed_once_and_reported_with_its_time(clock: FakeClock) -> None:
    storage = RecordingStorage(sync_interval=60.0)
    storage.checks_lock = False  # type: ignore[misc]
    breakers = [CircuitBreaker(name=name, clock=clock, storage=storage) for name in "ab"]
    app, _ = make_app(breakers=breakers)
    response, body = ready(app)
    assert response.status_code == 200
    (entry,) = body["checks"]["breakerStorage:responseTime"]
    assert entry["componentType"] == "datastore"
    assert entry["observedUnit"] == "ms"
    assert entry["status"] == "pass"
    assert sorted(call[1] for call in storage.calls) == ["a", "a", "b"]  # 2 syncs, 1 probe
    storage.calls.clear()
    ready(app)
    assert len(storage.calls) == 1  # the probe; the breakers synced less than 60 s ago


def test_an_idle_breaker_reports_what_the_fleet_decided(clock: FakeClock) -> None:
    storage = RecordingStorage(sync_interval=1.0)
    storage.checks_lock = False  # type: ignore[misc]
    breaker = CircuitBreaker(name="a", clock=clock, storage=storage)
    app, _ = make_app(breakers=[breaker])
    assert ready(app)[1]["checks"]["a:circuitBreaker"][0]["observedValue"] == "closed"
    storage.state = SharedState(CircuitState.OPEN, open_remaining=20.0)  # another worker
    clock.advance(1)
    (entry,) = ready(app)[1]["checks"]["a:circuitBreaker"]
    assert (entry["observedValue"], entry["fleetState"]) == ("open", "open")


def test_a_storage_that_is_down_warns_without_failing_readiness(clock: FakeClock) -> None:
    storage = RecordingStorage()
    storage.checks_lock = False  # type: ignore[misc]
    storage.state = None
    breaker = CircuitBreaker(name="a", clock=clock, storage=storage)
    app, _ = make_app(breakers=[breaker], critical_breakers={"a"})
    response, body = ready(app)
    assert response.status_code == 200
    (entry,) = body["checks"]["breakerStorage:responseTime"]
    assert entry["status"] == "warn"
    assert "unavailable" in entry["output"]


def test_a_hung_storage_is_a_warning_after_the_timeout(
    clock: FakeClock, release: threading.Event
) -> None:
    class Hung(RecordingStorage):
        checks_lock = False

        def load(self, name: str) -> SharedState | None:
            release.wait(30)
            return SharedState(CircuitState.CLOSED)

    breaker = CircuitBreaker(name="a", clock=clock, storage=Hung())
    app, _ = make_app(breakers=[breaker])
    app.config["GENNET_HEALTH_TIMEOUT"] = 0.05
    started = time.monotonic()
    response, body = ready(app)
    assert time.monotonic() - started < 10  # does not hang
    assert response.status_code == 200
    (entry,) = body["checks"]["breakerStorage:responseTime"]
    assert entry["status"] == "warn"
    assert "no answer in 0.05 s" in entry["output"]


def test_a_critical_breaker_whose_state_cannot_be_read_fails(
    clock: FakeClock, release: threading.Event
) -> None:
    class Hung(RecordingStorage):
        checks_lock = False

        def load(self, name: str) -> SharedState | None:
            release.wait(30)
            return SharedState(CircuitState.OPEN)

    storage = Hung()
    breakers = [CircuitBreaker(name=name, clock=clock, storage=storage) for name in "ab"]
    app, _ = make_app(breakers=breakers, critical_breakers={"a"})
    app.config["GENNET_HEALTH_TIMEOUT"] = 0.05
    response, body = ready(app)
    assert response.status_code == 503  # "a" may be OPEN: not known is not good
    (critical,) = body["checks"]["a:circuitBreaker"]
    assert (critical["status"], critical["critical"]) == ("fail", True)
    assert "no answer in 0.05 s" in critical["output"]
    (other,) = body["checks"]["b:circuitBreaker"]
    assert (other["status"], other["critical"]) == ("warn", False)


def test_a_concurrent_probe_reads_a_critical_breaker_being_read(clock: FakeClock) -> None:
    entered, go = threading.Event(), threading.Event()

    class Slow(RecordingStorage):
        checks_lock = False

        def load(self, name: str) -> SharedState | None:
            entered.set()
            go.wait(30)
            return SharedState(CircuitState.OPEN, open_remaining=600.0)

    breaker = CircuitBreaker(name="payments", clock=clock, storage=Slow())
    app, health = make_app(breakers=[breaker], critical_breakers={"payments"})
    statuses = concurrent_probes(app, health, "breakers", entered, go)
    assert statuses == [503, 503]  # the second probe waited for the read in flight


# -- the app's checks --------------------------------------------------------------------------


def test_an_app_check_passes_fails_and_reports_its_time() -> None:
    app, health = make_app()
    health.add_check("database", lambda: None, component_type="datastore")
    health.add_check("cache", lambda: False, critical=False)
    response, body = ready(app)
    assert response.status_code == 200
    (database,) = body["checks"]["database:responseTime"]
    assert database["status"] == "pass"
    assert database["componentType"] == "datastore"
    assert isinstance(database["observedValue"], float)
    assert database["observedUnit"] == "ms"
    (cache,) = body["checks"]["cache:responseTime"]
    assert cache["status"] == "warn"  # not critical: its fail is only a warning
    assert body["status"] == "warn"


def test_a_critical_check_that_returns_false_fails_readiness() -> None:
    app, health = make_app()
    health.add_check("database", lambda: False)
    response, body = ready(app)
    assert response.status_code == 503
    assert body["checks"]["database:responseTime"][0]["output"] == "check returned False"


def test_a_check_result_gives_its_own_measurement() -> None:
    app, health = make_app()
    health.add_check(
        "pool",
        lambda: CheckResult("warn", observed_value=9, observed_unit="connections", output="9/10"),
        measurement="connections",
    )
    (pool,) = ready(app)[1]["checks"]["pool:connections"]
    assert (pool["status"], pool["observedValue"], pool["observedUnit"], pool["output"]) == (
        "warn",
        9,
        "connections",
        "9/10",
    )


def test_a_check_that_raises_fails_without_leaking_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, health = make_app()

    def database() -> None:
        raise ConnectionError("postgres://admin:s3cret@db/prod refused")

    health.add_check("database", database)
    caplog.set_level(logging.ERROR, logger="gennet_sync.health")
    response, body = ready(app)
    assert response.status_code == 503
    assert body["checks"]["database:responseTime"][0]["output"] == "raised ConnectionError"
    assert b"s3cret" not in response.data
    assert any("s3cret" in (record.exc_text or "") for record in caplog.records)


def test_a_hung_check_fails_at_its_timeout_and_is_not_started_again(
    release: threading.Event,
) -> None:
    app, health = make_app()
    started: list[float] = []

    def database() -> None:
        started.append(time.monotonic())
        release.wait(30)

    health.add_check("database", database, timeout=0.05)
    began = time.monotonic()
    for _ in range(3):
        response, body = ready(app)
        assert response.status_code == 503
        assert "no answer in 0.05 s" in body["checks"]["database:responseTime"][0]["output"]
    assert time.monotonic() - began < 10  # does not hang
    assert len(started) == 1  # a hung dependency holds one thread, not one per probe
    release.set()
    deadline = time.monotonic() + 10
    while ready(app)[0].status_code != 200:
        assert time.monotonic() < deadline, "the check never ran again"
    assert len(started) == 2


def test_a_concurrent_probe_waits_for_the_check_in_flight() -> None:
    app, health = make_app()
    entered, go = threading.Event(), threading.Event()
    calls: list[int] = []

    def database() -> None:  # healthy, and slower than the gap between two probes
        calls.append(1)
        entered.set()
        go.wait(30)

    health.add_check("database", database, timeout=30)
    assert concurrent_probes(app, health, "app:0", entered, go) == [200, 200]
    assert len(calls) == 1  # both probes took the one run's result


def test_a_check_runs_in_the_app_context() -> None:
    app, health = make_app()
    app.config["DATABASE_URL"] = "sqlite://"
    health.add_check("database", lambda: current_app.config["DATABASE_URL"] == "sqlite://")
    assert ready(app)[0].status_code == 200


@pytest.mark.parametrize(
    "value", [float("nan"), object(), "yes", CheckResult("pass", observed_value={1, 2})]
)
def test_a_check_returning_something_odd_is_a_fail_and_valid_json(value: object) -> None:
    app, health = make_app()
    health.add_check("odd", lambda: value)
    response, body = ready(app)
    assert response.status_code == 503
    assert body["checks"]["odd:responseTime"][0]["status"] == "fail"


@pytest.mark.parametrize(
    ("component", "options"),
    [("", {}), ("a:b", {}), ("db", {"measurement": "x:y"}), ("db", {"timeout": 0})],
)
def test_bad_check_settings_are_refused(component: str, options: dict[str, Any]) -> None:
    _, health = make_app()
    with pytest.raises(ValueError):
        health.add_check(component, lambda: None, **options)


def test_a_bad_timeout_setting_fails_at_start_up() -> None:
    app = Flask(__name__)
    app.config["GENNET_HEALTH_TIMEOUT"] = "soon"
    with pytest.raises(ValueError, match="GENNET_HEALTH_TIMEOUT"):
        Health(app)


def test_the_probes_are_not_in_the_openapi_document_and_errors_are_envelopes() -> None:
    app, _ = make_app()
    OpenAPI(app)
    paths = json.loads(app.test_client().get("/openapi.json").data)["paths"]
    assert not [path for path in paths if path.startswith("/health")]
    response = app.test_client().post("/health/ready")
    assert response.status_code == 405
    assert response.json is not None
    assert response.json["error"]["code"] == "METHOD_NOT_ALLOWED"

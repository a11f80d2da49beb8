"""Liveness and readiness probes in the ``application/health+json`` format.

``GET /health/live`` says the process answers; ``GET /health/ready`` reports one
check per circuit breaker, one per shared breaker storage and the checks the app
registers (its database...), each bounded in time.  The format, the statuses and
why an OPEN breaker is only ``warn`` are in ``docs/health.md``.

Example::

    health = Health(app, critical_breakers={"payments"})
    health.add_check("database", lambda: db.execute("SELECT 1"))
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

from flask import Flask, Response, current_app

from gennet_sync.breaker_policy import BreakerMode, BreakerStatus
from gennet_sync.circuit_breaker import CircuitBreaker, registry
from gennet_sync.error_handler import app_state
from gennet_sync.openapi import doc
from gennet_sync.storage import BreakerStorage, CircuitState

__all__ = [
    "HEALTH_MEDIA_TYPE",
    "BreakerSource",
    "CheckResult",
    "Health",
    "HealthStatus",
    "breakers_of",
]

_logger = logging.getLogger(__name__)

#: The media type of the draft "Health Check Response Format for HTTP APIs".
HEALTH_MEDIA_TYPE: Final = "application/health+json"

#: ``pass``, ``warn`` or ``fail``, in that order of gravity.
HealthStatus: TypeAlias = Literal["pass", "warn", "fail"]

#: Which breakers a probe or the console shows: the breakers themselves, or a
#: callable returning them (read at each request); ``None``: the process registry's
#: breakers and every ``@circuit_breaker``'s (``registry.observable()``).
BreakerSource: TypeAlias = Iterable[CircuitBreaker] | Callable[[], Iterable[CircuitBreaker]] | None

_FEATURE = "health"
_GRAVITY: Final[dict[HealthStatus, int]] = {"pass": 0, "warn": 1, "fail": 2}
_DEFAULT_TIMEOUT = 2.0


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """What an app's check may return for more than pass or fail.

    A check may also return ``None`` or ``True`` (pass), ``False`` (fail), or
    raise (fail; the exception is logged, only its type is shown).

    Example::

        def pool_check() -> CheckResult:
            used = pool.checkedout()
            status = "warn" if used > 0.9 * pool.size() else "pass"
            return CheckResult(status, observed_value=used, observed_unit="connections")

    Attributes:
        status: ``"pass"``, ``"warn"`` or ``"fail"``.
        observed_value: The measurement (JSON-serialisable); the check's
            response time in ms when ``None``.
        observed_unit: Its unit.
        output: A short text for an operator (shown for ``warn`` and ``fail``).
    """

    status: HealthStatus
    observed_value: Any = None
    observed_unit: str | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        if self.status not in _GRAVITY:
            raise ValueError(f"status must be 'pass', 'warn' or 'fail', not {self.status!r}")


@dataclasses.dataclass(frozen=True)
class _AppCheck:
    component: str
    measurement: str
    check: Callable[[], object]
    critical: bool
    timeout: float | None
    component_type: str


@dataclasses.dataclass
class _Reading:
    """One bounded task's outcome: its value, or the exception it raised, or nothing yet."""

    value: object = None
    error: BaseException | None = None
    done: bool = False
    elapsed: float = 0.0


class _Run:
    """One task in flight: every probe that wants its result waits on the same run."""

    def __init__(self, started: float) -> None:
        self.started = started  # monotonic
        self.reading = _Reading()
        self.finished = threading.Event()
        self.waiters = 0  # probes that joined this run after it started


class _BoundedRunner:
    """Runs each task in a daemon thread and stops waiting at its timeout.

    A task already running (started by a concurrent probe) is not started again:
    the probe waits on that run and takes its result.  The run is reported stuck
    once it has run for its timeout without finishing.  Python cannot stop
    a hung thread, so a hung dependency holds one thread per check, not one per
    probe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, _Run] = {}

    def run(
        self, tasks: Mapping[str, tuple[Callable[[], object], float]]
    ) -> dict[str, _Reading | float]:
        """Run ``{key: (task, timeout)}`` at once; a float is when a stuck task started."""
        waiting: dict[str, tuple[_Run, float]] = {}
        now = time.monotonic()
        for key, (task, timeout) in tasks.items():
            with self._lock:
                current = self._running.get(key)
                if current is None:
                    current = self._running[key] = _Run(now)
                    fresh = True
                else:
                    current.waiters += 1
                    fresh = False
            if fresh:
                threading.Thread(
                    target=self._work, args=(key, task, current), name=f"health:{key}", daemon=True
                ).start()
            # Stuck once it has run for its timeout: a probe joining a run that is
            # already past it answers at once instead of waiting a timeout more.
            waiting[key] = (current, current.started + timeout)
        results: dict[str, _Reading | float] = {}
        for key, (current, deadline) in waiting.items():
            if current.finished.wait(max(0.0, deadline - time.monotonic())):
                results[key] = current.reading
            else:
                results[key] = current.started
        return results

    def waiters(self, key: str) -> int:
        """How many probes joined the run of ``key`` in flight (0 when none runs)."""
        with self._lock:
            current = self._running.get(key)
            return 0 if current is None else current.waiters

    def _work(self, key: str, task: Callable[[], object], current: _Run) -> None:
        reading = current.reading
        began = time.monotonic()
        try:
            reading.value = task()
        except BaseException as error:  # a check's failure is its result, whatever it is
            reading.error = error
        finally:
            reading.elapsed = time.monotonic() - began
            reading.done = True
            with self._lock:
                if self._running.get(key) is current:
                    del self._running[key]
            current.finished.set()


def breakers_of(source: BreakerSource) -> list[CircuitBreaker]:
    """The breakers ``source`` names, each once, sorted by name (see :data:`BreakerSource`)."""
    if source is None:
        found: Iterable[CircuitBreaker] = registry.observable()
    elif callable(source):
        found = source()
    else:
        found = source
    unique = {id(breaker): breaker for breaker in found}
    return sorted(unique.values(), key=lambda breaker: breaker.name)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _health_response(body: Mapping[str, Any], status: int) -> Response:
    response = current_app.response_class(
        json.dumps(body, separators=(",", ":"), allow_nan=False),
        status=status,
        mimetype=HEALTH_MEDIA_TYPE,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _breaker_check(status: BreakerStatus, critical: bool, at: float) -> dict[str, Any]:
    metrics = status.metrics
    state, mode = metrics.state, metrics.mode
    verdict: HealthStatus = "pass"
    output = None
    if state is not CircuitState.CLOSED:
        verdict = "fail" if critical and state is CircuitState.OPEN else "warn"
        reason = status.transitions[-1].reason.value if status.transitions else "unknown"
        output = f"{state.value} ({reason})"
        if mode is BreakerMode.FORCED_OPEN:
            output = "forced open by an operator"
        elif status.retry_at is not None:
            output += f"; next trial in {max(0.0, status.retry_at - at):.0f} s"
    entry: dict[str, Any] = {
        "componentId": metrics.name,
        "componentType": "component",
        "observedValue": state.value,
        "status": verdict,
        "time": _iso(at),
        "mode": mode.value,
        "critical": critical,
    }
    if metrics.failure_rate is not None:
        entry["failureRate"] = metrics.failure_rate
    if status.fleet_state is not None:
        entry["fleetState"] = status.fleet_state.value
    if output is not None:
        entry["output"] = output
    return entry


class Health:
    """Liveness and readiness probes (``application/health+json``) as a Flask extension.

    ``GET /health/live`` is ``pass`` whenever the process answers: restart it
    only when it does not.  ``GET /health/ready`` reports:

    - ``"<breaker>:circuitBreaker"``: ``pass`` when CLOSED, ``warn`` when OPEN or
      HALF_OPEN, ``fail`` when OPEN and the breaker is critical;
    - ``"breakerStorage:responseTime"``: each shared storage the breakers use,
      probed with one read; ``warn`` when it does not answer (the breakers
      carry on with their local state);
    - the app's checks (:meth:`add_check`).

    The worst status wins; ``fail`` is a 503, ``pass`` and ``warn`` a 200.  Each
    check is bounded by its timeout (``GENNET_HEALTH_TIMEOUT``, 2 s): a hung
    dependency is a ``fail`` of that check, never a hung probe.  The
    endpoints are left out of the OpenAPI document.

    Example::

        health = Health(critical_breakers={"payments"})

        def create_app():
            app = Flask(__name__)
            health.init_app(app)
            health.add_check("database", lambda: db.execute("SELECT 1"),
                             component_type="datastore")
            return app

    Args:
        app: The app, or ``None`` to call :meth:`init_app` later.
        breakers: Which breakers to report (:data:`BreakerSource`); by default
            the process registry's (every ``ServiceSession``'s breaker is there)
            and every ``@circuit_breaker``'s still in use.
        critical_breakers: Names of breakers whose OPEN state fails readiness;
            also ``GENNET_HEALTH_CRITICAL_BREAKERS`` (a list of names).
        live_path: Path of the liveness probe.
        ready_path: Path of the readiness probe.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        breakers: BreakerSource = None,
        critical_breakers: Collection[str] = (),
        live_path: str = "/health/live",
        ready_path: str = "/health/ready",
    ) -> None:
        if isinstance(critical_breakers, str):
            raise TypeError("critical_breakers is a collection of names, not one string")
        self._breakers = breakers
        self._critical = frozenset(critical_breakers)
        self.live_path = live_path
        self.ready_path = ready_path
        self._checks: list[_AppCheck] = []
        self._runner = _BoundedRunner()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the two probes on ``app`` (and the error envelope if not yet there)."""
        if not app_state(app).claim_feature(_FEATURE, self):
            return
        app.config.setdefault("GENNET_HEALTH_TIMEOUT", _DEFAULT_TIMEOUT)
        app.config.setdefault("GENNET_HEALTH_CRITICAL_BREAKERS", ())
        _check_timeout(app.config["GENNET_HEALTH_TIMEOUT"], "GENNET_HEALTH_TIMEOUT")
        app.add_url_rule(self.live_path, "gennet_health_live", _live_view)
        app.add_url_rule(self.ready_path, "gennet_health_ready", _ready_view)

    def add_check(
        self,
        component: str,
        check: Callable[[], object],
        *,
        measurement: str = "responseTime",
        critical: bool = True,
        timeout: float | None = None,
        component_type: str = "component",
    ) -> None:
        """Add a check to the readiness probe, reported as ``"<component>:<measurement>"``.

        Args:
            component: What is checked (``"database"``, ``"grn-cache"``...).
            check: Called at each probe, in a thread of its own; returns ``None``
                or ``True`` (pass), ``False`` (fail) or a :class:`CheckResult`;
                raising is a fail.
            measurement: The key's second half; with the default
                ``"responseTime"``, the observed value is the check's time in ms.
            critical: ``False`` turns this check's ``fail`` into a ``warn``:
                readiness does not fail because of it.
            timeout: Seconds before the check counts as failed (hung);
                ``GENNET_HEALTH_TIMEOUT`` by default.
            component_type: ``"component"``, ``"datastore"`` or ``"system"``.

        Raises:
            ValueError: An empty name, a name with ``:``, or a bad timeout.
        """
        for name, value in (("component", component), ("measurement", measurement)):
            if not value or ":" in value:
                raise ValueError(f"{name} must be a non-empty name without ':', not {value!r}")
        if timeout is not None:
            _check_timeout(timeout, "timeout")
        if not callable(check):
            raise ValueError(f"check must be callable, not {check!r}")
        self._checks.append(
            _AppCheck(component, measurement, check, critical, timeout, component_type)
        )

    def is_critical(self, breaker_name: str) -> bool:
        """Whether an OPEN ``breaker_name`` fails readiness (in the app being served)."""
        configured = current_app.config.get("GENNET_HEALTH_CRITICAL_BREAKERS") or ()
        if isinstance(configured, str):  # from an environment variable: "a,b"
            configured = [name.strip() for name in configured.split(",")]
        return breaker_name in self._critical or breaker_name in configured

    # -- views --------------------------------------------------------------------

    def ready_response(self) -> Response:
        """The readiness probe's response (what ``GET /health/ready`` answers)."""
        timeout = float(current_app.config["GENNET_HEALTH_TIMEOUT"])
        breakers = breakers_of(self._breakers)
        storages: dict[int, tuple[BreakerStorage, str]] = {}
        for breaker in breakers:
            storage = breaker.storage
            if storage.shared and id(storage) not in storages:
                storages[id(storage)] = (storage, breaker.name)
        critical = {breaker.name: self.is_critical(breaker.name) for breaker in breakers}
        tasks: dict[str, tuple[Callable[[], object], float]] = {
            "breakers": (functools.partial(_statuses, breakers), timeout)
        }
        for key, (storage, name) in storages.items():
            tasks[f"storage:{key}"] = (_probe(storage, name), timeout)
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        for index, check in enumerate(self._checks):
            limit = timeout if check.timeout is None else check.timeout
            tasks[f"app:{index}"] = (functools.partial(_in_app_context, app, check.check), limit)
        readings = self._runner.run(tasks)
        at = time.time()
        checks: dict[str, list[dict[str, Any]]] = {}

        def add(key: str, entry: dict[str, Any]) -> None:
            checks.setdefault(key, []).append(entry)

        statuses = readings["breakers"]
        if isinstance(statuses, _Reading) and statuses.error is None:
            assert isinstance(statuses.value, list)
            for status in statuses.value:
                name = status.metrics.name
                add(f"{name}:circuitBreaker", _breaker_check(status, critical[name], at))
        else:
            if isinstance(statuses, _Reading):
                _logger.error("reading the breakers' states raised", exc_info=statuses.error)
            # Unknown state: a critical breaker may be OPEN, so it fails; others warn.
            for breaker in breakers:
                verdict: HealthStatus = "fail" if critical[breaker.name] else "warn"
                entry = _unanswered(breaker.name, "component", statuses, timeout, at, verdict)
                entry["critical"] = critical[breaker.name]
                add(f"{breaker.name}:circuitBreaker", entry)
        for key, (storage, _name) in storages.items():
            add(
                "breakerStorage:responseTime",
                _storage_check(repr(storage), readings[f"storage:{key}"], timeout, at),
            )
        for index, check in enumerate(self._checks):
            limit = timeout if check.timeout is None else check.timeout
            entry = _app_check(check, readings[f"app:{index}"], limit, at)
            add(f"{check.component}:{check.measurement}", entry)
        overall: HealthStatus = "pass"
        for entries in checks.values():
            for entry in entries:
                if _GRAVITY[entry["status"]] > _GRAVITY[overall]:
                    overall = entry["status"]
        body = {"status": overall, "serviceId": current_app.name, "checks": checks}
        return _health_response(body, 503 if overall == "fail" else 200)


@doc(hidden=True)
def _live_view() -> Response:
    return _health_response({"status": "pass"}, 200)


@doc(hidden=True)
def _ready_view() -> Response:
    health = app_state(current_app).features[_FEATURE]
    assert isinstance(health, Health)
    return health.ready_response()


def _check_timeout(value: object, name: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")


def _statuses(breakers: Iterable[CircuitBreaker]) -> list[BreakerStatus]:
    statuses = []
    for breaker in breakers:
        breaker.sync()  # an idle breaker reports what the fleet decided meanwhile
        statuses.append(breaker.status())
    return statuses


def _in_app_context(app: Flask, check: Callable[[], object]) -> object:
    # A check runs in a thread of its own: give it the app context a view has
    # (Flask-SQLAlchemy's session needs one).
    with app.app_context():
        return check()


def _probe(storage: BreakerStorage, name: str) -> Callable[[], object]:
    # One read through the storage's own error handling: None is "unavailable".
    return lambda: storage.load(name)


def _unanswered(
    component: str,
    component_type: str,
    reading: _Reading | float,
    timeout: float,
    at: float,
    verdict: HealthStatus,
) -> dict[str, Any]:
    """The entry of a task that raised, or did not finish in ``timeout``."""
    if isinstance(reading, float):
        stuck = time.monotonic() - reading
        output = f"no answer in {timeout:g} s (running for {stuck:.1f} s)"
    else:
        assert reading.error is not None
        output = f"raised {type(reading.error).__name__}"
    return {
        "componentId": component,
        "componentType": component_type,
        "status": verdict,
        "time": _iso(at),
        "output": output,
    }


def _storage_check(
    component: str, reading: _Reading | float, timeout: float, at: float
) -> dict[str, Any]:
    if not isinstance(reading, _Reading) or reading.error is not None:
        return _unanswered(component, "datastore", reading, timeout, at, "warn")
    entry: dict[str, Any] = {
        "componentId": component,
        "componentType": "datastore",
        "observedValue": round(reading.elapsed * 1000, 3),
        "observedUnit": "ms",
        "status": "pass",
        "time": _iso(at),
    }
    if reading.value is None:
        entry["status"] = "warn"
        entry["output"] = "unavailable: breakers decide with their local state"
    return entry


def _app_check(
    check: _AppCheck, reading: _Reading | float, timeout: float, at: float
) -> dict[str, Any]:
    failed: HealthStatus = "fail" if check.critical else "warn"
    if isinstance(reading, _Reading) and reading.error is not None:
        # Only the type goes in the response: a message may hold a connection string.
        _logger.error("health check %r raised", check.component, exc_info=reading.error)
    if not isinstance(reading, _Reading) or reading.error is not None:
        return _unanswered(check.component, check.component_type, reading, timeout, at, failed)
    value = reading.value
    entry: dict[str, Any] = {
        "componentId": check.component,
        "componentType": check.component_type,
        "status": "pass",
        "time": _iso(at),
    }
    if check.measurement == "responseTime":
        entry["observedValue"] = round(reading.elapsed * 1000, 3)
        entry["observedUnit"] = "ms"
    if isinstance(value, CheckResult):
        entry["status"] = value.status
        if value.observed_value is not None:
            entry["observedValue"] = value.observed_value
            entry.pop("observedUnit", None)
        if value.observed_unit is not None:
            entry["observedUnit"] = value.observed_unit
        if value.output is not None and value.status != "pass":
            entry["output"] = value.output
    elif value is False:
        entry["status"] = "fail"
        entry["output"] = "check returned False"
    elif value is not None and value is not True:
        entry["status"] = "fail"
        entry["output"] = (
            f"check returned {type(value).__name__}, not None, a bool or a CheckResult"
        )
    if entry["status"] == "fail" and not check.critical:
        entry["status"] = "warn"
    try:
        json.dumps(entry, allow_nan=False)
    except (TypeError, ValueError):
        entry.pop("observedValue", None)
        entry["status"] = failed
        entry["output"] = "observed value is not JSON"
    return entry

"""Prometheus metrics for a gennet_sync service: ``GET /metrics`` and the series behind it.

Needs the ``prometheus`` extra (``prometheus-client``).  The series, how the
breakers' counters and the requests counted in process reach them without a
metric update per call, and how the totals stay right under gunicorn are
described in ``docs/metrics.md``.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import logging
import math
import os
import re
import threading
import weakref
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from operator import add
from time import perf_counter
from typing import Any, Final

import requests
from flask import Flask, Response, current_app, request
from flask.wrappers import Request
from werkzeug.routing import Rule

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.multiprocess import MultiProcessCollector
except ImportError as missing:  # the optional extra is not installed
    raise ImportError(
        "gennet_sync.metrics (GenNet(app, metrics=True)) needs prometheus-client: "
        "pip install 'gennet_sync[prometheus]'"
    ) from missing

from gennet_sync import error_catalogue, http_client
from gennet_sync.breaker_policy import BreakerStatus, TransitionRecord
from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError
from gennet_sync.error_handler import app_state
from gennet_sync.exceptions import GenNetException, UnauthorizedError
from gennet_sync.openapi import doc
from gennet_sync.storage import CircuitState

__all__ = [
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_METRICS_PATH",
    "UNMATCHED_ROUTE",
    "Metrics",
    "flush",
    "multiprocess_mode",
    "setup_metrics",
]

logger = logging.getLogger(__name__)

#: Where the metrics are served unless ``GENNET_METRICS_PATH`` says otherwise.
DEFAULT_METRICS_PATH: Final = "/metrics"
#: Seconds between two copies of the breakers' counters and the requests and calls
#: counted into the metrics (``GENNET_METRICS_FLUSH_INTERVAL``): the most a scrape
#: of another worker lags.
DEFAULT_FLUSH_INTERVAL: Final = 1.0
#: The ``route`` of a request no URL rule matched (a scan of random paths).
UNMATCHED_ROUTE: Final = "<unmatched>"
#: A label value past a cap, or not a plausible one (an envelope's code is free text).
OTHER: Final = "<other>"

_FEATURE = "metrics"
_ENDPOINT = "gennet_metrics"
_STARTED = "gennet_sync.metrics_started"
# Methods an HTTP server sees in practice; anything else (a scanner's invented
# method) is one label value, so it cannot grow the series.
_METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
)
_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# Distinct values kept per free-text label (codes, services, error types) per process.
_MAX_LABEL_VALUES: Final = 200
# Breaker names exported per process, ever: a breaker made per request (or per host of
# ever new hosts) must not blow up the series.
_MAX_BREAKERS: Final = 1000
# A breaker name is a label value: the code's characters, and room for a host:port.
_BREAKER_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_STATES: Final = tuple(CircuitState)
_STATUS_LABELS: Final = {code: str(code) for code in range(100, 600)}
# Label children cached per key; cleared past this (keys of a bounded label set).
_MAX_CACHED_CHILDREN: Final = 4096
# Timed requests waiting for the flush thread to count them, at most: a request
# finding more (the thread late, or a long flush interval) counts them itself.
_MAX_PENDING: Final = 20_000
# A timed request as its after step notes it: URL rule, method, status, error code, seconds.
_Finished = tuple[Rule | None, str, int, object, float]
# A request's labels: method, route, status, error code.
_Labels = tuple[str, str, int, str | None]
# The module, not the package's circuit_breaker() decorator of the same name.
_breakers: Final = importlib.import_module("gennet_sync.circuit_breaker")
# The duration histograms' bucket bounds (prometheus-client's defaults, +Inf last).
_BOUNDS: Final = tuple(float(bound) for bound in Histogram.DEFAULT_BUCKETS)
# A tally: [sum of the durations, requests not timed, then one count per bucket].
_TIMED: Final = 2


def multiprocess_mode() -> bool:
    """Whether prometheus-client writes to ``PROMETHEUS_MULTIPROC_DIR`` (gunicorn)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _LabelCap:
    """Keeps a free-text label's values bounded: past the cap, new values are ``<other>``."""

    def __init__(self, limit: int = _MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if _CODE.fullmatch(value) is None or len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)  # a race adds one value twice at worst: a set
        return value


class _KnownCodes:
    """Keeps the ``code`` label to the codes this library and the app's classes define.

    Both the service's own envelopes and a downstream's carry a code anyone may
    have chosen (a view re-raising a downstream's code, a hostile downstream): a
    cap per process would reset with every recycled worker, and junk seen first
    would crowd out the service's own codes.  The set of known codes is the
    same in every worker, so the label stays bounded across recycling; any
    other code is ``<other>``.
    """

    def __init__(self) -> None:
        self._known: frozenset[str] = frozenset()
        #: Codes the app declares on top (``GENNET_METRICS_EXTRA_CODES``).
        self.extra: frozenset[str] = frozenset()

    def __call__(self, value: str) -> str:
        if value in self._known or value in self.extra:
            return value
        # A class defined since the last look (an app's module imported late):
        # the walk is a few dozen classes, and only unknown codes pay for it.
        self._known = _catalogue_codes()
        return value if value in self._known else OTHER


def _catalogue_codes() -> frozenset[str]:
    """Every code an envelope of this process can carry: the exception classes'
    codes, and the codes werkzeug's errors are answered with."""
    codes = {
        cls.code
        for cls in http_client._exception_classes()
        if isinstance(cls.code, str) and _CODE.fullmatch(cls.code) is not None
    }
    codes.update(_status_codes())
    return frozenset(codes)


@functools.cache
def _status_codes() -> frozenset[str]:
    """The codes werkzeug's errors (and bodiless downstream errors) are answered with."""
    codes = {http_client.http_status_code(status) for status in range(400, 600)}
    codes.update(entry.code for entry in (error_catalogue.SCHEMA_VALIDATION, error_catalogue.CRASH))
    return frozenset(codes)


@dataclass
class _Seen:
    """What was last copied of one breaker: its counters and its newest transition."""

    counts: tuple[int, int, int, int, int]
    last_transition: TransitionRecord | None
    #: The gauges' values last written (state, retry time); ``None`` writes them
    #: again (a forked worker writes its own).
    gauges: tuple[CircuitState, float] | None
    #: When the storage's answer last written to the fleet gauges came: only a
    #: newer answer is written, so a worker never re-stamps a stale one as newest.
    fleet_at: float | None = None


class _Series:
    """Every metric of gennet_sync in one registry, and the copy of the breakers' counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.http_requests = Counter(
            "gennet_http_requests",
            "HTTP requests served, by method, URL rule and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "gennet_http_request_duration_seconds",
            "Time to answer an HTTP request, from the first hook to the response.",
            ["method", "route"],
            registry=registry,
        )
        self.http_errors = Counter(
            "gennet_http_errors",
            "Error envelopes returned, by envelope code.",
            ["code", "status", "method", "route"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "gennet_breaker_state",
            "1 for the breaker's current state in this process, 0 for the others.",
            ["breaker", "state"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.breaker_fleet_state = Gauge(
            "gennet_breaker_fleet_state",
            "1 for the state the shared storage last reported for the breaker.",
            ["breaker", "state"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.breaker_calls = Counter(
            "gennet_breaker_calls",
            "Calls through the breaker, by outcome (rejected: refused without running).",
            ["breaker", "outcome"],
            registry=registry,
        )
        self.breaker_slow_calls = Counter(
            "gennet_breaker_slow_calls",
            "Calls that took at least the breaker's slow_call_duration.",
            ["breaker"],
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "gennet_breaker_transitions",
            "State changes of the breaker.",
            ["breaker", "from_state", "to_state"],
            registry=registry,
        )
        self.breaker_retry_at = Gauge(
            "gennet_breaker_retry_at_seconds",
            "Wall-clock time (Unix seconds) of the breaker's next trial call; 0 when none.",
            ["breaker"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.client_requests = Counter(
            "gennet_client_requests",
            "ServiceSession calls, by status (or the error type when no response came).",
            ["service", "method", "status"],
            registry=registry,
        )
        self.client_duration = Histogram(
            "gennet_client_request_duration_seconds",
            "Time a ServiceSession call took, retries included.",
            ["service", "method"],
            registry=registry,
        )
        self.client_retries = Counter(
            "gennet_client_retries",
            "Retries ServiceSession made.",
            ["service"],
            registry=registry,
        )
        self.client_downstream_errors = Counter(
            "gennet_client_downstream_errors",
            "Error responses from downstream services, by the code in their envelope.",
            ["service", "code"],
            registry=registry,
        )
        # A gauge without labels has a value (0) from its creation: made on the
        # first shared storage seen, so a service without one shows no outage.
        self._storage_up: Gauge | None = None
        self._storage_lock = threading.Lock()
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._client_labels: dict[tuple[str | None, str | None], tuple[str, str]] = {}
        # Requests and calls counted since the last copy, by their labels: the
        # request path updates a few integers under this lock, the flush copies
        # them into prometheus-client's values (see docs/metrics.md).
        self._tally_lock = threading.Lock()
        self._http_tally: dict[tuple[str, str, int, str | None], list[float]] = {}
        # Timed requests as they finished (URL rule, method, status, error code,
        # seconds), counted into a tally by the flush: a request appends one tuple,
        # which needs no lock (see _count_pending).
        self._http_pending: deque[_Finished] = deque()
        self._client_tally: dict[tuple[str, str, str, str | None], list[float]] = {}
        self._seen: weakref.WeakKeyDictionary[CircuitBreaker, _Seen] = weakref.WeakKeyDictionary()
        self._flush_lock = threading.Lock()
        self.codes = _KnownCodes()
        self.services = _LabelCap()
        self.error_types = _LabelCap()
        self._warned_breakers = False
        # Every breaker name ever exported (capped), and those whose gauges are
        # written now: a name whose breakers are all gone has its gauges removed.
        self._names: set[str] = set()
        self._gauged: set[str] = set()
        self._fleet_gauged: set[str] = set()

    # -- the Flask side ----------------------------------------------------------------

    def observe_request(self, request: Request, response: Response) -> Response:
        """Note a finished request for the next flush to count: one tuple appended.

        The features' after step itself (one call a request, not two); it never
        raises: a failure is logged and the response goes out as it is.  Its
        labels and histogram bucket are worked out by :meth:`_count_pending`, off
        the request path, for many requests at a time.
        """
        try:
            if _flusher_pid is None:  # checked here: a call per request costs
                _ensure_flusher()
            started = request.environ.get(_STARTED)
            if started is None:  # an earlier before_request hook answered: not timed
                self._count_untimed(request, response)
                return response
            pending = self._http_pending
            # deque.append is atomic: no lock, and nothing appended is lost to a
            # flush draining the deque at the same time.  ``_status_code`` is what
            # the status_code property returns, without its call (a test pins it).
            pending.append(
                (
                    request.url_rule,
                    request.method,
                    response._status_code,
                    getattr(response, "gennet_error_code", None),
                    perf_counter() - started,
                )
            )
            if len(pending) > _MAX_PENDING:
                with self._tally_lock:
                    self._count_pending(self._http_tally)
        except Exception:
            logger.exception("gennet_sync metrics: counting a request failed")
        return response

    def _count_untimed(self, request: Request, response: Response) -> None:
        code = getattr(response, "gennet_error_code", None)
        key = self._request_labels(request.url_rule, request.method, response._status_code, code)
        if key is not None:
            self._count(False, key, 0.0, 1)
        _check_unseen_request(request)

    def _request_labels(
        self, rule: Rule | None, method: str, status: int, code: object
    ) -> _Labels | None:
        """A request's labels: (method, route, status, error code); ``None``: not counted."""
        if rule is None:
            route = UNMATCHED_ROUTE
        elif rule.endpoint == _ENDPOINT:
            return None  # the scrapes themselves
        else:
            route = rule.rule
        return (method if method in _METHODS else OTHER, route, status, self._code_label(code))

    def _code_label(self, code: object) -> str | None:
        """The ``code`` label of an error code an envelope (or a hook) set."""
        if code is None:
            return None
        try:
            return self.codes(str(code))
        except Exception:  # an object set by hand that cannot be a string
            return OTHER

    def _count_pending(self, tally: dict[_Labels, list[float]]) -> None:
        """Count the timed requests noted so far into ``tally``, taking them out.

        Called by the flush, and by a request finding too many waiting (under the
        tally lock, ``tally`` being the shared one).  Each tuple is taken out by one
        atomic ``popleft``, so two callers at once count each request once; one
        appended meanwhile waits for the next call.
        """
        pending = self._http_pending
        take = pending.popleft
        # Durations by (rule, method, status, code), so the labels and buckets are
        # worked out once per set rather than once per request; requests in a row
        # with the same four (most of them, on a busy route) join the last one's
        # list without a lookup.  A URL rule cannot be hashed (werkzeug's Rule has
        # __eq__ and no __hash__): it is known by its id, and kept in ``rules`` so
        # no other object can take that id meanwhile.  A code is known by its type
        # too: a str Enum member equals its value but may be labelled otherwise.
        durations: dict[tuple[int, str, int, type, object], list[float]] = {}
        rules: dict[tuple[int, str, int, type, object], Rule | None] = {}
        last: tuple[Rule | None, str, int, object] | None = None
        run: list[float] = []
        for _ in range(len(pending)):
            try:
                rule, method, status, code, seconds = take()
            except IndexError:  # the other caller took the rest
                break
            if (
                last is not None
                and rule is last[0]
                and code is last[3]
                and status == last[2]
                and method == last[1]
            ):
                run.append(seconds)
                continue
            where = (id(rule), method, status, type(code), code)
            try:
                run = durations[where]
            except KeyError:
                run = durations[where] = []
                rules[where] = rule
            except Exception:  # a code set by hand that cannot be hashed
                key = self._request_labels(rule, method, status, code)
                if key is not None:
                    _add_durations(_tally_of(tally, key), [seconds])
                last = None
                continue
            run.append(seconds)
            last = (rule, method, status, code)
        for where, seconds_each in durations.items():
            _, method, status, _, code = where
            key = self._request_labels(rules[where], method, status, code)
            if key is not None:
                _add_durations(_tally_of(tally, key), seconds_each)

    def _count(self, client: bool, key: Any, seconds: float, index: int) -> None:
        """Add one request (or ``client`` call) to its tally: its duration, one at ``index``."""
        with self._tally_lock:
            # Looked up under the lock: a copy swaps the tables for empty ones, and
            # one fetched before it would be counted into after its copy (lost).
            table = self._client_tally if client else self._http_tally
            tally = table.get(key)
            if tally is None:
                tally = table[key] = _new_tally()
            tally[0] += seconds
            tally[index] += 1

    # -- the client side ---------------------------------------------------------------

    def observe_call(
        self,
        session: http_client.ServiceSession,
        request: requests.PreparedRequest,
        seconds: float,
        response: requests.Response | None,
        error: BaseException | None,
    ) -> None:
        downstream_code = None
        if response is not None:
            code = response.status_code
            status = _STATUS_LABELS.get(code) or str(code)
            # Only a body already read: a streamed one is the caller's to read.
            if code >= 400 and isinstance(response._content, bytes):
                mapped = http_client.error_from_response(response, service=session.service_name)
                downstream_code = None if mapped is None else mapped.code
        elif isinstance(error, GenNetException) and not isinstance(
            error, requests.RequestException
        ):
            # raise_errors: the downstream answered an error, raised as its envelope says.
            status = str(error.status_code)
            downstream_code = error.code
        else:
            status = self.error_types(_error_type(error))
        target = (session.service_name or session.base_url or request.url, request.method)
        labels = self._client_labels.get(target)
        if labels is None:
            labels = self._client_labels_for(target)
        if downstream_code is not None:
            downstream_code = self.codes(downstream_code)
        self._count(
            True,
            (labels[0], labels[1], status, downstream_code),
            seconds,
            bisect_left(_BOUNDS, seconds) + _TIMED,
        )

    def _client_labels_for(self, target: tuple[str | None, str | None]) -> tuple[str, str]:
        where, method = target
        service = self.services(_service_label(where))
        method = (method or "GET").upper()
        labels = (service, method if method in _METHODS else OTHER)
        if len(self._client_labels) >= _MAX_CACHED_CHILDREN:
            self._client_labels.clear()  # per-host sessions to ever new hosts
        self._client_labels[target] = labels
        return labels

    # -- the copy of the tallies into prometheus-client, off the request path ------------

    def flush_calls(self) -> None:
        """Copy the requests and calls counted since the last copy into the metrics."""
        with self._flush_lock:
            # Swapped under the tally's lock (which calls, untimed requests and a
            # request over the queue's cap take); copied under the flush lock, so a
            # scrape waits for a copy the flush thread is still writing.  The queue
            # first, then the swap: a request over the cap counts the rest of the
            # queue into the shared tally under its lock, so whatever the queue held
            # when this copy began is in this copy, one way or the other.
            queued: dict[_Labels, list[float]] = {}
            self._count_pending(queued)
            with self._tally_lock:
                http, self._http_tally = self._http_tally, {}
                client, self._client_tally = self._client_tally, {}
            for key, counts in queued.items():
                tally = http.get(key)
                if tally is None:
                    http[key] = counts
                else:
                    tally[:] = map(add, tally, counts)
            for (method, route, status, code), tally in http.items():
                count = int(sum(tally[1:]))
                children = self._http_children.get((method, route, status))
                if children is None:
                    children = (
                        self.http_requests.labels(method, route, str(status)),
                        self.http_duration.labels(method, route),
                    )
                    self._http_children[(method, route, status)] = children
                children[0].inc(count)
                _add_observations(children[1], tally)
                if code is not None:
                    self.http_errors.labels(code, str(status), method, route).inc(count)
            for (service, verb, outcome, downstream), tally in client.items():
                count = int(sum(tally[1:]))
                self.client_requests.labels(service, verb, outcome).inc(count)
                _add_observations(self.client_duration.labels(service, verb), tally)
                if downstream is not None:
                    self.client_downstream_errors.labels(service, downstream).inc(count)

    def count_retry(self, call: Any) -> None:
        session = call.session
        target = session.service_name or session.base_url or call.url
        self.client_retries.labels(self.services(_service_label(target))).inc()

    # -- the breakers: their own counters, copied off the call path ----------------------

    def flush_breakers(self, *, gauges: bool = True) -> None:
        """Copy every breaker's counters and state of this process into the metrics.

        Args:
            gauges: ``False`` copies the counters only (a process about to fork:
                its gauges would outlive it as a live process's).
        """
        with _breakers._live_lock:
            breakers = list(_breakers._live_breakers)
        with self._flush_lock:
            storage_up: bool | None = None
            live: set[str] = set()
            for breaker in breakers:
                label = self._label(breaker.name)
                if label is None:
                    continue
                status = breaker.status()
                self._copy(breaker, status, label, gauges=gauges)
                live.add(label)
                if status.storage_up is not None:
                    storage_up = status.storage_up and storage_up is not False
            if not gauges:
                return
            self._drop_gauges(self._gauged - live)
            self._gauged = live
            if storage_up is not None:
                self._storage_gauge().set(1 if storage_up else 0)

    def _label(self, name: str) -> str | None:
        """The ``breaker`` label of a breaker named ``name``; ``None``: not exported."""
        if name in self._names:
            return name
        if _BREAKER_NAME.fullmatch(name) is not None and len(self._names) < _MAX_BREAKERS:
            self._names.add(name)
            return name
        if not self._warned_breakers:
            logger.warning(
                "circuit breaker %r not exported to the metrics: more than %d names, or "
                "not a label value (letters, digits and _.:-, at most 128)",
                name[:200],
                _MAX_BREAKERS,
            )
            self._warned_breakers = True
        return None

    def _drop_gauges(self, gone: set[str]) -> None:
        """Remove the gauges of breakers no longer alive (their counters stay).

        prometheus-client cannot remove a label set from its multiprocess files:
        there the gauges are set to NaN, which no comparison (no alert) matches,
        and they go with the worker.
        """
        multiprocess = multiprocess_mode()
        for name in gone:
            gauges = [self.breaker_state]
            if name in self._fleet_gauged:
                gauges.append(self.breaker_fleet_state)
                self._fleet_gauged.discard(name)
            for gauge in gauges:
                for state in _STATES:
                    if multiprocess:
                        gauge.labels(name, state.value).set(math.nan)
                    else:
                        gauge.remove(name, state.value)
            if multiprocess:
                self.breaker_retry_at.labels(name).set(math.nan)
            else:
                self.breaker_retry_at.remove(name)

    def _storage_gauge(self) -> Gauge:
        with self._storage_lock:
            if self._storage_up is None:
                self._storage_up = Gauge(
                    "gennet_breaker_storage_up",
                    "1 when the breakers' shared storage answered their last call.",
                    registry=self.registry,
                    multiprocess_mode="livemin",
                )
            return self._storage_up

    def _copy(
        self, breaker: CircuitBreaker, status: BreakerStatus, name: str, *, gauges: bool = True
    ) -> None:
        snapshot = status.metrics
        counts = (
            snapshot.successes,
            snapshot.failures,
            snapshot.ignored,
            snapshot.rejections,
            snapshot.slow_calls,
        )
        seen = self._seen.get(breaker)
        before = seen.counts if seen is not None else (0, 0, 0, 0, 0)
        for outcome, now, then in zip(
            ("success", "failure", "ignored", "rejected"), counts, before, strict=False
        ):
            if now > then:
                self.breaker_calls.labels(name, outcome).inc(now - then)
            elif seen is None:
                self.breaker_calls.labels(name, outcome)  # the series exists from 0
        if counts[4] > before[4]:
            self.breaker_slow_calls.labels(name).inc(counts[4] - before[4])
        elif seen is None:
            self.breaker_slow_calls.labels(name)
        history = status.transitions
        last = seen.last_transition if seen is not None else None
        for record in _after(history, last):
            self.breaker_transitions.labels(
                name, record.old_state.value, record.new_state.value
            ).inc()
        fleet_at = seen.fleet_at if seen is not None else None
        written = seen.gauges if seen is not None else None
        current = (snapshot.state, status.retry_at or 0.0)
        self._seen[breaker] = _Seen(counts, history[-1] if history else last, written, fleet_at)
        if not gauges:
            return
        self._seen[breaker].gauges = current
        # Written again when the name was dropped (every breaker of it was gone).
        if written != current or name not in self._gauged:
            for state in _STATES:
                self.breaker_state.labels(name, state.value).set(
                    1 if state is snapshot.state else 0
                )
            self.breaker_retry_at.labels(name).set(current[1])
        checked_at = status.fleet_checked_at
        if (
            status.fleet_state is not None
            and checked_at is not None
            and (fleet_at is None or checked_at > fleet_at or name not in self._gauged)
        ):
            for state in _STATES:
                self.breaker_fleet_state.labels(name, state.value).set(
                    1 if state is status.fleet_state else 0
                )
            self._seen[breaker].fleet_at = checked_at
            self._fleet_gauged.add(name)


def _new_tally() -> list[float]:
    return [0.0] * (_TIMED + len(_BOUNDS))


def _tally_of(tallies: dict[Any, list[float]], key: Any) -> list[float]:
    """The tally of ``key`` in ``tallies``, made empty if it has none yet."""
    tally = tallies.get(key)
    if tally is None:
        tally = tallies[key] = _new_tally()
    return tally


def _add_durations(tally: list[float], durations: list[float]) -> None:
    """Add requests that took ``durations`` seconds to a tally: their sum and buckets."""
    total = sum(durations)
    tally[0] += total
    if len(durations) == 1 or total != total:  # noqa: PLR0124 - NaN: a list with one can't be sorted
        for seconds in durations:
            tally[bisect_left(_BOUNDS, seconds) + _TIMED] += 1
        return
    # Sorted, each bucket's count is the distance between two bisections: a bucket
    # counts the durations up to its bound (included) and above the one before.
    durations.sort()
    below = 0
    for index, bound in enumerate(_BOUNDS, _TIMED):
        upto = bisect_right(durations, bound)
        tally[index] += upto - below
        below = upto
        if below == len(durations):
            return


def _add_observations(histogram: Any, tally: list[float]) -> None:
    """Add a tally's timed requests to a histogram child, one write per bucket.

    prometheus-client has no public call adding many observations at once, and
    ``observe()`` once per request is what this copy exists to avoid (in
    multiprocess mode each one writes the worker's file).  Its ``_sum`` and
    per-bucket ``_buckets`` values (non-cumulative, as ``observe()`` fills them)
    have been its histogram's layout since its first releases; the unit tests
    check the exported buckets, so a change there fails them rather than
    miscounting.
    """
    timed = tally[_TIMED:]
    if not any(timed):
        return
    histogram._sum.inc(tally[0])
    buckets = histogram._buckets
    for index, count in enumerate(timed):
        if count:
            buckets[index].inc(count)


def _after(
    history: tuple[TransitionRecord, ...], last: TransitionRecord | None
) -> tuple[TransitionRecord, ...]:
    """The records of ``history`` newer than ``last`` (all of them when it has gone by)."""
    if last is None:
        return history
    for index in range(len(history) - 1, -1, -1):
        if history[index] == last:
            return history[index + 1 :]
    return history


# -- process-wide state: one set of series per registry, one flush thread ----------------

_series: dict[int, _Series] = {}
_series_lock = threading.Lock()
_flush_interval = DEFAULT_FLUSH_INTERVAL
_flusher_pid: int | None = None
_flusher_stop = threading.Event()


# The same, as a tuple the per-call observer reads without copying.
_all_series: tuple[_Series, ...] = ()


def _series_for(registry: CollectorRegistry) -> _Series:
    global _all_series  # noqa: PLW0603
    with _series_lock:
        series = _series.get(id(registry))
        if series is None:
            series = _series[id(registry)] = _Series(registry)
            _all_series = tuple(_series.values())
        return series


def flush() -> None:
    """Copy the breakers' counters and the requests and calls counted into the metrics now.

    The flush thread calls it every interval, a scrape before answering, a worker
    as it exits.  Never raises: a metrics failure is logged, the caller carries on.
    """
    for series in _all_series:
        # The breakers first: a scrape that shows a breaker's call shows the
        # requests counted before it too.
        try:
            series.flush_breakers()
        except Exception:
            logger.exception("gennet_sync metrics: copying the breakers' counters failed")
        try:
            series.flush_calls()
        except Exception:
            logger.exception("gennet_sync metrics: copying the requests counted failed")


def _flush_loop(stop: threading.Event) -> None:
    while not stop.wait(_flush_interval):
        flush()
        _ask_storages()


def _ask_storages() -> None:
    """Ask each shared storage in use whether it answers, at most once per ``sync_interval``.

    An idle service makes no storage call of its own, so without this
    ``gennet_breaker_storage_up`` would show the last answer of its last call
    for as long as it stays idle.  One breaker per storage asks (``sync()``,
    which also refreshes its fleet state); only this thread does it, never a
    scrape, so a hung Redis delays this thread by the storage's own socket
    timeout and never the scrape.
    """
    with _breakers._live_lock:
        # Weak references: a storage call may wait seconds, and must not keep every
        # breaker of the process (garbage of a finished request) alive meanwhile.
        chosen = {id(each.storage): weakref.ref(each) for each in _breakers._live_breakers}
    for reference in chosen.values():
        breaker = reference()
        if breaker is None:
            continue
        try:
            breaker.sync()  # without a shared storage, returns at once
        except Exception:
            logger.exception("gennet_sync metrics: asking the breakers' storage failed")
        del breaker


def _ensure_flusher() -> None:
    """Start this process's flush thread (a forked worker starts its own)."""
    global _flusher_pid, _flusher_stop  # noqa: PLW0603
    if _flusher_pid is not None:  # reset in a forked child (_reinit_after_fork)
        return
    with _series_lock:
        if _flusher_pid is not None:
            return
        pid = os.getpid()
        _flusher_stop = threading.Event()
        thread = threading.Thread(
            target=_flush_loop, args=(_flusher_stop,), name="gennet-metrics-flush", daemon=True
        )
        thread.start()
        _flusher_pid = pid


def _stop_flusher() -> None:
    """Stop the flush thread (for tests); the next request starts it again."""
    global _flusher_pid  # noqa: PLW0603
    _flusher_stop.set()
    _flusher_pid = None


def _flush_before_fork() -> None:
    """The parent's counts go out under its own name before a child inherits them."""
    for series in _all_series:
        try:
            series.flush_breakers(gauges=False)
            series.flush_calls()  # the child starts with an empty tally
        except Exception:
            logger.exception("gennet_sync metrics: copying the breakers' counters failed")


def _reinit_after_fork() -> None:
    global _series_lock, _flusher_pid  # noqa: PLW0603
    _series_lock = threading.Lock()
    _flusher_pid = None
    # Every breaker's counts so far are the parent's (copied by it just before the
    # fork, or never ours to copy): the child copies only what it adds, else every
    # worker forked from a preloaded master would export the master's calls again.
    # Read from the fields, not status(): no listener or storage call in a fork hook.
    breakers = list(_breakers._live_breakers)
    for series in _series.values():
        series._flush_lock = threading.Lock()
        series._storage_lock = threading.Lock()
        series._tally_lock = threading.Lock()
        # The parent's uncopied counts are the parent's to copy, not this worker's.
        series._http_tally = {}
        series._http_pending = deque()
        series._client_tally = {}
        for breaker in breakers:
            history = breaker._history
            last = history[-1] if history else None
            seen = series._seen.get(breaker)
            series._seen[breaker] = _Seen(
                (
                    breaker._successes,
                    breaker._failures,
                    breaker._ignored,
                    breaker._rejections,
                    breaker._slow_calls,
                ),
                last if last is not None or seen is None else seen.last_transition,
                None,  # the parent's gauges are not this worker's
                None if seen is None else seen.fleet_at,
            )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_flush_before_fork, after_in_child=_reinit_after_fork)
atexit.register(flush)


# -- the client observer ------------------------------------------------------------------


class _ClientObserver:
    """Feeds every ServiceSession call and retry to the series of each registry in use."""

    def observe(
        self,
        session: http_client.ServiceSession,
        request: requests.PreparedRequest,
        send: Callable[[], Any],
    ) -> requests.Response:
        started = perf_counter()
        try:
            response: requests.Response = send()
        except Exception as error:
            self._record(session, request, perf_counter() - started, None, error)
            raise
        self._record(session, request, perf_counter() - started, response, None)
        return response

    def retried(self, call: Any) -> None:
        if call is None:
            return
        try:
            for series in _all_series:
                series.count_retry(call)
        except Exception:
            logger.exception("gennet_sync metrics: counting a retry failed")

    def _record(
        self,
        session: http_client.ServiceSession,
        request: requests.PreparedRequest,
        seconds: float,
        response: requests.Response | None,
        error: BaseException | None,
    ) -> None:
        try:
            if _flusher_pid is None:  # a process that calls out but serves nothing yet
                _ensure_flusher()
            for series in _all_series:
                series.observe_call(session, request, seconds, response, error)
        except Exception:
            logger.exception("gennet_sync metrics: counting a call failed")


def _error_type(error: BaseException | None) -> str:
    """The type of a call's error, the same with and without ``raise_errors``.

    With it, a transport failure is raised as a class that is both ours and the
    requests exception it replaces (``ServiceUnavailableError`` and
    ``requests.ConnectionError``): the requests name is used, as without it.  A
    breaker's refusal is ``CircuitBreakerError`` either way.
    """
    if isinstance(error, CircuitBreakerError):
        return "CircuitBreakerError"
    if isinstance(error, GenNetException) and isinstance(error, requests.RequestException):
        theirs = type(error).__bases__[-1]
        return theirs.__name__
    return type(error).__name__


def _service_label(target: str | None) -> str:
    """A session's service name, else the ``host:port`` of its base URL or the call's URL."""
    if not target:
        return "downstream"
    if "://" not in target:
        return target
    return http_client.host_port(target) or "downstream"


_OBSERVER: Final = _ClientObserver()


# -- the Flask extension ------------------------------------------------------------------


class Metrics:
    """Serves the Prometheus text format at ``GET /metrics`` and counts every request.

    Settings from ``app.config``: ``GENNET_METRICS_PATH`` (default ``/metrics``)
    and ``GENNET_METRICS_FLUSH_INTERVAL`` (seconds between two copies of the
    breakers' counters and the requests and calls counted, default 1: the most
    a scrape lags another worker; the worker answering copies its own first).
    The metrics endpoint is neither counted nor in the OpenAPI document.  Under
    gunicorn use ``gennet_sync.gunicorn_conf``, which sets
    ``PROMETHEUS_MULTIPROC_DIR``: every worker then serves the totals of all of them.

    Example::

        metrics = Metrics(auth=lambda request: request.headers.get("X-Token") == TOKEN)

        def create_app():
            app = Flask(__name__)
            metrics.init_app(app)
            return app

    Args:
        app: The app, or ``None`` to call :meth:`init_app` later.
        auth: Called with the request to ``/metrics``; ``False`` answers 401.
        registry: Where the series are registered; prometheus-client's default
            registry (so the app's own metrics are served too) unless given.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        auth: Callable[[Request], bool] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.auth = auth
        self.registry = registry if registry is not None else REGISTRY
        self._series = _series_for(self.registry)
        self._checked = False
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Count the requests of ``app`` and serve the metrics on it.

        Raises:
            RuntimeError: ``app`` already has another ``Metrics``.
            ValueError: Another view already answers ``GENNET_METRICS_PATH``.
        """
        global _flush_interval  # noqa: PLW0603
        state = app_state(app)
        existing = state.features.get(_FEATURE)
        if existing is self:
            return
        if existing is not None:
            raise RuntimeError("this app already has a Metrics; use that one")
        path = app.config.setdefault("GENNET_METRICS_PATH", DEFAULT_METRICS_PATH)
        interval = float(
            app.config.setdefault("GENNET_METRICS_FLUSH_INTERVAL", DEFAULT_FLUSH_INTERVAL)
        )
        if not interval > 0:
            raise ValueError("GENNET_METRICS_FLUSH_INTERVAL must be a positive number of seconds")
        for rule in app.url_map.iter_rules():
            if rule.rule == path and "GET" in (rule.methods or ()):
                raise ValueError(
                    f"{rule.endpoint!r} already answers GET {path}; set GENNET_METRICS_PATH "
                    "to another path (or give the other extension another one)"
                )
        extra = app.config.setdefault("GENNET_METRICS_EXTRA_CODES", ())
        if isinstance(extra, str) or any(_CODE.fullmatch(str(code)) is None for code in extra):
            raise ValueError(
                "GENNET_METRICS_EXTRA_CODES must be a list of codes "
                "(letters, digits and _.:-, at most 64 characters)"
            )
        self._series.codes.extra |= frozenset(str(code) for code in extra)
        state.features[_FEATURE] = self
        _flush_interval = min(_flush_interval, interval)

        @doc(hidden=True)
        def serve_metrics() -> Response:
            return self._serve()

        app.add_url_rule(path, _ENDPOINT, serve_metrics, methods=["GET"])
        state.add_request_steps(app, before=self._note_start, after=self._series.observe_request)
        http_client.call_observer = _OBSERVER

    def _note_start(self, request: Request) -> None:
        request.environ[_STARTED] = perf_counter()
        if not self._checked:
            self._check_first_request(request)

    def _check_first_request(self, request: Request) -> None:
        try:
            self._check_served(request)
        except Exception:
            logger.exception("gennet_sync metrics: checking the app at its first request failed")

    def _check_served(self, request: Request) -> None:
        """At the first request: say what init_app could not see then.

        A view added after ``init_app`` on the metrics path (prometheus_flask_exporter
        set up later) is not refused at init; and gunicorn with several workers but
        without ``PROMETHEUS_MULTIPROC_DIR`` serves each worker's own counts, so
        two scrapes disagree.  Both are logged once, as errors of the setup.
        """
        self._checked = True
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        path = app.config.get("GENNET_METRICS_PATH", DEFAULT_METRICS_PATH)
        for rule in app.url_map.iter_rules():
            if rule.rule == path and rule.endpoint != _ENDPOINT and "GET" in (rule.methods or ()):
                logger.error(
                    "%r also answers GET %s (added after Metrics.init_app): one of the two "
                    "is never reached; set GENNET_METRICS_PATH to another path",
                    rule.endpoint,
                    path,
                )
        server = str(request.environ.get("SERVER_SOFTWARE", ""))
        if server.startswith("gunicorn") and not multiprocess_mode():
            logger.warning(
                "served by gunicorn without PROMETHEUS_MULTIPROC_DIR: each worker serves "
                "only its own counts; with more than one worker use "
                "'gunicorn -c python:gennet_sync.gunicorn_conf' (docs/metrics.md)"
            )

    def _serve(self) -> Response:
        if self.auth is not None and not self.auth(request):
            raise UnauthorizedError("Metrics need authentication")
        _ensure_flusher()
        flush()
        registry = self.registry
        if multiprocess_mode():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = Response(encoder(registry), status=200)
        response.headers["Content-Type"] = content_type
        response.headers["Cache-Control"] = "no-store"
        return response


def _check_unseen_request(request: Request) -> None:
    """The app's first-request check, for a request its metrics' before step never
    saw (an earlier ``before_request`` hook of the app's answered it): an app whose
    every request is answered so is still checked at its first."""
    metrics = app_state(current_app).features.get(_FEATURE)
    if isinstance(metrics, Metrics) and not metrics._checked:
        metrics._check_first_request(request)


def setup_metrics(app: Flask) -> Metrics:
    """The app's :class:`Metrics`, set up with its defaults when it has none yet."""
    existing = app_state(app).features.get(_FEATURE)
    if isinstance(existing, Metrics):
        return existing
    return Metrics(app)

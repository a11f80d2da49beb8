"""The one-command demo: three services under gunicorn, and a circuit breaker at work.

Run ``python -m examples.demo``.  It starts, on free 127.0.0.1 ports:

- the GRN service, the qualitative (CTL model checking) service and the workflow
  service, each under real gunicorn with 2 gthread workers;
- a ``redis-server``, when one is installed, through which the workflow
  service's workers share their circuit breaker (otherwise each worker process
  has its own breaker; the demo says which).  ``--redis-url URL`` (or
  ``GENNET_DEMO_REDIS_URL``) uses a Redis of yours instead: one server
  (``redis://``), Redis Sentinel (``redis+sentinel://``) or Redis Cluster
  (``redis+cluster://``), any URL ``GENNET_BREAKER_STORAGE`` takes;

then tells a story, printing a timeline with each call's latency:

1. store a gene regulatory network (a toggle switch) in the GRN service;
2. verify CTL formulas on it through the workflow service;
3. freeze the qualitative service (a downstream that hangs): a call with 1 s
   left fails at 1 s with a 504 ``DEADLINE_EXCEEDED``, the workflow's bulkhead
   (2 calls per worker) refuses the calls beyond it at once, and its health
   check keeps answering;
4. stop the qualitative service: the workflow's 503s turn from failed calls into
   immediate refusals once its breaker opens;
5. restart it: after the breaker's timeout a trial call goes through and the
   breaker closes.
5. read every service's ``/metrics`` back: the error codes returned and the
   breaker's transitions, on one screen.

``--trace`` runs the services with OpenTelemetry on, exporting OTLP/HTTP to a
receiver inside the demo, and prints the traces of the failed call that opened
a breaker and of the first refused one as indented span trees in
the timeline (needs the test
dependencies: ``opentelemetry-sdk``, ``opentelemetry-exporter-otlp-proto-http``,
``opentelemetry-proto``; ``./dev demo --trace`` installs them).

Everything it started is stopped at the end, also on Ctrl-C or failure.  The
exit status is 0 only if every step happened as told (statuses, error types
and breaker states are checked, not just printed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import parse_qsl, urlsplit

import requests

from examples.launcher import ManagedProcess, ProcessGroup, RedisProcess, ServiceProcess
from examples.metrics_summary import SETTLE_SECONDS, MetricsSummary

if TYPE_CHECKING:
    from examples.trace_receiver import OTLPReceiver, ReceivedSpan

__all__ = ["Deployment", "StoryFailed", "Timeline", "main", "rules_from_network", "run_story"]

WORKERS: Final = 2
#: Calls to the qualitative service each workflow worker makes at once, at most.
BULKHEAD: Final = 2
BREAKER_NAME: Final = "qualitative-service"
TOGGLE_SWITCH: Final = {
    "name": "toggle-switch",
    "nodes": ["x", "y"],
    "edges": [
        {"source": "x", "target": "y", "sign": -1},
        {"source": "y", "target": "x", "sign": -1},
    ],
}
#: (formula, initial state, expected verdict, what it says)
FORMULAS: Final[Sequence[tuple[str, dict[str, bool] | None, bool, str]]] = (
    ("AG(x & !y -> AG(x & !y))", None, True, "x-on/y-off is a stable state"),
    ("EF(x & !y)", {"x": False, "y": False}, True, "from all-off, x can win"),
    ("AF(x & !y)", {"x": False, "y": False}, False, "but x need not win"),
)


class StoryFailed(Exception):
    """A step of the story did not happen as told."""


@dataclass
class Reply:
    """One HTTP exchange as the timeline shows it."""

    status: int
    body: Any
    headers: requests.structures.CaseInsensitiveDict[str]
    latency_ms: float
    received_at: float

    @property
    def error(self) -> dict[str, Any]:
        """The envelope's ``error`` object, or ``{}``."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error if isinstance(error, dict) else {}


@dataclass
class Timeline:
    """Prints steps and events with the time since the start.

    Example::

        timeline = Timeline()
        timeline.step("Store a network")
        timeline.event("201 Created", latency_ms=12.5)
        timeline.expect(True, "the network was stored")
    """

    out: TextIO = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.monotonic)
    steps: int = 0

    def step(self, title: str) -> None:
        """Start step ``title``."""
        self.steps += 1
        self.out.write(f"\n== {self.steps}. {title}\n")
        self.out.flush()

    def event(self, text: str, latency_ms: float | None = None) -> None:
        """One line of the timeline."""
        elapsed = time.monotonic() - self.started
        suffix = "" if latency_ms is None else f"  ({latency_ms:,.1f} ms)"
        self.out.write(f"[{elapsed:6.2f} s] {text}{suffix}\n")
        self.out.flush()

    def expect(self, condition: bool, what: str) -> None:
        """Fail the story unless ``condition``; ``what`` is what should have happened."""
        if not condition:
            raise StoryFailed(what)


class Client:
    """Calls the services, one fresh connection per call.

    A new connection each time lets the kernel hand calls to either gunicorn
    worker, as a load balancer would, instead of pinning them to one.
    """

    def __init__(self) -> None:
        self.session = requests.Session()
        self.session.headers["Connection"] = "close"

    def close(self) -> None:
        """Close the session."""
        self.session.close()

    def call(self, method: str, url: str, **kwargs: Any) -> Reply:
        """Make one call (timeout 15 s) and time it."""
        started = time.perf_counter()
        response = self.session.request(method, url, timeout=15, **kwargs)
        latency = (time.perf_counter() - started) * 1000
        with response:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            return Reply(response.status_code, body, response.headers, latency, time.monotonic())


def rules_from_network(network: dict[str, Any]) -> dict[str, str]:
    """Boolean update rules from a signed network: a node is on when all its
    activators are on and all its repressors off; a node without regulators keeps
    its value."""
    rules: dict[str, str] = {}
    for node in network["nodes"]:
        literals = [
            edge["source"] if edge["sign"] == 1 else f"!{edge['source']}"
            for edge in network["edges"]
            if edge["target"] == node
        ]
        rules[node] = " & ".join(literals) if literals else node
    return rules


def describe_path(path: list[dict[str, bool]], loop_start: int | None) -> str:
    """``x=0 y=0 -> x=0 y=1 (loops back to state 2)``."""
    states = [" ".join(f"{name}={int(value)}" for name, value in state.items()) for state in path]
    text = " -> ".join(states)
    if loop_start is not None:
        text += f"  (then loops back to state {loop_start + 1} forever)"
    return text


@dataclass
class Deployment(ProcessGroup):
    """The three services and, when installed, a redis-server; started and stopped together.

    Example::

        with Deployment(Path("/tmp/demo"), use_redis=True) as deployment:
            deployment.workflow.base_url

    ``redis_url`` (a storage URL of any form ``GENNET_BREAKER_STORAGE`` takes)
    shares the breaker through that Redis instead of a redis-server started here.
    """

    workdir: Path
    use_redis: bool
    breaker_threshold: int = 3
    breaker_timeout: float = 2.0
    redis_url: str | None = None
    trace_endpoint: str | None = None
    redis: RedisProcess | None = None
    grn: ServiceProcess = field(init=False)
    qualitative: ServiceProcess = field(init=False)
    workflow: ServiceProcess = field(init=False)

    def __post_init__(self) -> None:
        if self.use_redis and self.redis_url is None:
            self.redis = RedisProcess(self.workdir)
        # Each worker sets the SDK up after its fork (examples/gunicorn.conf.py).
        tracing: dict[str, str] = {}
        if self.trace_endpoint is not None:
            tracing = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": self.trace_endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "100",  # exported within a tenth of a second
            }
        self.grn = ServiceProcess(
            "grn",
            "examples.grn_service:create_app()",
            self.workdir,
            workers=WORKERS,
            env={"GRN_DATABASE": str(self.workdir / "grn.sqlite3"), **tracing},
        )
        self.qualitative = ServiceProcess(
            "qualitative",
            "examples.qualitative_service:create_app()",
            self.workdir,
            workers=WORKERS,
            env=tracing,
        )
        workflow_env = {
            **tracing,
            "QUALITATIVE_URL": self.qualitative.base_url,
            "QUALITATIVE_SERVICE_NAME": BREAKER_NAME,
            "CIRCUIT_BREAKER_THRESHOLD": str(self.breaker_threshold),
            "CIRCUIT_BREAKER_TIMEOUT": str(self.breaker_timeout),
            "QUALITATIVE_TIMEOUT": "10",
            "QUALITATIVE_MAX_CONCURRENT_CALLS": str(BULKHEAD),
            "GENNET_BREAKER_STORAGE": "",
        }
        if self.storage_url is not None:
            workflow_env["GENNET_BREAKER_STORAGE"] = self.storage_url
        self.workflow = ServiceProcess(
            "workflow",
            "examples.workflow_service:create_app()",
            self.workdir,
            workers=WORKERS,
            env=workflow_env,
        )

    @property
    def storage_url(self) -> str | None:
        """The workflow workers' ``GENNET_BREAKER_STORAGE``; ``None``: per worker."""
        url = self.redis_url if self.redis is None else self.redis.url
        if url is None:
            return None
        return _with_demo_options(url)

    @property
    def shared(self) -> bool:
        """Whether the workflow workers share their breaker through Redis."""
        return self.storage_url is not None

    def describe(self) -> str:
        """Where everything listens."""
        services = [self.grn, self.qualitative, self.workflow]
        parts = [f"{s.name} on :{s.port}" for s in services]
        if self.redis is not None:
            parts.append(f"redis-server on :{self.redis.port}")
        elif self.storage_url is not None:
            parts.append(f"breaker state in {_storage_description(self.storage_url)}")
        return ", ".join(parts) + f" ({WORKERS} gunicorn workers per service)"

    @property
    def processes(self) -> list[ManagedProcess]:
        """Everything this deployment runs, in start order."""
        servers: list[ManagedProcess] = [self.grn, self.qualitative, self.workflow]
        return ([self.redis] if self.redis is not None else []) + servers

    def start(self) -> None:
        """Start every process, then wait for each to be ready (they boot in parallel)."""
        for process in self.processes:
            process.start()
            if process is self.redis:
                process.wait_ready()  # the workflow service connects to it at its first call
        for process in self.processes:
            process.wait_ready()
        if self.redis_url is not None and self.storage_url is not None:
            _forget_breaker(self.storage_url)

    def stop(self) -> None:
        """Stop every process, last started first; never raises for one that is gone."""
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop(quick=True)


def _store_network(deployment: Deployment, client: Client, timeline: Timeline) -> dict[str, Any]:
    timeline.step("Store a gene regulatory network in the GRN service")
    networks = f"{deployment.grn.base_url}/api/v2/networks"
    created = client.call("POST", networks, json=TOGGLE_SWITCH)
    timeline.event(
        f"POST /api/v2/networks -> {created.status}, id {created.body.get('id')}: "
        "toggle switch, x and y repress each other",
        created.latency_ms,
    )
    timeline.expect(created.status == 201, "the GRN service stores the network (201)")
    network_id = created.body["id"]

    fetched = client.call("GET", f"{deployment.grn.base_url}/api/v1/networks/{network_id}")
    timeline.event(
        f"GET /api/v1/networks/<id> -> {fetched.status}; v1 is deprecated: "
        f"Deprecation {fetched.headers.get('Deprecation')}, Sunset {fetched.headers.get('Sunset')}",
        fetched.latency_ms,
    )
    timeline.expect(
        fetched.status == 200 and "Deprecation" in fetched.headers,
        "the deprecated v1 API still serves the network, with a Deprecation header",
    )

    again = client.call("POST", networks, json=TOGGLE_SWITCH)
    timeline.event(
        f"POST the same name again -> {again.status} {again.error.get('code')}: "
        f"{again.error.get('message')}",
        again.latency_ms,
    )
    timeline.expect(again.status == 409, "a duplicate name is a 409 CONFLICT envelope")
    network: dict[str, Any] = fetched.body
    return network


def _verify_formulas(
    deployment: Deployment, client: Client, timeline: Timeline, network: dict[str, Any]
) -> dict[str, Any]:
    timeline.step("Verify CTL formulas through the workflow service")
    rules = rules_from_network(network)
    timeline.event(
        "rules from the stored network: " + ", ".join(f"{n} = {r}" for n, r in rules.items())
    )
    verify_url = f"{deployment.workflow.base_url}/api/v1/workflows/verify"
    request: dict[str, Any] = {"network": {"nodes": rules, "update": "asynchronous"}}
    for formula, initial, expected, meaning in FORMULAS:
        body = {**request, "formula": formula, **({"initial": initial} if initial else {})}
        reply = client.call("POST", verify_url, json=body)
        verdict = reply.body.get("holds") if reply.status == 200 else None
        start = f" from {initial}" if initial else ""
        timeline.event(
            f"{formula}{start} -> {reply.status}, holds={verdict} ({meaning})", reply.latency_ms
        )
        timeline.expect(
            reply.status == 200 and verdict is expected,
            f"{formula} is {'true' if expected else 'false'}{start}",
        )
        trace = reply.body.get("counterexample") or reply.body.get("witness")
        if trace:
            kind = "counterexample" if "counterexample" in reply.body else "witness"
            timeline.event(f"    {kind}: {describe_path(trace['path'], trace['loop_start'])}")

    bad = client.call("POST", verify_url, json={**request, "formula": "AG(x -> EF z)"})
    error = bad.error
    timeline.event(
        f"AG(x -> EF z) -> {bad.status} {error.get('code')} from service "
        f"'{error.get('metadata', {}).get('service')}': {error.get('message')}",
        bad.latency_ms,
    )
    timeline.expect(
        bad.status == 422
        and error.get("code") == "VALIDATION_ERROR"
        and error.get("metadata", {}).get("service") == BREAKER_NAME,
        "the qualitative service's 422 envelope comes back through the workflow unchanged",
    )
    return {**request, "formula": FORMULAS[0][0]}


@dataclass(frozen=True)
class BreakerView:
    """One workflow worker's breaker: its local state and, if shared, Redis's."""

    local: str
    shared: str | None

    def __str__(self) -> str:
        return self.local if self.shared is None else f"{self.local} (Redis: {self.shared})"


def _breaker_views(
    deployment: Deployment, client: Client, samples: int = 6
) -> dict[int, BreakerView]:
    """``{worker pid: view}`` for the workers that answered ``samples`` calls."""
    seen: dict[int, BreakerView] = {}
    for _ in range(samples):
        reply = client.call("GET", f"{deployment.workflow.base_url}/api/v1/workflows/breaker")
        if reply.status == 200:
            seen[reply.body["pid"]] = BreakerView(reply.body["state"], reply.body["shared_state"])
    return seen


def _show_views(timeline: Timeline, title: str, views: dict[int, BreakerView]) -> None:
    timeline.event(
        f"{title}: " + ", ".join(f"pid {pid}: {view}" for pid, view in sorted(views.items()))
    )


def _describe_503(reply: Reply) -> str:
    error = reply.error
    metadata = error.get("metadata", {})
    if error.get("type") == "CircuitBreakerError":
        return (
            f"503 CircuitBreakerError: breaker {metadata.get('state')}, call not attempted, "
            f"Retry-After {reply.headers.get('Retry-After')}"
        )
    return (
        f"{reply.status} {error.get('type')}: {error.get('message')}, "
        f"Retry-After {reply.headers.get('Retry-After')}"
    )


def _show_trace(
    timeline: Timeline, receiver: OTLPReceiver | None, title: str, reply: Reply | None
) -> None:
    """Print the trace of the call ``reply`` answered as an indented span tree."""
    if receiver is None or reply is None:
        return
    from examples.trace_receiver import span_tree

    request_id = reply.headers.get("X-Request-ID")

    def root_of(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
        for span in spans:
            if span.parent_span_id == "" and span.attributes.get("gennet.request_id") == request_id:
                return span
        return None

    try:
        root = root_of(receiver.wait_for(lambda spans: root_of(spans) is not None, timeout=10))
    except AssertionError:
        root = None
    timeline.expect(root is not None, f"the trace of {title} was exported")
    assert root is not None
    # The workflow's client span may come in a later export than its server span.
    with contextlib.suppress(AssertionError):  # printed as far as it has arrived
        receiver.wait_for(
            lambda spans: sum(span.trace_id == root.trace_id for span in spans) >= 2,
            timeout=2,
        )
    timeline.event(f"trace of {title} (trace ID {root.trace_id}):")
    for line in span_tree(receiver.spans(), root.trace_id):
        timeline.out.write(f"             {line}\n")
    timeline.out.flush()


def _call_that_opened_a_breaker(
    receiver: OTLPReceiver | None, replies: list[Reply]
) -> Reply | None:
    """The last of ``replies`` whose trace shows a breaker opening, once exported."""
    if receiver is None or not replies:
        return None
    by_id = {reply.headers.get("X-Request-ID"): reply for reply in replies}

    def opener(spans: list[ReceivedSpan]) -> Reply | None:
        traces = {
            span.trace_id: by_id[span.attributes.get("gennet.request_id")]
            for span in spans
            if span.parent_span_id == "" and span.attributes.get("gennet.request_id") in by_id
        }
        found = [
            traces[span.trace_id]
            for span in spans
            if span.trace_id in traces
            and any(name == "gennet.breaker.state_change" for name, _ in span.events)
        ]
        return max(found, key=replies.index) if found else None

    try:
        return opener(receiver.wait_for(lambda spans: opener(spans) is not None, timeout=10))
    except AssertionError:
        return None


def _concurrent_calls(url: str, count: int, **kwargs: Any) -> list[Reply]:
    """``count`` POSTs to ``url`` at once, each from its own thread and client."""
    replies: list[Reply] = []
    start = threading.Barrier(count)

    def call() -> None:
        client = Client()
        try:
            start.wait()
            replies.append(client.call("POST", url, **kwargs))
        finally:
            client.close()

    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return replies


def _hang_qualitative(
    deployment: Deployment, client: Client, timeline: Timeline, request: dict[str, Any]
) -> None:
    timeline.step("Freeze the qualitative service: deadlines and the bulkhead")
    deployment.qualitative.pause()
    timeline.event("qualitative service frozen (SIGSTOP): it accepts calls and never answers")
    verify_url = f"{deployment.workflow.base_url}/api/v1/workflows/verify"
    try:
        reply = client.call("POST", verify_url, json=request, headers={"Request-Timeout": "1"})
        timeline.event(
            f"a call with 1 s left (Request-Timeout: 1) -> {reply.status} "
            f"{reply.error.get('code')}",
            reply.latency_ms,
        )
        timeline.expect(
            reply.status == 504 and reply.error.get("code") == "DEADLINE_EXCEEDED",
            "a call with 1 s left ends at its deadline with a 504 DEADLINE_EXCEEDED",
        )
        timeline.expect(reply.latency_ms < 5000, "it ends at its deadline, not the 10 s timeout")
        calls = BULKHEAD * WORKERS + 2
        health: list[Reply] = []
        probe = threading.Timer(
            0.5, lambda: health.append(client.call("GET", f"{deployment.workflow.base_url}/health"))
        )
        probe.start()
        replies = _concurrent_calls(
            verify_url, calls, json=request, headers={"Request-Timeout": "2"}
        )
        probe.join(timeout=30)
        codes = sorted(str(reply.error.get("code")) for reply in replies)
        refused = [reply for reply in replies if reply.error.get("code") == "BULKHEAD_FULL"]
        timeline.event(f"{calls} calls at once, 2 s left each -> {', '.join(codes)}")
        for reply in refused[:2]:
            timeline.event(f"refused by the bulkhead: {_describe_503(reply)}", reply.latency_ms)
        timeline.expect(
            len(replies) == calls and {r.status for r in replies} <= {503, 504},
            "every call fails: the qualitative service does not answer",
        )
        timeline.expect(
            len(refused) >= calls - BULKHEAD * WORKERS,
            f"at most {BULKHEAD} calls per worker wait for the frozen service; "
            "the rest are refused at once",
        )
        timeline.expect(
            all(reply.latency_ms < 1000 for reply in refused),
            "a refusal by the bulkhead is immediate",
        )
        timeline.expect(
            len(health) == 1 and health[0].status == 200,
            "the workflow service answers its health check while its calls hang",
        )
        timeline.event("health check during the hang -> 200", health[0].latency_ms)
    finally:
        deployment.qualitative.resume()
    timeline.event("qualitative service resumed")
    # The calls that ran out of time counted against the breaker: let it recover
    # before the next step shows it opening from closed.
    time.sleep(deployment.breaker_timeout + 0.2)
    ok = 0
    for _ in range(20):
        reply = client.call("POST", verify_url, json=request)
        ok = ok + 1 if reply.status == 200 else 0
        if ok >= 2 * WORKERS:
            break
        if reply.error.get("type") == "CircuitBreakerError":
            time.sleep(0.3)
    timeline.event(f"calls succeed again ({ok} in a row)")
    timeline.expect(ok >= 2 * WORKERS, "the workflow calls the qualitative service again")


def _stop_qualitative(
    deployment: Deployment,
    client: Client,
    timeline: Timeline,
    request: dict[str, Any],
    shared: bool,
    receiver: OTLPReceiver | None = None,
) -> float:
    """Returns when (monotonic) every breaker that opened will let a trial through."""
    timeline.step("Stop the qualitative service and watch the breaker open")
    deployment.qualitative.stop(quick=True)
    timeline.event(
        f"qualitative service stopped (gunicorn on port {deployment.qualitative.port}, "
        "quick shutdown)"
    )
    verify_url = f"{deployment.workflow.base_url}/api/v1/workflows/verify"
    threshold = deployment.breaker_threshold
    failed_calls = 0
    open_in_a_row = 0
    trial_deadline = 0.0
    wanted_open = 2 * WORKERS
    failed: list[Reply] = []
    first_refused: Reply | None = None
    for _ in range(threshold * WORKERS + wanted_open + 10):
        reply = client.call("POST", verify_url, json=request)
        timeline.event(
            _describe_503(reply) if reply.status >= 400 else str(reply.status), reply.latency_ms
        )
        timeline.expect(
            reply.status == 503 and "Retry-After" in reply.headers,
            "with the qualitative service down, every answer is a 503 with Retry-After",
        )
        if reply.error.get("type") == "CircuitBreakerError":
            first_refused = first_refused or reply
            open_in_a_row += 1
            retry_after = float(reply.error["metadata"].get("retry_after") or 0)
            trial_deadline = max(trial_deadline, reply.received_at + retry_after)
            if open_in_a_row >= wanted_open:
                break
        else:
            failed.append(reply)
            failed_calls += 1
            open_in_a_row = 0
            # Every worker whose breaker opened did so by this failure at the latest;
            # the refusals seen may all have come from a worker that opened earlier.
            trial_deadline = max(trial_deadline, reply.received_at + deployment.breaker_timeout)
    timeline.expect(
        open_in_a_row >= wanted_open, "the breaker opens and 503s become immediate refusals"
    )
    timeline.expect(failed_calls >= 1, "the breaker saw the failures before opening")
    limit = threshold + WORKERS if shared else threshold * WORKERS
    how = (
        f"at most threshold + workers = {limit} with the shared breaker"
        if shared
        else f"up to threshold x workers = {limit}: each worker counts its own"
    )
    timeline.event(
        f"breaker open after {failed_calls} failed calls reached the dead service ({how})"
    )
    timeline.expect(failed_calls <= limit, f"no more than {limit} calls reach the dead service")
    # The failed call that opened a breaker (its span carries the transition): the
    # last one to fail, unless the refusals that ended the loop all came from a
    # worker whose breaker had opened earlier.
    opener = _call_that_opened_a_breaker(receiver, failed) or (failed[-1] if failed else None)
    _show_trace(timeline, receiver, "the failed call that opened a breaker", opener)
    _show_trace(timeline, receiver, "the first refused call", first_refused)
    views = _breaker_views(deployment, client)
    _show_views(timeline, "breaker per workflow worker", views)
    if shared:
        # A worker's local view catches up when it next admits a call; what
        # every worker will act on is the state in Redis.
        timeline.expect(
            all(view.shared == "open" for view in views.values()),
            "the breaker is open in Redis for every worker",
        )
    return trial_deadline


def _restart_qualitative(
    deployment: Deployment,
    client: Client,
    timeline: Timeline,
    request: dict[str, Any],
    trial_deadline: float,
) -> None:
    timeline.step("Restart the qualitative service and watch the breaker recover")
    deployment.qualitative.start()
    deployment.qualitative.wait_ready()
    timeline.event(f"qualitative service back on port {deployment.qualitative.port}")
    verify_url = f"{deployment.workflow.base_url}/api/v1/workflows/verify"
    if time.monotonic() < trial_deadline - 0.3:
        early = client.call("POST", verify_url, json=request)
        seen = (
            _describe_503(early)
            if early.status == 503
            else f"{early.status} (that worker's breaker had not opened)"
        )
        timeline.event(f"before the timeout: {seen}", early.latency_ms)
    wait = max(0.0, trial_deadline - time.monotonic()) + 0.2
    timeline.event(f"waiting {wait:.1f} s for the breaker's recovery timeout")
    time.sleep(wait)
    _show_views(timeline, "breaker after the timeout", _breaker_views(deployment, client, 2))
    trial = client.call("POST", verify_url, json=request)
    timeline.event(
        f"first call after the timeout, the half-open trial -> {trial.status}, "
        f"holds={trial.body.get('holds')}",
        trial.latency_ms,
    )
    timeline.expect(
        trial.status == 200, "the half-open trial call reaches the service and succeeds"
    )
    for _ in range(4):
        reply = client.call("POST", verify_url, json=request)
        timeline.event(f"POST /api/v1/workflows/verify -> {reply.status}", reply.latency_ms)
        timeline.expect(reply.status == 200, "after recovery every call succeeds")
    views = _breaker_views(deployment, client)
    _show_views(timeline, "breaker per workflow worker", views)
    # A worker that has not served a call since the timeout still reports
    # half_open (memory storage): its first call will be its trial.
    local = {view.local for view in views.values()}
    timeline.expect(
        "closed" in local and "open" not in local,
        "the breaker closed again, and no worker still refuses calls",
    )
    if deployment.shared:
        timeline.expect(
            all(view.shared == "closed" for view in views.values()),
            "the breaker is closed in Redis too",
        )


def run_story(
    deployment: Deployment, timeline: Timeline, receiver: OTLPReceiver | None = None
) -> None:
    """Tell the story against a running deployment; with ``receiver``, show traces.

    Raises:
        StoryFailed: A step did not happen as told.
    """
    shared = deployment.shared
    client = Client()
    try:
        network = _store_network(deployment, client, timeline)
        request = _verify_formulas(deployment, client, timeline, network)
        _hang_qualitative(deployment, client, timeline, request)
        deadline = _stop_qualitative(deployment, client, timeline, request, shared, receiver)
        _restart_qualitative(deployment, client, timeline, request, deadline)
        _summarize_metrics(deployment, timeline)
    finally:
        client.close()


def _summarize_metrics(deployment: Deployment, timeline: Timeline) -> None:
    timeline.step("What the services' /metrics saw")
    time.sleep(SETTLE_SECONDS)  # every worker's breaker counts are in the metrics by then
    services = [deployment.grn, deployment.qualitative, deployment.workflow]
    summary = MetricsSummary.scrape({service.name: service.base_url for service in services})
    for line in summary.lines():
        timeline.out.write(f"  {line}\n")
    timeline.out.flush()
    timeline.expect(
        summary.errors["grn", "CONFLICT", "409"] >= 1
        and summary.errors["workflow", "SERVICE_UNAVAILABLE", "503"] >= 1,
        "the metrics count the 409 CONFLICT and the workflow's 503 envelopes",
    )
    opened = sum(n for (_, _, _, new), n in summary.transitions.items() if new == "open")
    closed = sum(n for (_, _, _, new), n in summary.transitions.items() if new == "closed")
    timeline.expect(opened >= 1 and closed >= 1, "the metrics show the breaker open and close")


def _raise_keyboard_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 when the whole story happened as told."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--no-redis",
        action="store_true",
        help="keep breaker state per worker, even if redis-server is installed",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("GENNET_DEMO_REDIS_URL") or None,
        help="share the breaker through this Redis instead of starting a redis-server: "
        "redis://, redis+sentinel://host:port[,...]/service or redis+cluster://host:port[,...] "
        "(default: $GENNET_DEMO_REDIS_URL)",
    )
    parser.add_argument("--threshold", type=int, default=3, help="breaker failure threshold (3)")
    parser.add_argument(
        "--recovery-timeout", type=float, default=2.0, help="seconds the breaker stays open (2)"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run the services with OpenTelemetry and print the failing calls' span trees",
    )
    options = parser.parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) cleans up like Ctrl-C does.  Ctrl-C is
    # installed explicitly: a shell that starts the demo in the background hands
    # it SIGINT ignored, and Python then leaves it ignored.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    redis_url: str | None = None if options.no_redis else options.redis_url
    if redis_url is not None:
        try:
            where = _storage_description(redis_url)
        except (ValueError, ImportError) as error:
            parser.error(f"--redis-url: {error}")
    use_redis = redis_url is not None or (
        not options.no_redis and shutil.which("redis-server") is not None
    )
    timeline = Timeline()
    print("gennet_sync demo: GRN, qualitative and workflow services under gunicorn")
    if redis_url is not None:
        print(f"breaker storage: {where} (--redis-url; shared by all workers)")
    elif use_redis:
        print(
            "breaker storage: redis (a redis-server started for this demo; shared by all workers)"
        )
    elif options.no_redis:
        print("breaker storage: in-memory per worker process (--no-redis)")
    else:
        print("breaker storage: in-memory per worker process (redis-server is not installed)")

    with contextlib.ExitStack() as stack:
        receiver = _trace_receiver(parser, stack) if options.trace else None
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="gennet-demo-"))
        deployment = Deployment(
            Path(workdir),
            use_redis,
            options.threshold,
            options.recovery_timeout,
            redis_url,
            trace_endpoint=None if receiver is None else receiver.endpoint,
        )
        try:
            with deployment:
                timeline.event(f"started {deployment.describe()}")
                run_story(deployment, timeline, receiver)
        except StoryFailed as failure:
            print(f"\nSTORY FAILED: expected that {failure}", file=sys.stderr)
            _print_logs(deployment.processes)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted: everything the demo started has been stopped", file=sys.stderr)
            return 130
        except Exception as error:
            print(f"\nDEMO ERROR: {type(error).__name__}: {error}", file=sys.stderr)
            _print_logs(deployment.processes)
            return 1
    print(
        f"\nStory complete: all {timeline.steps} steps happened as told "
        f"in {time.monotonic() - timeline.started:.1f} s; every process stopped."
    )
    return 0


def _trace_receiver(parser: argparse.ArgumentParser, stack: contextlib.ExitStack) -> OTLPReceiver:
    """A running OTLP receiver for ``--trace``; a usage error when its packages are missing."""
    try:
        import opentelemetry.exporter.otlp.proto.http
        import opentelemetry.sdk  # noqa: F401

        from examples.trace_receiver import OTLPReceiver
    except ImportError as error:
        parser.error(
            f"--trace needs opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http and "
            f"opentelemetry-proto ({error}); ./dev demo --trace installs them"
        )
    receiver = stack.enter_context(OTLPReceiver())
    print(f"tracing: OTLP/HTTP to a receiver in this demo at {receiver.endpoint}")
    return receiver


def _with_demo_options(url: str) -> str:
    """``url`` with the demo's key prefix and sync interval, unless it sets its own."""
    query = urlsplit(url).query
    given = {key for key, _ in parse_qsl(query, keep_blank_values=True)}
    extra = [
        f"{key}={value}"
        for key, value in (("prefix", "gennet-demo"), ("sync_interval", "0.2"))
        if key not in given
    ]
    if not extra:
        return url
    return f"{url}{'&' if query else '?'}{'&'.join(extra)}"


def _storage_description(url: str) -> str:
    """Where the storage ``url`` names keeps its state, without credentials.

    Raises:
        ValueError: ``url`` is no Redis storage URL.
        ImportError: redis-py is not installed.
    """
    from gennet_sync.redis_storage import RedisStorage  # the extra [redis]

    storage = RedisStorage.from_url(url)
    try:
        return repr(storage)
    finally:
        storage.close()


def _forget_breaker(url: str) -> None:
    """Close the demo's breaker in a Redis of the user's: an earlier run may have left it OPEN."""
    from gennet_sync.redis_storage import RedisStorage

    storage = RedisStorage.from_url(url)
    try:
        storage.set_closed(BREAKER_NAME)
    finally:
        storage.close()


def _print_logs(processes: list[ManagedProcess]) -> None:
    for process in processes:
        print(f"--- last lines of {process.name}'s log:\n{process.log_tail()}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

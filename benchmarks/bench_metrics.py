"""What gennet_sync's Prometheus metrics cost: metrics on against metrics off.

Three paths, each timed in interleaved rounds (off, on, off, on...) so drift of
a shared machine hits both alike; the table shows each one's median CPU
microseconds per operation and the median ratio on/off across the rounds:

- a successful call through a CLOSED breaker (``breaker.call``): the breaker
  already counts, and the metrics copy its counters off the call path, so this
  path runs no metrics code at all; the flush thread runs during the "on" rounds;
- a ``ServiceSession`` GET through its CLOSED breaker, the network taken out (an
  adapter that answers at once: the worst case for the ratio, since a real call
  spends most of its time waiting); "on" counts the call and times it;
- a Flask request to a small JSON view through the WSGI entry point
  (``setup_error_handlers`` against ``setup_error_handlers`` + ``Metrics``), and
  for comparison the same app with prometheus_flask_exporter's metrics instead;
- the flush thread's work: copying 100 breakers' counters (once a second).

prometheus-client decides at import whether values go to memory or to the
multiprocess files gunicorn needs, so each mode runs in a process of its own:
in memory, then with ``PROMETHEUS_MULTIPROC_DIR`` set (what ``gennet_sync.gunicorn_conf``
does).  With ``--network``, a ServiceSession call to a gunicorn app on 127.0.0.1
too (the client's CPU time per call).

Run::

    .venv/bin/python -m benchmarks.bench_metrics           # about a minute
    .venv/bin/python -m benchmarks.bench_metrics --quick
    .venv/bin/python -m benchmarks.bench_metrics --network
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

Operation = Callable[[], object]


def _per_op(operation: Operation, count: int) -> float:
    began = time.process_time()
    for _ in range(count):
        operation()
    return (time.process_time() - began) / count


def compare(
    off: tuple[Callable[[], None], Operation],
    on: tuple[Callable[[], None], Operation],
    rounds: int,
    count: int,
) -> dict[str, float]:
    """Median seconds per operation off and on, and the median ratio across rounds.

    Each side is ``(switch, operation)``: the switch runs before each of its rounds.
    """
    offs: list[float] = []
    ons: list[float] = []
    for round_index in range(rounds + 1):  # round 0 warms up
        pair = [(off, offs), (on, ons)]
        if round_index % 2:
            pair.reverse()
        for (switch, operation), samples in pair:
            switch()
            seconds = _per_op(operation, count)
            if round_index:
                samples.append(seconds)
    ratios = [b / a for a, b in zip(offs, ons, strict=True)]
    return {
        "off_us": statistics.median(offs) * 1e6,
        "on_us": statistics.median(ons) * 1e6,
        "ratio": statistics.median(ratios),
    }


def _metrics_switch() -> tuple[Callable[[], None], Callable[[], None]]:
    """Functions that turn the process-wide part of the metrics on and off."""
    from gennet_sync import http_client, metrics

    def switch_on() -> None:
        http_client.call_observer = metrics._OBSERVER
        metrics._ensure_flusher()

    def switch_off() -> None:
        http_client.call_observer = None
        metrics._stop_flusher()

    return switch_on, switch_off


def measure(rounds: int, count: int, network: bool) -> dict[str, dict[str, float]]:
    """Every figure of this process (its metrics mode fixed by its environment)."""
    from flask import Flask
    from werkzeug.test import EnvironBuilder

    from benchmarks.bench_session import CannedAdapter
    from gennet_sync import CircuitBreaker, ServiceSession, setup_error_handlers
    from gennet_sync.metrics import Metrics, flush

    switch_on, switch_off = _metrics_switch()
    results: dict[str, dict[str, float]] = {}

    breaker = CircuitBreaker(name="bench-metrics", failure_threshold=5)

    def noop() -> None:
        return None

    def call() -> object:
        return breaker.call(noop)

    results["breaker.call, CLOSED"] = compare((switch_off, call), (switch_on, call), rounds, count)

    session = ServiceSession(base_url="http://bench.invalid", service_name="bench")
    session.mount("http://", CannedAdapter())

    def get() -> object:
        return session.get("/networks/abc123")

    results["ServiceSession GET, no network"] = compare(
        (switch_off, get), (switch_on, get), rounds, count // 10
    )

    if network:
        results["ServiceSession GET, gunicorn"] = _network(
            rounds, count // 200, switch_on, switch_off
        )

    def make_app(with_metrics: bool) -> Flask:
        app = Flask(f"bench_{with_metrics}")
        setup_error_handlers(app)
        if with_metrics:
            Metrics(app)

        @app.get("/networks/<network_id>")
        def network_view(network_id: str) -> dict[str, Any]:
            return {"id": network_id, "nodes": ["a", "b"]}

        return app

    environ = EnvironBuilder(
        path="/networks/abc123", headers=[("Accept", "application/json")]
    ).get_environ()

    def driver(app: Flask) -> Operation:
        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> None:
            return None

        def request() -> object:
            body = app.wsgi_app(dict(environ), start_response)  # type: ignore[arg-type]
            for _ in body:
                pass
            getattr(body, "close", lambda: None)()
            return body

        return request

    plain, with_metrics = make_app(False), make_app(True)
    results["Flask request, WSGI"] = compare(
        (switch_off, driver(plain)),
        (switch_on, driver(with_metrics)),
        rounds,
        count // 10,
    )
    # For comparison: prometheus_flask_exporter's per-request metrics on the same view.
    from prometheus_flask_exporter import PrometheusMetrics

    exporter_app = make_app(False)
    PrometheusMetrics(exporter_app, path="/exporter-metrics")
    results["Flask request, flask_exporter"] = compare(
        (switch_off, driver(plain)), (switch_off, driver(exporter_app)), rounds, count // 10
    )
    # The flush's copy of the requests counted: one request on each of 50 routes
    # (50 tallies, each a counter and a histogram to write), timed without the requests.
    routed = make_app(True)
    for number in range(50):
        routed.add_url_rule(f"/route{number}", f"route{number}", lambda: "ok")
    routed_drivers = [_get(routed, f"/route{number}") for number in range(50)]
    for each_request in routed_drivers:
        each_request()
    flush()  # the first copy creates the series
    spent = 0.0
    for _ in range(20):
        for each_request in routed_drivers:
            each_request()
        began = time.process_time()
        flush()
        spent += time.process_time() - began
    results["flush, 50 routes' requests"] = {"off_us": 0.0, "on_us": spent / 20 * 1e6, "ratio": 0.0}
    # The flush thread's work: copying 100 breakers' counters, once a second by default.
    breakers = [CircuitBreaker(name=f"bench-flush-{n}") for n in range(100)]
    for each in breakers:
        each.call(noop)
    flush()  # the first copy creates the series
    began = time.process_time()
    for _ in range(20):
        for each in breakers:
            each.call(noop)
        flush()
    per_flush = (time.process_time() - began) / 20
    results["flush, 100 breakers"] = {"off_us": 0.0, "on_us": per_flush * 1e6, "ratio": 0.0}
    switch_off()
    return results


def _get(app: Any, path: str) -> Operation:
    """A GET of ``path`` through the app's WSGI entry point."""
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path=path).get_environ()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        return None

    def request() -> object:
        body = app.wsgi_app(dict(environ), start_response)
        for _ in body:
            pass
        getattr(body, "close", lambda: None)()
        return body

    return request


def _network(
    rounds: int, count: int, switch_on: Callable[[], None], switch_off: Callable[[], None]
) -> dict[str, float]:
    from benchmarks.bench_session import gunicorn_server
    from gennet_sync import ServiceSession

    with gunicorn_server(threads=4) as url:
        session = ServiceSession(base_url=url, service_name="bench-network")

        def get() -> object:
            return session.get("/networks/abc123")

        # This process's CPU time: what the client spends per call, the server's and
        # the network's share (noisy on a shared machine) left out.
        offs: list[float] = []
        ons: list[float] = []
        for round_index in range(rounds + 1):
            pair = [(switch_off, offs), (switch_on, ons)]
            if round_index % 2:
                pair.reverse()
            for switch, samples in pair:
                switch()
                began = time.process_time()
                for _ in range(count):
                    get()
                if round_index:
                    samples.append((time.process_time() - began) / count)
        session.close()
    ratios = [b / a for a, b in zip(offs, ons, strict=True)]
    return {
        "off_us": statistics.median(offs) * 1e6,
        "on_us": statistics.median(ons) * 1e6,
        "ratio": statistics.median(ratios),
    }


def report(title: str, results: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'path':<34}{'off us':>10}{'on us':>10}{'on/off':>9}")
    for name, figures in results.items():
        if name.startswith("flush"):
            print(f"{name:<34}{'':>10}{figures['on_us']:>10.1f}")
            continue
        print(
            f"{name:<34}{figures['off_us']:>10.2f}{figures['on_us']:>10.2f}{figures['ratio']:>9.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    parser.add_argument("--network", action="store_true", help="also call a local gunicorn app")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds, count = (5, 20_000) if args.quick else (15, 100_000)
    if args.child:
        print(json.dumps(measure(rounds, count, args.network)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as directory:
        for title, extra in (
            ("in memory (one process: the Flask dev server, a script)", {}),
            (
                "multiprocess files (gunicorn, gennet_sync.gunicorn_conf)",
                {"PROMETHEUS_MULTIPROC_DIR": directory},
            ),
        ):
            environment = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            command = [sys.executable, "-m", "benchmarks.bench_metrics", "--child"]
            if args.quick:
                command.append("--quick")
            if args.network:
                command.append("--network")
            output = subprocess.run(
                command, env={**environment, **extra}, check=True, stdout=subprocess.PIPE, text=True
            ).stdout
            report(title, json.loads(output.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()

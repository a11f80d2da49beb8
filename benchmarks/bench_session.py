"""ServiceSession against a plain requests.Session and a pybreaker-wrapped one.

A local gunicorn app (gthread worker, keep-alive) on 127.0.0.1 answers a small
JSON document.  Three clients call it, in interleaved rounds so that drift of
the machine hits all alike:

- ``requests``: a plain ``requests.Session``;
- ``ServiceSession``: breaker on, default timeout, retries and headers;
- ``pybreaker``: a ``requests.Session`` whose calls go through
  ``pybreaker.CircuitBreaker.call``.

Each round runs the same number of GETs per client, first from one thread, then
from several threads sharing one session (pybreaker holds its lock across the
call, so it serialises them; ServiceSession's breaker does not).  Printed:
requests/s, median latency and the ratio to plain requests.  Target: ServiceSession
within 5% of plain requests.

Network figures on a busy machine are noisy, so the script also measures each
client's own cost per call with the network taken out (an adapter that answers
at once), where the difference between the clients is all that is left.

Run: ``python -m benchmarks.bench_session [--quick] [--rounds N] [--calls N] [--threads N]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pybreaker
import requests
from flask import Flask, Response, jsonify
from requests.adapters import BaseAdapter

from examples.launcher import ServiceProcess
from gennet_sync import ServiceSession
from gennet_sync.circuit_breaker import clear_circuit_breakers

Get = Callable[[str], requests.Response]


def create_app() -> Flask:
    """The downstream service: one small JSON answer."""
    app = Flask("bench_session")
    payload = {"id": "abc123", "nodes": ["p", "q", "r"], "edges": [["p", "q"], ["q", "r"]]}

    @app.get("/networks/abc123")
    def network() -> Response:
        return jsonify(payload)

    return app


@contextmanager
def gunicorn_server(threads: int) -> Iterator[str]:
    """Run ``create_app`` under gunicorn on a free port; yield its URL; stop it."""
    # gunicorn's own defaults plus a gthread worker and a long keep-alive, not the
    # examples' settings file: no worker recycling during a measurement.
    with (
        tempfile.TemporaryDirectory() as log_dir,
        ServiceProcess(
            "bench_session",
            "benchmarks.bench_session:create_app()",
            Path(log_dir),
            workers=1,
            threads=threads,
            config=None,
            options=["--worker-class", "gthread", "--keep-alive", "60"],
            health_path=None,
        ) as service,
    ):
        yield service.base_url


@dataclass
class Contender:
    name: str
    get: Get
    close: Callable[[], None]
    sessions: tuple[requests.Session, ...] = ()
    seconds: dict[int, float] = field(default_factory=dict)  # by thread count
    calls: dict[int, int] = field(default_factory=dict)
    latencies: dict[int, list[float]] = field(default_factory=dict)


def make_contenders(url: str, pool: int) -> list[Contender]:
    plain = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=pool)
    plain.mount("http://", adapter)

    service = ServiceSession(base_url=url, service_name="bench", pool_maxsize=pool)

    wrapped = requests.Session()
    wrapped.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=pool))
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, name="bench")

    def pybreaker_get(path: str) -> requests.Response:
        response: requests.Response = breaker.call(wrapped.get, url + path)
        return response

    return [
        Contender("requests", lambda path: plain.get(url + path), plain.close, (plain,)),
        Contender("ServiceSession", service.get, service.close, (service,)),
        Contender("pybreaker", pybreaker_get, wrapped.close, (wrapped,)),
    ]


class CannedAdapter(BaseAdapter):
    """Answers every request at once with a small JSON body: no network at all."""

    def send(  # type: ignore[override]  # requests passes its send options as keywords
        self, request: requests.PreparedRequest, **kwargs: object
    ) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = b'{"id": "abc123"}'
        response.headers["Content-Type"] = "application/json"
        response.request = request
        response.url = request.url or ""
        return response

    def close(self) -> None:
        pass


def client_overhead(url: str, rounds: int, calls: int) -> None:
    """CPU microseconds per call spent in each client itself (no network).

    CPU time of this process, and the median over rounds, so that other load on
    the machine barely moves the figures.
    """
    contenders = make_contenders(url, pool=10)
    for contender in contenders:
        for session in contender.sessions:
            session.mount("http://", CannedAdapter())
    per_call: dict[str, list[float]] = {contender.name: [] for contender in contenders}
    try:
        for round_index in range(rounds + 1):  # round 0 warms up
            shift = round_index % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                began = time.process_time()
                for _ in range(calls):
                    contender.get("/networks/abc123")
                if round_index:
                    per_call[contender.name].append((time.process_time() - began) / calls)
    finally:
        for contender in contenders:
            contender.close()
    base = statistics.median(per_call["requests"])
    print(f"\nclient CPU cost per call, network taken out (median of {rounds} rounds)")
    print(f"{'client':<16}{'us/call':>10}{'ratio':>10}{'extra us':>10}")
    for name, samples in per_call.items():
        median = statistics.median(samples)
        print(
            f"{name:<16}{median * 1e6:>10.1f}{median / base:>10.3f}{(median - base) * 1e6:>10.1f}"
        )


def run_round(contender: Contender, calls: int, threads: int) -> None:
    """``calls`` GETs split over ``threads`` threads sharing the contender's session."""
    per_thread = calls // threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start_gate = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        own = latencies[index]
        start_gate.wait()
        for _ in range(per_thread):
            began = time.perf_counter()
            response = contender.get("/networks/abc123")
            own.append(time.perf_counter() - began)
            if response.status_code != 200:
                raise RuntimeError(f"{contender.name}: unexpected {response.status_code}")

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start_gate.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    contender.seconds[threads] = contender.seconds.get(threads, 0.0) + elapsed
    contender.calls[threads] = contender.calls.get(threads, 0) + per_thread * threads
    contender.latencies.setdefault(threads, []).extend(x for own in latencies for x in own)


def report(contenders: list[Contender], threads: int) -> None:
    base = contenders[0]
    base_rate = base.calls[threads] / base.seconds[threads]
    base_median = statistics.median(base.latencies[threads])
    print(f"\n{threads} thread(s), {base.calls[threads]} GETs per client")
    print(f"{'client':<16}{'req/s':>10}{'median ms':>12}{'req/s ratio':>14}{'median ratio':>14}")
    for contender in contenders:
        rate = contender.calls[threads] / contender.seconds[threads]
        median = statistics.median(contender.latencies[threads])
        print(
            f"{contender.name:<16}{rate:>10.0f}{median * 1000:>12.3f}"
            f"{rate / base_rate:>14.3f}{median / base_median:>14.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=400, help="GETs per client per round")
    parser.add_argument("--threads", type=int, default=8, help="threads of the threaded run")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 200 GETs")
    args = parser.parse_args()
    rounds, calls = (3, 200) if args.quick else (args.rounds, args.calls)
    thread_counts = (1, args.threads)

    clear_circuit_breakers()
    print(f"python {sys.version.split()[0]}, requests {requests.__version__}, pid {os.getpid()}")
    with gunicorn_server(threads=max(4, args.threads * 2)) as url:
        contenders = make_contenders(url, pool=max(10, args.threads * 2))
        try:
            for contender in contenders:  # warm up: connections, imports, caches
                for threads in thread_counts:
                    run_round(contender, 50 * threads, threads)
                contender.seconds.clear()
                contender.calls.clear()
                contender.latencies.clear()
            for round_index in range(rounds):
                # Rotate the order so no client always runs first or last.
                shift = round_index % len(contenders)
                order = contenders[shift:] + contenders[:shift]
                for threads in thread_counts:
                    for contender in order:
                        run_round(contender, calls, threads)
        finally:
            for contender in contenders:
                contender.close()
    print(f"{rounds} interleaved rounds; ratios are against plain requests")
    for threads in thread_counts:
        report(contenders, threads)
    clear_circuit_breakers()
    client_overhead("http://bench.invalid", max(rounds, 10), 1000)


if __name__ == "__main__":
    main()

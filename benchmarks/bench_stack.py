"""The per-request cost of gennet_sync's Flask stack, against bare Flask and Flask-Compress.

Every app serves the same small JSON endpoint at the same URL, ``/api/v1/item``
(under the compression minimum, so no stack compresses it), and is called
through its WSGI entry point with a fresh copy of one environ: no sockets, no
test client, the same driver for every stack.  The URL is the same for every
stack because matching a longer path is Flask's work, not the stack's: bare
Flask answers ``/api/v1/item`` about 3% slower than ``/item``.

The stacks are timed in interleaved rounds, so drift of a shared machine hits
them alike; the table shows each one's median microseconds per request, its
median ratio to bare Flask across the rounds and the spread of that ratio (its
middle half: first to third quartile of the rounds).  Time is
the thread's CPU time: on a shared machine, the time the benchmark waits for a
core is not the stack's cost (every stack runs in one thread, without I/O, so
its CPU time is all it costs).

Stacks:

- bare Flask, the endpoint a plain rule;
- ``setup_error_handlers`` alone (request IDs, the WSGI boundary, the handlers);
- the full stack: ``setup_error_handlers`` + ``VersionedAPI`` + ``Compression``
  + ``OpenAPI``, the endpoint in version ``v1``'s blueprint;
- the full stack + metrics: the full stack with ``Metrics(app)`` (prometheus-client's
  values in memory, as in one process), and the same two stacks in a child
  process with ``PROMETHEUS_MULTIPROC_DIR`` set (multiprocess files, as under
  gunicorn with ``gennet_sync.gunicorn_conf``), which takes its turn in every round;
  the metrics' ratios are against the full stack of the same process;
- bare Flask + Flask-Compress, for comparison;
- the full stack's error envelopes: 404 (unknown route), 422 (marshmallow
  ``ValidationError``) and 500 (a view raising), the 500 logged with its
  traceback through a formatting handler.

``--before DIR`` also times every stack against the gennet_sync package found in
``DIR`` (a worktree of an earlier commit: ``git worktree add --detach
/tmp/perf-before <commit>``), in a child process that takes its turn in every
round, so both versions are measured under the same load.

Run::

    .venv/bin/python -m benchmarks.bench_stack                # about a minute
    .venv/bin/python -m benchmarks.bench_stack --quick
    .venv/bin/python -m benchmarks.bench_stack --before /tmp/perf-before
    .venv/bin/python -m benchmarks.bench_stack --no-multiprocess  # no metrics child
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask
from marshmallow import ValidationError as MarshmallowValidationError
from werkzeug.test import EnvironBuilder

WSGIEnviron = dict[str, Any]
Driver = Callable[[int], float]  # runs n requests, returns seconds per request

#: What a typical HTTP client sends: it accepts compressed responses.
REQUEST_HEADERS = [("Accept", "application/json"), ("Accept-Encoding", "gzip, deflate, br, zstd")]
PREFIX = "/api/v1"
PAYLOAD = {"id": 42, "name": "gene-42", "targets": ["gene-7", "gene-9"], "active": True}


class _Discard(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


def _configure_logging() -> None:
    # A real formatting handler: a 500 pays for formatting its traceback, as in production.
    handler = logging.StreamHandler(_Discard())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.ERROR, handlers=[handler], force=True)


def _add_views(app: Flask, *, versioned: bool = False) -> None:
    """The endpoints, at ``/api/v1/...``: plain rules, or version ``v1`` of a ``VersionedAPI``."""
    target: Any = app
    prefix = PREFIX
    if versioned:
        from gennet_sync import VersionedAPI

        api = VersionedAPI(app)
        target = api.version("v1")
        prefix = ""  # the version's blueprint has it

    def item() -> dict[str, Any]:
        return PAYLOAD

    def invalid() -> dict[str, Any]:
        raise MarshmallowValidationError({"name": ["Missing data for required field."]})

    def crash() -> dict[str, Any]:
        raise RuntimeError("boom")

    target.add_url_rule(f"{prefix}/item", view_func=item)
    target.add_url_rule(f"{prefix}/invalid", view_func=invalid)
    target.add_url_rule(f"{prefix}/crash", view_func=crash)


def bare_flask() -> Flask:
    app = Flask("bench_bare")
    _add_views(app)
    return app


def error_handlers_only() -> Flask:
    from gennet_sync import setup_error_handlers

    app = Flask("bench_error_handlers")
    setup_error_handlers(app)
    _add_views(app)
    return app


def full_stack() -> Flask:
    from gennet_sync import Compression, OpenAPI, setup_error_handlers

    app = Flask("bench_full")
    setup_error_handlers(app)
    _add_views(app, versioned=True)
    Compression(app)
    OpenAPI(app, title="bench")
    return app


def full_stack_with_metrics() -> Flask:
    from gennet_sync.metrics import Metrics

    app = full_stack()
    Metrics(app)
    return app


def flask_compress() -> Flask:
    from flask_compress import Compress

    app = Flask("bench_flask_compress")
    Compress(app)
    _add_views(app)
    return app


#: name -> (app factory, path requested, expected status)
STACKS: dict[str, tuple[Callable[[], Flask], str, int]] = {
    "bare Flask": (bare_flask, "/api/v1/item", 200),
    "+ setup_error_handlers": (error_handlers_only, "/api/v1/item", 200),
    "+ versioning, compression, OpenAPI": (full_stack, "/api/v1/item", 200),
    "full stack + metrics": (full_stack_with_metrics, "/api/v1/item", 200),
    "bare Flask + Flask-Compress": (flask_compress, "/api/v1/item", 200),
    "full stack: 404 envelope": (full_stack, "/api/v1/missing", 404),
    "full stack: 422 envelope": (full_stack, "/api/v1/invalid", 422),
    "full stack: 500 envelope": (full_stack, "/api/v1/crash", 500),
}
BASELINE = "bare Flask"
FULL = "+ versioning, compression, OpenAPI"
METRICS = "full stack + metrics"
#: The rows timed in the child process with PROMETHEUS_MULTIPROC_DIR set.
MULTIPROCESS = {
    "multiprocess: full stack": FULL,
    "multiprocess: + metrics": METRICS,
}


def _environ(path: str) -> WSGIEnviron:
    builder = EnvironBuilder(path=path, method="GET", headers=REQUEST_HEADERS)
    try:
        return builder.get_environ()
    finally:
        builder.close()


def make_driver(factory: Callable[[], Flask], path: str, expected: int) -> Driver:
    """A function timing ``n`` requests of ``path`` through the app's WSGI entry point.

    An app with metrics has what its requests counted copied into the metrics at
    the end of each run, inside its timing (see :func:`_settle`).
    """
    app = factory()
    settle = _settle(app)
    environ = _environ(path)
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    def run(n: int) -> float:
        wsgi: Callable[[WSGIEnviron, Any], Iterable[bytes]] = app
        start = time.thread_time()
        for _ in range(n):
            body = wsgi(environ.copy(), start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        if settle is not None:
            settle()
        elapsed = time.thread_time() - start
        # Checked after timing: a stack answering the wrong thing measures nothing.
        if not statuses[-1].startswith(str(expected)):
            raise RuntimeError(f"{path} answered {statuses[-1]}, expected {expected}")
        statuses.clear()
        return elapsed / n

    return run


def _settle(app: Flask) -> Callable[[], None] | None:
    """For an app with metrics: the copy of what its requests counted into the metrics.

    The metrics' flush thread does that copy every second in a real service; here
    each run ends with it, so its cost (counting the run's requests into their
    labels and buckets, then prometheus-client's values) is charged to the requests
    that caused it, not to whichever stack runs when the thread wakes (this is
    thread CPU time: the thread's own work would not be counted at all).
    """
    state = app.extensions.get("gennet_sync")
    if state is None or "metrics" not in state.features:
        return None
    from gennet_sync import metrics

    # The thread would copy part of a run on its own thread, outside the run's
    # CPU time: it waits an hour instead, and each run ends with the copy.
    metrics._flush_interval = 3600.0
    return metrics.flush


def _worker() -> None:
    """Serve timing requests on stdin/stdout: ``{"stack": name, "calls": n}`` per line."""
    _configure_logging()
    drivers = {name: make_driver(*spec) for name, spec in STACKS.items()}
    origin = Path(sys.modules["gennet_sync"].__file__ or "").parent
    print(json.dumps({"ready": str(origin)}), flush=True)
    for line in sys.stdin:
        order = json.loads(line)
        seconds = drivers[order["stack"]](order["calls"])
        print(json.dumps({"seconds": seconds}), flush=True)


class _Remote:
    """The same stacks run by a child process, importing gennet_sync from another tree
    (``tree``) or with other environment variables (``environment``)."""

    def __init__(self, tree: str | None = None, environment: dict[str, str] | None = None) -> None:
        env = dict(os.environ, **(environment or {}))
        if tree is not None:
            env["PYTHONPATH"] = os.path.abspath(tree)
        self._child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.origin = self._reply()["ready"]

    def _reply(self) -> dict[str, Any]:
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError("the --before worker exited (see its traceback above)")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def driver(self, stack: str) -> Driver:
        def run(n: int) -> float:
            assert self._child.stdin is not None
            self._child.stdin.write(json.dumps({"stack": stack, "calls": n}) + "\n")
            self._child.stdin.flush()
            seconds: float = self._reply()["seconds"]
            return seconds

        return run

    def close(self) -> None:
        assert self._child.stdin is not None
        self._child.stdin.close()
        self._child.wait(timeout=30)


def measure(drivers: dict[str, Driver], calls: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per request of every driver, one figure per round, rounds interleaved."""
    for run in drivers.values():
        run(max(1, calls // 5))  # warm up: caches, first-request setup
    results: dict[str, list[float]] = {name: [] for name in drivers}
    for _ in range(rounds):
        for name, run in drivers.items():
            results[name].append(run(calls))
    return results


def _report(title: str, results: dict[str, list[float]], baseline: str) -> None:
    print(f"\n{title}")
    print(f"  {'stack':<38}{'median':>10}{'vs bare Flask':>15}{'middle half':>16}")
    base = results[baseline]
    for name, figures in results.items():
        ratios = [mine / bare for mine, bare in zip(figures, base, strict=True)]
        low, _, high = statistics.quantiles(ratios, n=4)
        print(
            f"  {name:<38}{statistics.median(figures) * 1e6:>7.1f} us"
            f"{statistics.median(ratios):>14.2f}x"
            f"{low:>9.2f}-{high:.2f}x"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 41)")
    parser.add_argument("--calls", type=int, help="requests per stack per round (default 1000)")
    parser.add_argument("--before", metavar="DIR", help="also time gennet_sync as found in DIR")
    parser.add_argument(
        "--no-multiprocess",
        action="store_true",
        help="skip the child process timing metrics with PROMETHEUS_MULTIPROC_DIR set",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker()
        return
    # Many short rounds: a burst of load on a shared machine spoils few of them.
    rounds = args.rounds or (5 if args.quick else 41)
    calls = args.calls or (300 if args.quick else 1000)
    _configure_logging()
    # prometheus-client picks memory or files at import: this process times the
    # in-memory values, the multiprocess child the files.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

    drivers = {name: make_driver(*spec) for name, spec in STACKS.items()}
    remote = _Remote(args.before) if args.before else None
    if remote is not None:
        drivers.update({f"before: {name}": remote.driver(name) for name in STACKS})
    with tempfile.TemporaryDirectory(prefix="bench-stack-metrics-") as directory:
        files = None
        if not args.no_multiprocess:
            files = _Remote(environment={"PROMETHEUS_MULTIPROC_DIR": directory})
            drivers.update({row: files.driver(stack) for row, stack in MULTIPROCESS.items()})
        try:
            results = measure(drivers, calls, rounds)
        finally:
            for child in (remote, files):
                if child is not None:
                    child.close()

    origin = Path(sys.modules["gennet_sync"].__file__ or "").parent
    print(f"{rounds} interleaved rounds of {calls} requests per stack; gennet_sync from {origin}")
    rows = [*STACKS, *(MULTIPROCESS if not args.no_multiprocess else ())]
    _report("now", {name: results[name] for name in rows}, BASELINE)
    print("\n  metrics / full stack, median of per-round ratios:")
    pairs = [("in memory", METRICS, FULL)]
    if not args.no_multiprocess:
        pairs.append(("multiprocess files", "multiprocess: + metrics", "multiprocess: full stack"))
    for title, mine, theirs in pairs:
        ratios = [m / f for m, f in zip(results[mine], results[theirs], strict=True)]
        low, _, high = statistics.quantiles(ratios, n=4)
        print(f"  {title:<38}{statistics.median(ratios):>7.3f}x{low:>9.3f}-{high:.3f}x")
    if remote is not None:
        before = {name: results[f"before: {name}"] for name in STACKS}
        _report(f"before (gennet_sync from {remote.origin})", before, BASELINE)
        print("\n  now / before, median of per-round ratios:")
        for name in STACKS:
            ratios = [now / then for now, then in zip(results[name], before[name], strict=True)]
            print(f"  {name:<38}{statistics.median(ratios):>7.2f}x")
    print(
        "\ntargets: setup_error_handlers <= 1.10x, full stack <= 1.25x and below "
        "Flask-Compress; full stack + metrics <= 1.05x the full stack; error envelopes "
        "no slower than before"
    )


if __name__ == "__main__":
    main()

"""What gennet_sync's tracing hooks cost: nothing configured, and with the SDK on.

Two paths, each timed in three variants in interleaved rounds (CPU time of this
process, median over the rounds):

- a ``ServiceSession`` GET, with the network taken out (``CannedAdapter``
  answers at once), so the client's own work is all there is to measure;
- a request through the envelope: a small JSON 200 and a 404 envelope, called
  through the app's WSGI entry point as in ``bench_stack``.

Variants:

- ``hooks removed``: the modules' ``_tracing`` replaced by stubs that only pass
  the call on (the code as it was, plus one plain call per hook);
- ``no SDK``: as shipped, no tracer provider set (the target: within 2%);
- ``SDK on``: an SDK tracer provider with the batch span processor
  ``configure_tracing`` uses and an exporter that drops every span, so the
  figure is gennet_sync's spans and the SDK, not an exporter.

Also printed: the absolute cost of each no-op hook, called directly (the upper
bound of what the hooks add with nothing configured).

Run: ``.venv/bin/python -m benchmarks.bench_tracing [--rounds N] [--calls N]`` (needs
the ``bench`` extra for ``bench_session``'s adapter).
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, jsonify
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.test.globals_test import reset_trace_globals
from werkzeug.test import EnvironBuilder

from benchmarks.bench_session import CannedAdapter
from gennet_sync import (
    NotFoundError,
    ServiceSession,
    error_handler,
    http_client,
    retries,
    tracing,
)
from gennet_sync import setup_error_handlers as setup

Run = Callable[[int], None]


class _NoHooks:
    """What the hooks would be if they did nothing but pass the call on."""

    @staticmethod
    def client_call(send: Any, request: Any, url: str, breaker: Any, kwargs: Any) -> Any:
        return send(request, url, breaker, kwargs)

    @staticmethod
    def server_call(wsgi_app: Any, environ: Any, start: Any, request_id: str, app: Any) -> Any:
        return wsgi_app(environ, start)

    @staticmethod
    def record_envelope(status: int, code: str, type_: str) -> None:
        pass

    @staticmethod
    def count_resend() -> None:
        pass


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


_providers: list[TracerProvider] = []


def _set_variant(name: str) -> None:
    stub: Any = _NoHooks if name == "hooks removed" else tracing
    http_client._tracing = stub  # type: ignore[attr-defined]
    retries._tracing = stub  # type: ignore[attr-defined]
    error_handler._tracing = stub  # type: ignore[attr-defined]
    while _providers:  # its batch thread must not run into the next variant's rounds
        _providers.pop().shutdown()
    reset_trace_globals()
    if name == "SDK on":
        # The processor configure_tracing sets up: spans queued, exported by its thread.
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(_Drop()))
        trace.set_tracer_provider(provider)
        _providers.append(provider)


def session_run() -> Run:
    session = ServiceSession(base_url="http://bench:8000", service_name="bench-tracing")
    session.mount("http://", CannedAdapter())

    def run(calls: int) -> None:
        for _ in range(calls):
            session.get("/networks/abc123")

    return run


def envelope_run(path: str) -> Run:
    app = Flask("bench_tracing")
    setup(app)

    @app.get("/item")
    def item() -> Any:
        return jsonify({"id": 42})

    @app.get("/missing")
    def missing() -> Any:
        raise NotFoundError("Network", "x")

    builder = EnvironBuilder(path=path, method="GET")
    environ = builder.get_environ()
    builder.close()

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        pass

    def run(calls: int) -> None:
        wsgi: Callable[[dict[str, Any], Any], Iterable[bytes]] = app
        for _ in range(calls):
            body = wsgi(environ.copy(), start_response)
            for _chunk in body:
                pass
            getattr(body, "close", lambda: None)()

    return run


VARIANTS = ("hooks removed", "no SDK", "SDK on")


def measure(paths: dict[str, Run], rounds: int, calls: int) -> dict[tuple[str, str], list[float]]:
    """Seconds per call of each (path, variant), one sample per interleaved round."""
    samples: dict[tuple[str, str], list[float]] = {
        (path, variant): [] for path in paths for variant in VARIANTS
    }
    for round_index in range(rounds + 1):  # round 0 warms up
        shift = round_index % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            _set_variant(variant)
            for path, run in paths.items():
                began = time.process_time()
                run(calls)
                for provider in _providers:  # the batch thread's export is part of the cost
                    provider.force_flush()
                if round_index:
                    samples[path, variant].append((time.process_time() - began) / calls)
    _set_variant("no SDK")
    return samples


def ratio(samples: dict[tuple[str, str], list[float]], path: str, variant: str) -> str:
    """Median of the per-round ratios to ``hooks removed`` (rounds pair up the variants
    under the same load), with their middle half: ``1.004 (0.99-1.01)``."""
    ratios = [
        value / base
        for value, base in zip(samples[path, variant], samples[path, "hooks removed"], strict=True)
    ]
    low, _, high = statistics.quantiles(ratios, n=4)
    return f"{statistics.median(ratios):.3f} ({low:.2f}-{high:.2f})"


def hook_costs() -> dict[str, float]:
    """Nanoseconds of each hook with no SDK, called directly, minus the call it wraps."""
    reset_trace_globals()

    def send(request: Any, url: str, breaker: Any, kwargs: Any) -> None:
        return None

    def wsgi(environ: Any, start: Any) -> list[bytes]:
        return []

    number = 200_000
    costs = {
        "client_call": timeit.timeit(
            lambda: tracing.client_call(send, None, "", None, {}), number=number
        )
        - timeit.timeit(lambda: send(None, "", None, {}), number=number),
        "server_call": timeit.timeit(
            lambda: tracing.server_call(wsgi, {}, print, "", None), number=number
        )
        - timeit.timeit(lambda: wsgi({}, None), number=number),
        "record_envelope": timeit.timeit(
            lambda: tracing.record_envelope(404, "NOT_FOUND", "NotFoundError"), number=number
        )
        - timeit.timeit(lambda: None, number=number),
    }
    return {name: seconds / number * 1e9 for name, seconds in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    paths = {
        "ServiceSession GET": session_run(),
        "200 through the envelope": envelope_run("/item"),
        "404 envelope": envelope_run("/missing"),
    }
    samples = measure(paths, args.rounds, args.calls)
    print(f"CPU us per call, median of {args.rounds} interleaved rounds of {args.calls};")
    print("ratios to 'hooks removed': median of the rounds' ratios (middle half)")
    print(f"{'path':<26}{'hooks removed':>14}{'no SDK':>22}{'SDK on':>22}")
    for path in paths:
        base = statistics.median(samples[path, "hooks removed"]) * 1e6
        print(
            f"{path:<26}{base:>11.1f} us{ratio(samples, path, 'no SDK'):>22}"
            f"{ratio(samples, path, 'SDK on'):>22}"
        )
    print("\nno-SDK hooks called directly, ns (what each adds at most):")
    for name, nanoseconds in hook_costs().items():
        print(f"  {name:<16}{nanoseconds:>8.0f}")


if __name__ == "__main__":
    main()

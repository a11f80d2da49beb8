"""The envelope's 404 and 500 paths against Flask's default error responses.

Both apps run in this process, called through their WSGI entry point (no
network, no test-client overhead), in interleaved rounds so that drift of the
machine hits both alike.  Both log the 500's traceback through the same
formatting handler, so neither side is timed without the work a production
service does.  Target: the envelope costs at most 1.2x Flask's default path.

Run: ``python -m benchmarks.bench_error_envelope [--rounds N] [--calls N]``
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.test import EnvironBuilder

from gennet_sync import setup_error_handlers

WSGIEnviron = dict[str, Any]


class _Discard(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


def _configure_logging() -> None:
    # A real formatting handler on the root logger: Flask then adds no default
    # handler of its own, and both apps pay for formatting the traceback.
    handler = logging.StreamHandler(_Discard())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.ERROR, handlers=[handler], force=True)


def _make_app(with_envelope: bool) -> Flask:
    app = Flask("bench_envelope" if with_envelope else "bench_default")
    if with_envelope:
        setup_error_handlers(app)

    @app.get("/crash")
    def crash() -> str:
        raise RuntimeError("boom")

    return app


def _environ(path: str) -> WSGIEnviron:
    builder = EnvironBuilder(path=path, method="GET", headers=[("X-Request-ID", "bench-1")])
    try:
        return builder.get_environ()
    finally:
        builder.close()


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    return None


def _time_calls(app: Flask, environ: WSGIEnviron, calls: int) -> float:
    """Seconds per call of the WSGI app on a fresh copy of ``environ``."""
    wsgi: Callable[[WSGIEnviron, Any], Iterable[bytes]] = app.wsgi_app
    start = time.perf_counter()
    for _ in range(calls):
        body = wsgi(dict(environ), _start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    _configure_logging()

    apps = {"flask default": _make_app(False), "gennet envelope": _make_app(True)}
    paths = {"404 unknown route": "/no/such/route", "500 crash": "/crash"}
    results: dict[tuple[str, str], list[float]] = {}
    for path_name, path in paths.items():
        environ = _environ(path)
        for app in apps.values():  # warm up
            _time_calls(app, environ, 200)
        for _ in range(args.rounds):
            for app_name, app in apps.items():
                results.setdefault((path_name, app_name), []).append(
                    _time_calls(app, environ, args.calls)
                )

    print(f"{'path':<20}{'flask default':>16}{'gennet envelope':>18}{'ratio':>9}")
    for path_name in paths:
        default = statistics.median(results[(path_name, "flask default")])
        ours = statistics.median(results[(path_name, "gennet envelope")])
        print(
            f"{path_name:<20}{default * 1e6:>13.1f} us{ours * 1e6:>15.1f} us{ours / default:>8.2f}x"
        )
    print("target: ratio <= 1.20 (envelope vs Flask's default error path)")


if __name__ == "__main__":
    main()

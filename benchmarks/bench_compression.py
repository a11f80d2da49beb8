"""Response compression: gennet_sync vs Flask-Compress vs none; request decoding; bombs.

Run: ``.venv/bin/python -m benchmarks.bench_compression [--quick]``

1. A 200 KB JSON response served by three otherwise identical apps (no
   compression, Flask-Compress, gennet_sync's :class:`Compression`) at the same
   algorithm and level, through the WSGI test client, in interleaved rounds:
   requests/s and bytes on the wire per algorithm, and the ratio to Flask-Compress.
2. Request-body decoding throughput (MB/s of decoded JSON) per coding, against
   a view that decodes the whole body itself with the standard library.
3. Peak Python memory (tracemalloc) while a 1 MB gzip body that inflates to
   1 GiB is refused, against the naive view on a smaller bomb.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import brotli
from backports import zstd
from flask import Flask, Response, request
from flask_compress import Compress

from gennet_sync import Compression, setup_error_handlers
from gennet_sync.compression import compress_bytes

ALGORITHMS = ("gzip", "deflate", "br", "zstd")
LEVELS = {"gzip": 6, "deflate": 6, "br": 4, "zstd": 3}


def make_payload(target: int = 200_000) -> dict[str, Any]:
    """A GRN-like JSON document of about ``target`` bytes."""

    def node(i: int) -> dict[str, Any]:
        return {
            "id": f"gene-{i}",
            "targets": [f"gene-{(i * 7 + k) % 997}" for k in range(3)],
            "weight": round((i * 37 % 1000) / 997, 6),
            "active": i % 3 == 0,
        }

    per_node = len(json.dumps(node(1000))) + 2
    return {"nodes": [node(i) for i in range(max(1, target // per_node))]}


def build_apps(payload_bytes: bytes) -> dict[str, Flask]:
    def base() -> Flask:
        app = Flask(__name__)
        setup_error_handlers(app)

        @app.get("/data")
        def data() -> Response:
            return Response(payload_bytes, mimetype="application/json")

        return app

    plain = base()
    flask_compress = base()
    flask_compress.config.update(
        COMPRESS_LEVEL=LEVELS["gzip"],
        COMPRESS_DEFLATE_LEVEL=LEVELS["deflate"],
        COMPRESS_BR_LEVEL=LEVELS["br"],
        COMPRESS_ZSTD_LEVEL=LEVELS["zstd"],
        COMPRESS_ALGORITHM=["zstd", "br", "gzip", "deflate"],
    )
    Compress(flask_compress)
    ours = base()
    Compression(ours, levels=LEVELS)
    return {"none": plain, "Flask-Compress": flask_compress, "gennet_sync": ours}


def time_requests(call: Callable[[], int], count: int) -> tuple[float, int]:
    start = time.perf_counter()
    size = 0
    for _ in range(count):
        size = call()
    return count / (time.perf_counter() - start), size


def bench_responses(rounds: int, per_round: int) -> None:
    payload = json.dumps(make_payload()).encode()
    print(
        f"\n== 1. responses: {len(payload) / 1000:.0f} KB JSON, {rounds} interleaved rounds "
        f"x {per_round} requests =="
    )
    apps = build_apps(payload)
    clients = {name: app.test_client() for name, app in apps.items()}
    results: dict[tuple[str, str], list[float]] = {}
    wire: dict[tuple[str, str], int] = {}

    def caller(name: str, algorithm: str) -> Callable[[], int]:
        client = clients[name]

        def call() -> int:
            response = client.get("/data", headers={"Accept-Encoding": algorithm})
            if name != "none":
                assert response.headers.get("Content-Encoding") == algorithm, (name, algorithm)
            return len(response.data)

        return call

    for _ in range(rounds):
        for algorithm in ALGORITHMS:
            for name in clients:
                rate, size = time_requests(caller(name, algorithm), per_round)
                results.setdefault((name, algorithm), []).append(rate)
                wire[(name, algorithm)] = size
    print(f"{'algorithm':<9} {'implementation':<15} {'req/s':>8} {'bytes':>9} {'vs F-C':>7}")
    for algorithm in ALGORITHMS:
        reference = statistics.median(results[("Flask-Compress", algorithm)])
        for name in clients:
            rate = statistics.median(results[(name, algorithm)])
            print(
                f"{algorithm:<9} {name:<15} {rate:8.0f} {wire[(name, algorithm)]:9d} "
                f"{rate / reference:6.2f}x"
            )


def decode_naively(data: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return zlib.decompress(data, 31)
    if coding == "deflate":
        return zlib.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    return bytes(zstd.decompress(data))


def build_upload_apps() -> dict[str, Flask]:
    ours = Flask(__name__)
    setup_error_handlers(ours)
    Compression(ours, compress_responses=False, max_decoded_size=2 * 1024**3)

    @ours.post("/upload")
    def upload() -> dict[str, int]:
        return {"bytes": len(request.get_data())}

    naive = Flask(__name__)
    setup_error_handlers(naive)

    @naive.post("/upload")
    def upload_naive() -> dict[str, int]:
        coding = request.headers.get("Content-Encoding", "")
        return {"bytes": len(decode_naively(request.get_data(), coding))}

    return {"stdlib in the view (unbounded)": naive, "gennet_sync (streamed, capped)": ours}


def bench_request_decoding(rounds: int) -> None:
    body = json.dumps(make_payload(5_000_000)).encode()
    print(f"\n== 2. request decoding: {len(body) / 1e6:.1f} MB JSON body, median of {rounds} ==")
    clients = {name: app.test_client() for name, app in build_upload_apps().items()}
    print(f"{'coding':<8} {'implementation':<32} {'MB/s decoded':>13}")
    for coding in ALGORITHMS:
        encoded = compress_bytes(body, coding, LEVELS[coding])
        rates: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(rounds):
            for name, client in clients.items():
                start = time.perf_counter()
                response = client.post(
                    "/upload", data=encoded, headers={"Content-Encoding": coding}
                )
                elapsed = time.perf_counter() - start
                assert response.get_json() == {"bytes": len(body)}, response.data
                rates[name].append(len(body) / elapsed / 1e6)
        for name, values in rates.items():
            print(f"{coding:<8} {name:<32} {statistics.median(values):13.0f}")


def gzip_bomb(decoded_mib: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(decoded_mib)]
    parts.append(compressor.flush())
    return b"".join(parts)


def peak_memory(call: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (peak - baseline) / 2**20, result


def bench_bomb(naive_mib: int) -> None:
    print("\n== 3. gzip bomb: peak Python memory while handling it ==")
    app = Flask(__name__)
    setup_error_handlers(app)
    Compression(app)

    @app.post("/upload")
    def upload() -> dict[str, int]:
        return {"bytes": len(request.get_data())}

    client = app.test_client()
    big = gzip_bomb(1024)
    start = time.perf_counter()
    peak, response = peak_memory(
        lambda: client.post("/upload", data=big, headers={"Content-Encoding": "gzip"})
    )
    elapsed = time.perf_counter() - start
    print(
        f"gennet_sync: {len(big) / 1e6:.2f} MB body -> 1 GiB: status {response.status_code}, "
        f"peak {peak:.1f} MiB, answered in {elapsed * 1000:.0f} ms"
    )
    naive = build_upload_apps()["stdlib in the view (unbounded)"].test_client()
    small = gzip_bomb(naive_mib)
    peak, response = peak_memory(
        lambda: naive.post("/upload", data=small, headers={"Content-Encoding": "gzip"})
    )
    print(
        f"stdlib in the view: {len(small) / 1e6:.2f} MB body -> {naive_mib} MiB: status "
        f"{response.status_code}, peak {peak:.1f} MiB (it grows with the bomb: 1 GiB would "
        "take 1 GiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    rounds, per_round = (3, 20) if args.quick else (7, 60)
    bench_responses(rounds, per_round)
    bench_request_decoding(3 if args.quick else 7)
    bench_bomb(64 if args.quick else 256)


if __name__ == "__main__":
    main()

"""gennet_sync.compression through Flask's test client: negotiation, response
compression, safe request decoding."""

from __future__ import annotations

import gc
import json
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import pytest
from backports import zstd
from flask import Response, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from gennet_sync import Compression
from gennet_sync.compression import (
    MAX_CONCATENATED_MEMBERS,
    CompressionSettings,
    available_encodings,
    compress_bytes,
    negotiate_encoding,
)
from tests.support.compression import BODY, PAYLOAD, RAW_BODY, decode, make_app

ALL = ("zstd", "br", "gzip", "deflate")


def json_of(response: TestResponse) -> dict[str, Any]:
    data = response.get_json()
    assert isinstance(data, dict), response.data
    return data


# ---------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "identity"),
        ("", "identity"),
        ("gzip", "gzip"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("GZIP", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip;q=0.5, br;q=0.8", "br"),
        ("gzip; q=0.9, br ; q=0.2", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("gzip;q=0", "identity"),
        ("*", "zstd"),
        ("*, zstd;q=0", "br"),
        ("*;q=0.1, gzip;q=0.5", "gzip"),
        ("*;q=0", None),
        ("identity;q=0", None),
        ("identity;q=0, gzip;q=0", None),
        ("identity", "identity"),
        ("identity;q=1, gzip;q=0.5", "identity"),
        ("identity;q=0.5, gzip;q=0.5", "gzip"),
        ("gzip;q=2", "identity"),
        ("gzip;q=abc, deflate", "deflate"),
        ("gzip;q=-1", "identity"),
        (",,;;q=, br", "br"),
        ("compress, sdch", "identity"),
        ("gzip;q=0.5, gzip;q=0", "identity"),
        ("gzip;Q=0, deflate", "deflate"),
    ],
)
def test_negotiation_follows_q_values(header: str | None, expected: str | None) -> None:
    assert negotiate_encoding(header, ALL) == expected


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_negotiation_never_fails_and_never_picks_an_excluded_coding(header: str) -> None:
    chosen = negotiate_encoding(header, ALL)
    assert chosen is None or chosen == "identity" or chosen in ALL
    if chosen in ALL:
        assert f"{chosen};q=0," not in header.replace(" ", "") + ","


# ---------------------------------------------------------------- responses


@pytest.mark.parametrize("coding", ALL)
def test_each_algorithm_round_trips_with_vary_and_length(coding: str) -> None:
    client = make_app().test_client()
    response = client.get("/data", headers={"Accept-Encoding": coding})
    assert response.headers["Content-Encoding"] == coding
    assert "Accept-Encoding" in response.headers["Vary"]
    assert int(response.headers["Content-Length"]) == len(response.data)
    assert json.loads(decode(response.data, coding)) == PAYLOAD
    assert len(response.data) < len(json.dumps(PAYLOAD)) / 3


def test_small_responses_stay_plain_but_still_vary() -> None:
    client = make_app().test_client()
    response = client.get("/small", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in response.headers
    assert response.headers["Vary"] == "Accept-Encoding"
    assert json_of(response) == {"ok": "yes"}


def test_identity_forbidden_compresses_even_small_responses() -> None:
    client = make_app().test_client()
    response = client.get("/small", headers={"Accept-Encoding": "identity;q=0, gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert json.loads(decode(response.data, "gzip")) == {"ok": "yes"}


def test_no_accept_encoding_means_no_compression() -> None:
    response = make_app().test_client().get("/data")
    assert "Content-Encoding" not in response.headers
    assert json_of(response) == PAYLOAD


def test_configured_algorithms_and_levels_are_used() -> None:
    client = make_app(algorithms="gzip", levels={"gzip": 1}).test_client()
    response = client.get("/data", headers={"Accept-Encoding": "zstd, br, gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    plain = decode(response.data, "gzip")
    assert json.loads(plain) == PAYLOAD
    assert response.data == compress_bytes(plain, "gzip", 1)
    assert response.data != compress_bytes(plain, "gzip", 6)


def test_responses_are_never_compressed_twice_or_against_no_transform() -> None:
    app = make_app()
    raw = json.dumps(PAYLOAD).encode()

    @app.get("/pre")
    def pre() -> Response:
        return Response(
            compress_bytes(raw, "br"),
            mimetype="application/json",
            headers={"Content-Encoding": "br"},
        )

    @app.get("/no-transform")
    def no_transform() -> Response:
        return Response(raw, mimetype="application/json", headers={"Cache-Control": "no-transform"})

    @app.get("/partial")
    def partial() -> Response:
        return Response(
            raw[:1000],
            status=206,
            mimetype="application/json",
            headers={"Content-Range": f"bytes 0-999/{len(raw)}"},
        )

    @app.get("/image")
    def image() -> Response:
        return Response(b"\x89PNG" + bytes(5000), mimetype="image/png")

    client = app.test_client()
    pre_response = client.get("/pre", headers={"Accept-Encoding": "gzip, br"})
    assert pre_response.headers["Content-Encoding"] == "br"
    assert decode(pre_response.data, "br") == raw
    assert (
        "Content-Encoding"
        not in client.get("/no-transform", headers={"Accept-Encoding": "gzip"}).headers
    )
    partial_response = client.get("/partial", headers={"Accept-Encoding": "gzip"})
    assert partial_response.status_code == 206
    assert partial_response.data == raw[:1000]
    image_response = client.get("/image", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in image_response.headers
    assert "Vary" not in image_response.headers


def test_existing_vary_is_extended_not_replaced() -> None:
    app = make_app()

    @app.get("/lang")
    def lang() -> Response:
        return Response(
            json.dumps(PAYLOAD), mimetype="application/json", headers={"Vary": "Accept-Language"}
        )

    response = app.test_client().get("/lang", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Vary"] == "Accept-Language, Accept-Encoding"


def test_headers_sent_twice_count_as_one_list() -> None:
    # HTTP joins repeated header lines into one list: each line's tokens count.
    app = make_app()

    @app.get("/two-vary")
    def two_vary() -> Response:
        response = Response(json.dumps(PAYLOAD), mimetype="application/json")
        response.headers.add("Vary", "Accept-Language")
        response.headers.add("Vary", "Origin")
        return response

    @app.get("/two-cache-control")
    def two_cache_control() -> Response:
        response = Response(json.dumps(PAYLOAD), mimetype="application/json")
        response.headers.add("Cache-Control", "public")
        response.headers.add("Cache-Control", "no-transform")
        return response

    client = app.test_client()
    varied = client.get("/two-vary", headers={"Accept-Encoding": "gzip"})
    assert varied.headers.getlist("Vary") == ["Accept-Language, Origin, Accept-Encoding"]
    assert varied.headers["Content-Encoding"] == "gzip"
    kept = client.get("/two-cache-control", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in kept.headers
    assert json.loads(kept.data) == PAYLOAD


def test_strong_etag_is_adjusted_and_revalidates_weak_is_kept() -> None:
    app = make_app()

    @app.get("/tagged")
    def tagged() -> Response:
        response = Response(json.dumps(PAYLOAD), mimetype="application/json")
        response.set_etag("v7")
        return response

    @app.get("/weak")
    def weak() -> Response:
        response = Response(json.dumps(PAYLOAD), mimetype="application/json")
        response.set_etag("v7", weak=True)
        return response

    client = app.test_client()
    first = client.get("/tagged", headers={"Accept-Encoding": "gzip"})
    assert first.headers["ETag"] == '"v7-gzip"'
    again = client.get("/tagged", headers={"Accept-Encoding": "gzip", "If-None-Match": '"v7-gzip"'})
    assert again.status_code == 304
    assert again.data == b""
    other = client.get("/tagged", headers={"Accept-Encoding": "br", "If-None-Match": '"v7-gzip"'})
    assert other.status_code == 200
    assert other.headers["ETag"] == '"v7-br"'
    assert client.get("/weak", headers={"Accept-Encoding": "gzip"}).headers["ETag"] == 'W/"v7"'


@pytest.mark.parametrize("coding", ALL)
def test_streamed_responses_are_compressed_chunk_by_chunk(coding: str) -> None:
    app = make_app()
    resumed: list[int] = []

    @app.get("/live")
    def live() -> Response:
        def generate() -> Iterator[bytes]:
            for i in range(3):
                resumed.append(i)
                yield (f'{{"event": {i}}}\n' + " " * 700).encode()

        return Response(generate(), mimetype="text/event-stream")

    response = app.test_client().get("/live", headers={"Accept-Encoding": coding}, buffered=False)
    try:
        assert response.headers["Content-Encoding"] == coding
        assert "Content-Length" not in response.headers
        chunks: Iterator[bytes] = iter(response.response)  # type: ignore[arg-type]
        first = next(chunks)
        # The first compressed chunk is decodable on its own before the
        # generator is resumed: the compressor was flushed, not buffering.
        assert resumed == [0]
        if coding == "gzip":
            partial = zlib.decompressobj(31).decompress(first)
        elif coding == "deflate":
            partial = zlib.decompressobj().decompress(first)
        elif coding == "br":
            partial = bytes(brotli.Decompressor().process(first))
        else:
            partial = bytes(zstd.ZstdDecompressor().decompress(first))
        assert partial.startswith(b'{"event": 0}')
        rest = b"".join(chunks)
    finally:
        response.close()
    assert decode(first + rest, coding).count(b'"event"') == 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
def test_bogus_accept_encoding_never_breaks_a_response(header: str) -> None:
    response = make_app().test_client().get("/data", headers={"Accept-Encoding": header})
    assert response.status_code == 200
    coding = response.headers.get("Content-Encoding")
    body = decode(response.data, coding) if coding else response.data
    assert json.loads(body) == PAYLOAD


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown algorithms"):
        CompressionSettings(algorithms=("lz4",))
    with pytest.raises(ValueError, match="min_size"):
        CompressionSettings(min_size=-1)
    with pytest.raises(ValueError, match="outside"):
        CompressionSettings(levels={"gzip": 12})
    with pytest.raises(ValueError, match="max_decoded_size"):
        CompressionSettings(max_decoded_size=0)
    assert set(available_encodings()) == set(ALL)


# ---------------------------------------------------------------- request bodies


def encode_body(data: bytes, codings: list[str]) -> bytes:
    for coding in codings:
        data = compress_bytes(data, coding)
    return data


@pytest.mark.parametrize(
    "codings",
    [["gzip"], ["deflate"], ["br"], ["zstd"], ["gzip", "br"], ["zstd", "deflate", "gzip"]],
)
def test_encoded_request_bodies_reach_the_view_decoded(codings: list[str]) -> None:
    client = make_app().test_client()
    response = client.post(
        "/echo",
        data=encode_body(RAW_BODY, codings),
        headers={"Content-Encoding": ", ".join(codings), "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.data
    assert json_of(response) == {
        "received": BODY,
        "encoding_seen": None,
        "encoding_sent": ", ".join(codings),
    }


def test_raw_deflate_and_concatenated_gzip_members_are_accepted() -> None:
    client = make_app().test_client()
    raw_deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = raw_deflate.compress(RAW_BODY) + raw_deflate.flush()
    response = client.post(
        "/echo",
        data=body,
        headers={"Content-Encoding": "deflate", "Content-Type": "application/json"},
    )
    assert json_of(response)["received"] == BODY
    half = len(RAW_BODY) // 2
    members = compress_bytes(RAW_BODY[:half], "gzip") + compress_bytes(RAW_BODY[half:], "gzip")
    response = client.post(
        "/echo",
        data=members,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert json_of(response)["received"] == BODY


@pytest.mark.parametrize("header", ["compress", "gzip, bogus", "lz4", "br, br, br, br, br"])
def test_unknown_or_stacked_bogus_codings_are_415_envelopes(header: str) -> None:
    response = (
        make_app().test_client().post("/echo", data=b"xx", headers={"Content-Encoding": header})
    )
    assert response.status_code == 415
    error = json_of(response)["error"]
    assert error["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert set(response.headers["Accept-Encoding"].split(", ")) == set(ALL)


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", compress_bytes(RAW_BODY, "gzip")[:-20]),
        ("gzip", b"this is not gzip at all"),
        ("gzip", compress_bytes(RAW_BODY, "gzip") + b"trailing garbage"),
        ("deflate", compress_bytes(RAW_BODY, "deflate")[:40]),
        ("br", compress_bytes(RAW_BODY, "br")[:-5]),
        ("br", b"\xff" * 50),
        ("zstd", compress_bytes(RAW_BODY, "zstd")[:-8]),
        ("zstd", b"\x00" * 30),
        ("gzip", b""),
    ],
)
def test_corrupt_or_truncated_bodies_are_400_envelopes(coding: str, body: bytes) -> None:
    response = (
        make_app()
        .test_client()
        .post(
            "/echo",
            data=body,
            headers={"Content-Encoding": coding, "Content-Type": "application/json"},
        )
    )
    assert response.status_code == 400, response.data
    error = json_of(response)["error"]
    assert error["code"] == "BAD_REQUEST"
    assert coding in error["message"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_content_encoding_on_get_is_a_400_envelope(method: str) -> None:
    response = (
        make_app().test_client().open("/data", method=method, headers={"Content-Encoding": "gzip"})
    )
    assert response.status_code == 400
    if method == "GET":
        assert "not allowed on a GET" in json_of(response)["error"]["message"]


def test_identity_content_encoding_is_a_no_op() -> None:
    response = (
        make_app()
        .test_client()
        .post(
            "/echo",
            data=RAW_BODY,
            headers={"Content-Encoding": "identity", "Content-Type": "application/json"},
        )
    )
    assert json_of(response)["received"] == BODY


def test_decoded_size_cap_follows_max_content_length() -> None:
    app = make_app()
    app.config["MAX_CONTENT_LENGTH"] = 4096
    client = app.test_client()
    fits = compress_bytes(b"a" * 4095, "gzip")
    assert json_of(client.post("/count", data=fits, headers={"Content-Encoding": "gzip"})) == {
        "bytes": 4095
    }
    too_big = compress_bytes(b"a" * 4097, "gzip")
    response = client.post("/count", data=too_big, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    error = json_of(response)["error"]
    assert error["code"] == "REQUEST_ENTITY_TOO_LARGE"


def test_explicit_cap_and_default_cap() -> None:
    capped = make_app(max_decoded_size=100).test_client()
    response = capped.post(
        "/count", data=compress_bytes(bytes(101), "zstd"), headers={"Content-Encoding": "zstd"}
    )
    assert response.status_code == 413
    assert "limit of 100 bytes" in json_of(response)["error"]["message"]
    default = make_app().test_client()
    ten_mib = 10 * 1024 * 1024
    ok = default.post(
        "/count", data=compress_bytes(bytes(ten_mib), "br"), headers={"Content-Encoding": "br"}
    )
    assert json_of(ok) == {"bytes": ten_mib}
    over = default.post(
        "/count", data=compress_bytes(bytes(ten_mib + 1), "br"), headers={"Content-Encoding": "br"}
    )
    assert over.status_code == 413


def test_gzip_bomb_is_refused_in_bounded_memory(gzip_bomb: bytes) -> None:
    assert 900_000 < len(gzip_bomb) < 1_200_000
    app = make_app()

    @app.post("/all")
    def read_all() -> dict[str, int]:
        return {"bytes": len(request.get_data())}

    client = app.test_client()
    gc.collect()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        response = client.post("/all", data=gzip_bomb, headers={"Content-Encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413
    assert json_of(response)["error"]["code"] == "REQUEST_ENTITY_TOO_LARGE"
    assert peak - baseline < 64 * 1024 * 1024, f"peak {(peak - baseline) / 2**20:.1f} MiB"


# ---------------------------------------------------------------- over real HTTP


def test_init_twice_is_refused() -> None:
    app = make_app()
    with pytest.raises(RuntimeError, match="already"):
        Compression(app)
    assert isinstance(Compression(settings=CompressionSettings()).settings, CompressionSettings)
    with pytest.raises(TypeError):
        Compression(settings=CompressionSettings(), min_size=3)


class ClosableBody:
    """A streamed body that records being closed, like a file behind send_file."""

    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        data = json.dumps(PAYLOAD).encode()
        for start in range(0, len(data), 4096):
            yield data[start : start + 4096]

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_streamed_body_is_closed_even_when_never_iterated(method: str) -> None:
    app = make_app()
    bodies: list[ClosableBody] = []

    @app.route("/body", methods=["GET", "HEAD"])
    def body() -> Response:
        bodies.append(ClosableBody())
        return Response(bodies[-1], mimetype="application/json")

    response = app.test_client().open("/body", method=method, headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    if method == "GET":
        assert json.loads(decode(response.data, "gzip")) == PAYLOAD
    else:
        assert response.data == b""
    response.close()
    assert bodies[0].closed


def test_negotiation_accepts_any_sequence_and_long_headers() -> None:
    assert negotiate_encoding("br, gzip", ["gzip", "br"]) == "gzip"
    long_header = ", ".join(f"x-coding-{i};q=0.1" for i in range(50)) + ", br;q=0.2"
    assert negotiate_encoding(long_header, ALL) == "br"


# ---------------------------------------------------------------- edge cases found by mutation


def test_a_coding_listed_twice_keeps_its_lowest_weight_in_either_order() -> None:
    assert negotiate_encoding("gzip;q=0, gzip;q=0.5", ("gzip",)) == "identity"
    assert negotiate_encoding("gzip;q=0.5, gzip;q=0", ("gzip",)) == "identity"


@pytest.mark.parametrize("mimetype", ["application/problem+json", "image/svg+xml", "text/csv"])
def test_json_and_xml_suffixed_and_text_types_are_compressed(mimetype: str) -> None:
    app = make_app()

    @app.get("/typed")
    def typed() -> Response:
        return Response(json.dumps(PAYLOAD), mimetype=mimetype)

    response = app.test_client().get("/typed", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert json.loads(decode(response.data, "gzip")) == PAYLOAD


def test_vary_star_already_covers_accept_encoding() -> None:
    app = make_app()

    @app.get("/anything")
    def anything() -> Response:
        return Response(json.dumps(PAYLOAD), mimetype="application/json", headers={"Vary": "*"})

    response = app.test_client().get("/anything", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers.getlist("Vary") == ["*"]


def test_a_response_with_content_range_is_left_alone_whatever_its_status() -> None:
    app = make_app()
    raw = json.dumps(PAYLOAD).encode()

    @app.get("/unsatisfiable")
    def unsatisfiable() -> Response:
        return Response(
            raw,
            status=416,
            mimetype="application/json",
            headers={"Content-Range": f"bytes */{len(raw)}"},
        )

    response = app.test_client().get("/unsatisfiable", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 416
    assert "Content-Encoding" not in response.headers
    assert response.data == raw


def test_a_compressed_response_no_longer_offers_byte_ranges() -> None:
    app = make_app()

    @app.get("/ranged")
    def ranged() -> Response:
        return Response(
            json.dumps(PAYLOAD), mimetype="application/json", headers={"Accept-Ranges": "bytes"}
        )

    client = app.test_client()
    compressed = client.get("/ranged", headers={"Accept-Encoding": "gzip"})
    assert compressed.headers["Content-Encoding"] == "gzip"
    assert "Accept-Ranges" not in compressed.headers
    assert client.get("/ranged").headers["Accept-Ranges"] == "bytes"


def test_a_streamed_response_revalidates_to_an_empty_304_and_closes_its_source() -> None:
    app = make_app()
    bodies: list[ClosableBody] = []

    @app.get("/tagged-stream")
    def tagged_stream() -> Response:
        bodies.append(ClosableBody())
        response = Response(bodies[-1], mimetype="application/json")
        response.set_etag("v9")
        return response

    client = app.test_client()
    first = client.get("/tagged-stream", headers={"Accept-Encoding": "br"})
    assert first.headers["ETag"] == '"v9-br"'
    assert json.loads(decode(first.data, "br")) == PAYLOAD
    first.close()
    again = client.get(
        "/tagged-stream", headers={"Accept-Encoding": "br", "If-None-Match": '"v9-br"'}
    )
    assert again.status_code == 304
    assert again.data == b""
    assert "Content-Length" not in again.headers
    again.close()
    assert bodies[1].closed


def test_zstd_frames_may_be_concatenated_but_deflate_streams_may_not() -> None:
    client = make_app().test_client()
    half = len(RAW_BODY) // 2
    frames = compress_bytes(RAW_BODY[:half], "zstd") + compress_bytes(RAW_BODY[half:], "zstd")
    joined = client.post(
        "/echo",
        data=frames,
        headers={"Content-Encoding": "zstd", "Content-Type": "application/json"},
    )
    assert json_of(joined)["received"] == BODY
    two_streams = compress_bytes(RAW_BODY[:half], "deflate") + compress_bytes(
        RAW_BODY[half:], "deflate"
    )
    refused = client.post(
        "/echo",
        data=two_streams,
        headers={"Content-Encoding": "deflate", "Content-Type": "application/json"},
    )
    assert refused.status_code == 400
    assert "after the end" in json_of(refused)["error"]["message"]


def test_gennet_max_decoded_size_config_wins_over_max_content_length() -> None:
    app = make_app()
    app.config["GENNET_MAX_DECODED_SIZE"] = 100
    app.config["MAX_CONTENT_LENGTH"] = 4096
    client = app.test_client()
    response = client.post(
        "/count", data=compress_bytes(bytes(101), "gzip"), headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 413
    assert "limit of 100 bytes" in json_of(response)["error"]["message"]
    fits = client.post(
        "/count", data=compress_bytes(bytes(100), "gzip"), headers={"Content-Encoding": "gzip"}
    )
    assert json_of(fits) == {"bytes": 100}


def test_an_encoded_body_with_a_garbled_content_length_is_a_400_envelope() -> None:
    response = (
        make_app()
        .test_client()
        .post(
            "/count",
            data=compress_bytes(RAW_BODY, "gzip"),
            headers={"Content-Encoding": "gzip"},
            environ_overrides={"CONTENT_LENGTH": "12abc"},
        )
    )
    assert response.status_code == 400
    assert json_of(response)["error"]["message"] == "Invalid Content-Length header."


def test_a_zstd_frame_demanding_a_huge_window_is_refused_before_allocating_it() -> None:
    # A streamed frame declares its window (here 128 MiB) up front; the decoder
    # would allocate it for a few bytes of input.
    compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 27})
    frame = compressor.compress(RAW_BODY) + compressor.flush()
    response = (
        make_app()
        .test_client()
        .post(
            "/echo",
            data=frame,
            headers={"Content-Encoding": "zstd", "Content-Type": "application/json"},
        )
    )
    assert response.status_code == 400
    assert "too much memory" in json_of(response)["error"]["message"]


def test_a_204_is_never_given_a_body_even_when_identity_is_refused() -> None:
    app = make_app()

    @app.delete("/thing")
    def delete_thing() -> Response:
        return Response(status=204, mimetype="application/json")

    response = app.test_client().delete("/thing", headers={"Accept-Encoding": "identity;q=0, gzip"})
    assert response.status_code == 204
    assert response.data == b""
    assert "Content-Encoding" not in response.headers


def test_a_view_saying_identity_still_gets_compressed() -> None:
    app = make_app()

    @app.get("/plain")
    def plain() -> Response:
        return Response(
            json.dumps(PAYLOAD),
            mimetype="application/json",
            headers={"Content-Encoding": "identity"},
        )

    response = app.test_client().get("/plain", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert json.loads(decode(response.data, "gzip")) == PAYLOAD


def test_each_direction_can_be_switched_off() -> None:
    no_responses = make_app(compress_responses=False).test_client()
    response = no_responses.get("/data", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in response.headers
    assert "Vary" not in response.headers
    assert json_of(response) == PAYLOAD
    decoded = no_responses.post(
        "/echo",
        data=compress_bytes(RAW_BODY, "gzip"),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert json_of(decoded)["received"] == BODY

    no_requests = make_app(decompress_requests=False).test_client()
    raw = no_requests.post(
        "/count", data=compress_bytes(RAW_BODY, "gzip"), headers={"Content-Encoding": "gzip"}
    )
    assert json_of(raw) == {"bytes": len(compress_bytes(RAW_BODY, "gzip"))}
    assert (
        no_requests.get("/data", headers={"Accept-Encoding": "gzip"}).headers["Content-Encoding"]
        == "gzip"
    )


@pytest.mark.parametrize("coding", ["gzip", "zstd", "br"])
def test_a_decoded_body_passing_the_limit_at_a_read_boundary_is_a_413_not_a_cut_400(
    coding: str,
) -> None:
    app = make_app()
    limit = 2 * 64 * 1024  # two whole decoded pieces: the cut fell between reads
    app.config["MAX_CONTENT_LENGTH"] = limit
    client = app.test_client()

    def send(size: int) -> TestResponse:
        body = b'{"p": "' + b"x" * (size - 9) + b'"}'
        assert len(body) == size
        return client.post(
            "/echo",
            data=compress_bytes(body, coding),
            headers={"Content-Encoding": coding, "Content-Type": "application/json"},
        )

    assert len(json_of(send(limit))["received"]["p"]) == limit - 9  # exactly at it: whole
    over = send(limit + 1)
    assert over.status_code == 413, over.data  # was a 400 "Unterminated string"
    assert f"limit of {limit} bytes" in json_of(over)["error"]["message"]


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_concatenated_members_are_capped_so_empty_ones_cannot_burn_cpu(coding: str) -> None:
    client = make_app().test_client()
    member = compress_bytes(b"ab", coding)
    at_cap = client.post(
        "/count", data=member * MAX_CONCATENATED_MEMBERS, headers={"Content-Encoding": coding}
    )
    assert json_of(at_cap) == {"bytes": 2 * MAX_CONCATENATED_MEMBERS}
    over = client.post(
        "/count", data=member * (MAX_CONCATENATED_MEMBERS + 1), headers={"Content-Encoding": coding}
    )
    assert over.status_code == 413
    assert f"more than {MAX_CONCATENATED_MEMBERS}" in json_of(over)["error"]["message"]


def test_a_known_encoded_length_over_max_content_length_is_refused_unread() -> None:
    app = make_app()
    app.config["MAX_CONTENT_LENGTH"] = 1000
    app.config["GENNET_MAX_DECODED_SIZE"] = 10_000  # the decoded cap would allow it
    body = compress_bytes(bytes(range(256)) * 8, "gzip", level=0)  # stored: 2 KB on the wire
    assert len(body) > 1000
    response = app.test_client().post("/count", data=body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert json_of(response)["error"]["message"] == (
        "The encoded request body exceeds the limit of 1000 bytes."
    )


def test_settings_assigned_later_apply_from_the_next_response() -> None:
    from dataclasses import replace

    from flask import Flask

    app = Flask(__name__)
    compression = Compression(app, min_size=10)

    @app.get("/png")
    def png() -> Response:
        return Response(b"\0" * 3000, mimetype="image/png")

    client = app.test_client()
    gzip_please = {"Accept-Encoding": "gzip, br"}
    assert "Content-Encoding" not in client.get("/png", headers=gzip_please).headers
    compression.settings = replace(
        compression.settings, mimetypes=frozenset({"image/png"}), algorithms=("gzip",)
    )
    assert client.get("/png", headers=gzip_please).headers["Content-Encoding"] == "gzip"
    assert compression.algorithms == ("gzip",)

"""Compression in both directions: responses negotiated, request bodies decoded safely.

:class:`Compression` does two independent jobs on a Flask app:

**Responses** are compressed with ``zstd``, ``br``, ``gzip`` or ``deflate``, chosen
from ``Accept-Encoding`` by q-value (RFC 9110 §12.5.3): ``q=0`` excludes a coding,
``*`` stands for every coding not listed, ``identity;q=0`` forbids an uncompressed
answer (so even a response under the minimum size is compressed), ties go to the
server's preference order, and malformed elements are ignored rather than
failing the request.  Every response of a compressible type gets
``Vary: Accept-Encoding``; a response that already has a ``Content-Encoding``, a
partial (206) response, or one marked ``Cache-Control: no-transform`` is left as
it is; streamed responses are compressed chunk by chunk and flushed after each
chunk so they keep streaming; a strong ``ETag`` gets a ``-<coding>`` suffix, since
the compressed bytes are a different representation, and conditional requests are
re-evaluated against it.

Why not wrap Flask-Compress (1.25)?  It does the per-algorithm compression well,
but the parts this module exists for are in its negotiation and hooks:
``gzip;q=0`` *selects* gzip (a q of zero is treated as a preference, not an
exclusion), ``gzip; q=0.5`` (with the space RFC 9110 allows) is not recognised,
``*`` falls back to the first server coding even when that coding is excluded
(``*, zstd;q=0`` gets zstd), ``identity;q=0`` is not honoured for small responses,
206 and ``no-transform`` responses are compressed, and streamed chunks are not
flushed (a slow stream is held in the compressor).  Fixing those means replacing
its ``after_request`` and its negotiation function, which is all of it but the
four ``compress()`` calls; so this module does the same calls itself (the same
libraries and default levels) and Flask-Compress is the benchmark's competitor.

**Request bodies** with ``Content-Encoding: gzip, deflate, br, zstd`` (stacked
codings too, e.g. ``gzip, br``) are decoded by a WSGI middleware before Flask
builds the request, so ``request.get_data()``, ``get_json()`` and forms see the
decoded bytes (and no ``Content-Encoding`` header: the value the client sent is
``request.environ[REQUEST_CONTENT_ENCODING_KEY]``).  Decoding is streamed in
bounded memory (each read inflates at most 64 KiB), and both sizes are capped,
each with a 413 the moment it is passed:

- the bytes received, at ``MAX_CONTENT_LENGTH`` (else the decoded cap): a known
  ``Content-Length`` over it is refused before the body is read, and a chunked
  body is counted as it arrives, even when it decodes to nothing (tens of MiB of
  empty gzip members or deflate blocks);
- the bytes decoded, at ``GENNET_MAX_DECODED_SIZE``, else ``MAX_CONTENT_LENGTH``,
  else 10 MiB, so a gzip bomb never inflates; ``MAX_CONTENT_LENGTH`` also caps
  what the view reads of the decoded body (a decoded body exactly at it passes);
- at most :data:`MAX_CONCATENATED_MEMBERS` gzip members or zstd frames.

An unknown coding is a 415 (with ``Accept-Encoding`` listing what is supported,
RFC 7694), a corrupt or truncated body a 400, and a ``Content-Encoding`` on a GET
or HEAD a 400; all rendered as the error envelope.

``br`` needs ``brotli`` (>= 1.2, for bounded decoding) and ``zstd`` needs Python
3.14's ``compression.zstd`` or ``backports.zstd``: install the ``compression``
extra.  Without them those codings are neither offered nor accepted.
"""

from __future__ import annotations

import functools
import importlib
import io
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from flask import Flask, Request, Response, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.http import parse_set_header
from werkzeug.wsgi import LimitedStream

from gennet_sync.error_handler import (
    BEFORE_STEPS_WANTED,
    _body_too_large,
    _CappedBody,
    app_state,
)

__all__ = [
    "DEFAULT_MAX_DECODED_SIZE",
    "MAX_CONCATENATED_MEMBERS",
    "REQUEST_CONTENT_ENCODING_KEY",
    "Compression",
    "CompressionSettings",
    "UnsupportedContentEncoding",
    "available_encodings",
    "compress_bytes",
    "negotiate_encoding",
]

#: Decoded request bodies are capped at this many bytes unless the app sets
#: ``GENNET_MAX_DECODED_SIZE`` or ``MAX_CONTENT_LENGTH``.
DEFAULT_MAX_DECODED_SIZE = 10 * 1024 * 1024

#: Server preference order, best first.
_PREFERENCE = ("zstd", "br", "gzip", "deflate")
_DEFAULT_LEVELS: Mapping[str, int] = {"zstd": 3, "br": 4, "gzip": 6, "deflate": 6}
_DEFAULT_MIMETYPES = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/xml",
        "application/xhtml+xml",
        "application/x-ndjson",
        "application/geo+json",
        "application/manifest+json",
        "image/svg+xml",
    }
)
_CHUNK = 64 * 1024
_MAX_STACKED_CODINGS = 4
#: Most gzip members or zstd frames one body may concatenate.  Each costs a new
#: decoder; tens of MiB of empty members would cost seconds of CPU and decode to
#: nothing.  Splitting tools (bgzip: 64 KiB per member) stay far below it.
MAX_CONCATENATED_MEMBERS = 1024
_ZSTD_WINDOW_LOG_MAX = 23  # 8 MiB windows at most: a frame cannot demand a 2 GiB buffer
_ENVIRON_ERROR = "gennet_sync.compression.error"
#: WSGI environ key of the request's ``Content-Encoding`` as the client sent it:
#: the header itself is removed once the body is decoded.
REQUEST_CONTENT_ENCODING_KEY = "gennet_sync.content_encoding"
_FEATURE = "compression"
_Q_VALUE = re.compile(r"^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$")
_ALIASES = {"x-gzip": "gzip"}


@functools.cache
def _brotli() -> ModuleType | None:
    try:
        module = importlib.import_module("brotli")
    except ImportError:
        return None
    # brotli < 1.2 cannot bound the output of one decompression call.
    return module if hasattr(module.Decompressor(), "can_accept_more_data") else None


@functools.cache
def _zstd() -> ModuleType | None:
    for name in ("compression.zstd", "backports.zstd"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def available_encodings() -> tuple[str, ...]:
    """The content codings usable here, in server preference order.

    Example::

        >>> "gzip" in available_encodings()
        True
    """
    present = {"gzip": True, "deflate": True, "br": _brotli() is not None}
    present["zstd"] = _zstd() is not None
    return tuple(coding for coding in _PREFERENCE if present[coding])


# --------------------------------------------------------------------------- negotiation


def _parse_accept_encoding(header: str) -> dict[str, float]:
    """``{coding: q}`` from an ``Accept-Encoding`` value; malformed elements are dropped."""
    weights: dict[str, float] = {}
    for element in header.split(","):
        coding, _, params = element.partition(";")
        coding = coding.strip().lower()
        coding = _ALIASES.get(coding, coding)
        if not coding:
            continue
        quality = 1.0
        valid = True
        for param in params.split(";") if params else ():
            name, _, value = param.partition("=")
            if name.strip().lower() != "q":
                continue
            value = value.strip()
            if not _Q_VALUE.match(value):
                valid = False
                break
            quality = float(value)
        if valid:
            # A coding listed twice keeps its lowest weight: the safer reading.
            weights[coding] = min(quality, weights.get(coding, quality))
    return weights


def negotiate_encoding(accept_encoding: str | None, available: Sequence[str]) -> str | None:
    """Pick the content coding for a response, following RFC 9110 §12.5.3.

    Args:
        accept_encoding: The request's ``Accept-Encoding`` value; ``None`` when the
            header is absent (then the answer is ``"identity"``: nothing asked for).
        available: Codings the server can produce, best first.

    Returns:
        A coding from ``available``; ``"identity"`` for an uncompressed answer; or
        ``None`` when nothing is acceptable (every coding and identity excluded).

    Example::

        >>> negotiate_encoding("gzip;q=0.5, br", ("zstd", "br", "gzip"))
        'br'
        >>> negotiate_encoding("gzip;q=0, *", ("zstd", "gzip"))
        'zstd'
        >>> negotiate_encoding("identity;q=0, gzip;q=0", ("gzip",)) is None
        True
    """
    if accept_encoding is None:
        return "identity"
    if len(accept_encoding) > _CACHED_HEADER_LENGTH:
        return _negotiate(accept_encoding, tuple(available))
    return _negotiate_cached(accept_encoding, tuple(available))


def _negotiate(accept_encoding: str, available: tuple[str, ...]) -> str | None:
    weights = _parse_accept_encoding(accept_encoding)
    star = weights.get("*")
    best: str | None = None
    best_q = 0.0
    for coding in available:
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    # identity is acceptable unless excluded; it competes on q only when the
    # client gave it one (directly or through "*"): "gzip;q=0.5" still wants gzip.
    identity_q = weights.get("identity", star)
    if best is not None and (identity_q is None or best_q >= identity_q):
        return best
    if identity_q is None or identity_q > 0:
        return "identity"
    return None


# Real clients send a handful of distinct short values; long or odd ones are
# parsed each time so they cannot crowd the cache.
_CACHED_HEADER_LENGTH = 200
_negotiate_cached = functools.lru_cache(maxsize=256)(_negotiate)
_CACHED_DECISIONS = 256


# --------------------------------------------------------------------------- compressors


def compress_bytes(data: bytes, coding: str, level: int | None = None) -> bytes:
    """Compress ``data`` in one call with ``coding`` (``gzip``, ``deflate``, ``br``, ``zstd``).

    Args:
        data: The bytes to compress.
        coding: The content coding.
        level: Compression level; the coding's default (gzip/deflate 6, br 4,
            zstd 3) when ``None``.

    Returns:
        The encoded bytes, decodable by any HTTP client that accepts ``coding``.

    Raises:
        ValueError: ``coding`` is unknown or its library is not installed.
    """
    level = _DEFAULT_LEVELS.get(coding, 0) if level is None else level
    if coding == "gzip":
        return zlib.compress(data, level, wbits=31)  # gzip framing, mtime 0: reproducible
    if coding == "deflate":
        return zlib.compress(data, level)  # HTTP "deflate" is the zlib format
    if coding == "br" and (brotli := _brotli()) is not None:
        result: bytes = brotli.compress(data, quality=level)
        return result
    if coding == "zstd" and (zstd := _zstd()) is not None:
        result = zstd.compress(data, level)
        return result
    raise ValueError(f"content coding {coding!r} is not available here")


def _stream_compressor(
    coding: str, level: int
) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    """``(compress_and_flush(chunk), finish())`` for compressing a stream chunk by chunk."""
    if coding in ("gzip", "deflate"):
        zobj = zlib.compressobj(level, zlib.DEFLATED, 31 if coding == "gzip" else 15)

        def zchunk(data: bytes) -> bytes:
            return zobj.compress(data) + zobj.flush(zlib.Z_SYNC_FLUSH)

        return zchunk, zobj.flush
    if coding == "br" and (brotli := _brotli()) is not None:
        bobj = brotli.Compressor(quality=level)

        def bchunk(data: bytes) -> bytes:
            return bytes(bobj.process(data)) + bytes(bobj.flush())

        return bchunk, lambda: bytes(bobj.finish())
    if coding == "zstd" and (zstd := _zstd()) is not None:
        cobj = zstd.ZstdCompressor(level=level)

        def zstchunk(data: bytes) -> bytes:
            return bytes(cobj.compress(data, cobj.FLUSH_BLOCK))

        return zstchunk, lambda: bytes(cobj.flush(cobj.FLUSH_FRAME))
    raise ValueError(f"content coding {coding!r} is not available here")


class _CompressedStream:
    """A streamed body compressed chunk by chunk; closing it closes the original.

    A class rather than a generator: a generator that was never started (a HEAD
    request, a client gone before the first chunk) skips its ``finally`` on
    ``close()``, which would leak the original body (an open file, say).
    """

    def __init__(self, chunks: Iterable[bytes], source: object, coding: str, level: int) -> None:
        self._chunks = chunks
        self._source = source
        self._coding = coding
        self._level = level
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        compress_chunk, finish = _stream_compressor(self._coding, self._level)
        for chunk in self._chunks:
            if chunk:
                out = compress_chunk(chunk)
                if out:
                    yield out
        tail = finish()
        if tail:
            yield tail

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CompressionSettings:
    """How :class:`Compression` behaves; validated once, at construction.

    Attributes:
        algorithms: Codings offered for responses, best first; those whose library
            is missing are dropped.  Empty: responses are never compressed.
        min_size: Responses smaller than this many bytes are sent as they are
            (unless the client forbids ``identity``).  0 compresses everything.
        levels: Compression level per coding; missing ones use the defaults
            (gzip/deflate 6, br 4, zstd 3).
        mimetypes: Compressible media types, in addition to every ``text/*`` type
            and every ``+json`` / ``+xml`` suffix.
        compress_responses: Compress responses at all.
        decompress_requests: Decode ``Content-Encoding`` request bodies at all.
        max_decoded_size: Cap on a decoded request body in bytes; ``None`` reads
            ``GENNET_MAX_DECODED_SIZE``, then ``MAX_CONTENT_LENGTH``, then 10 MiB.
    """

    algorithms: tuple[str, ...] = _PREFERENCE
    min_size: int = 500
    levels: Mapping[str, int] = field(default_factory=lambda: dict(_DEFAULT_LEVELS))
    mimetypes: frozenset[str] = _DEFAULT_MIMETYPES
    compress_responses: bool = True
    decompress_requests: bool = True
    max_decoded_size: int | None = None

    def __post_init__(self) -> None:
        unknown = [a for a in self.algorithms if a not in _PREFERENCE]
        if unknown:
            raise ValueError(f"unknown algorithms {unknown}; choose from {list(_PREFERENCE)}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")
        if self.max_decoded_size is not None and self.max_decoded_size < 1:
            raise ValueError(f"max_decoded_size must be >= 1 byte, got {self.max_decoded_size}")
        bounds = {"gzip": (0, 9), "deflate": (0, 9), "br": (0, 11), "zstd": (-7, 22)}
        for coding, level in self.levels.items():
            low, high = bounds.get(coding, (0, -1))
            if not low <= level <= high:
                raise ValueError(f"level {level} for {coding!r} is outside {low}..{high}")
        object.__setattr__(self, "levels", {**_DEFAULT_LEVELS, **self.levels})

    def level(self, coding: str) -> int:
        """The level used for ``coding``."""
        return self.levels[coding]


# --------------------------------------------------------------------------- request bodies


class UnsupportedContentEncoding(UnsupportedMediaType):
    """415 for a request ``Content-Encoding`` this server cannot decode.

    Carries ``Accept-Encoding`` with the codings it can decode (RFC 7694).
    """

    def __init__(self, description: str, supported: Sequence[str]) -> None:
        super().__init__(description)
        self.supported = tuple(supported)

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        headers = super().get_headers(*args, **kwargs)
        headers.append(("Accept-Encoding", ", ".join(self.supported) or "identity"))
        return headers


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Decoder(Protocol):
    """The bounded-output decompressor shape (like ``bz2``/``lzma`` decompressors)."""

    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int) -> bytes: ...


class _ZlibDecoder:
    """gzip (``wbits=31``) or deflate, zlib-wrapped or raw (told apart by the header)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._obj: Any = zlib.decompressobj(31) if gzip else None

    @property
    def eof(self) -> bool:
        return self._obj is not None and bool(self._obj.eof)

    @property
    def needs_input(self) -> bool:
        return self._obj is None or not self._obj.unconsumed_tail

    @property
    def unused_data(self) -> bytes:
        return b"" if self._obj is None else bytes(self._obj.unused_data)

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._obj is None:
            # HTTP "deflate" is meant to be zlib-wrapped, but some clients send raw
            # deflate; a zlib header is recognisable (CM=8, header checksum).
            is_zlib = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._obj = zlib.decompressobj(15 if is_zlib else -15)
        if not data:
            data = self._obj.unconsumed_tail
        return bytes(self._obj.decompress(data, max_length))


class _BrotliDecoder:
    def __init__(self, brotli: ModuleType) -> None:
        self._obj = brotli.Decompressor()

    @property
    def eof(self) -> bool:
        return bool(self._obj.is_finished())

    @property
    def needs_input(self) -> bool:
        return bool(self._obj.can_accept_more_data())

    @property
    def unused_data(self) -> bytes:
        return b""  # brotli rejects data after the end of its stream itself

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return bytes(self._obj.process(data, output_buffer_limit=max_length))


def _new_decoder(coding: str) -> _Decoder:
    if coding in ("gzip", "deflate"):
        return _ZlibDecoder(gzip=coding == "gzip")
    if coding == "br" and (brotli := _brotli()) is not None:
        return _BrotliDecoder(brotli)
    if coding == "zstd" and (zstd := _zstd()) is not None:
        options = {zstd.DecompressionParameter.window_log_max: _ZSTD_WINDOW_LOG_MAX}
        decoder: _Decoder = zstd.ZstdDecompressor(options=options)
        return decoder
    raise ValueError(f"content coding {coding!r} is not available here")


def _decoding_errors() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [zlib.error]
    if (brotli := _brotli()) is not None:
        errors.append(brotli.error)
    if (zstd := _zstd()) is not None:
        errors.append(zstd.ZstdError)
    return tuple(errors)


class _DecodingLayer:
    """One content coding undone, read in bounded pieces from the layer below."""

    def __init__(self, source: _Readable, coding: str) -> None:
        self._source = source
        self._coding = coding
        self._decoder = _new_decoder(coding)
        self._errors = _decoding_errors()
        self._members = 1

    def _corrupt(self, reason: str) -> BadRequest:
        return BadRequest(f"Request body is not valid {self._coding} data: {reason}")

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._read(_CHUNK if size is None or size < 0 else max(1, size))
        except self._errors as error:
            raise self._corrupt(str(error) or type(error).__name__) from None

    def _read(self, size: int) -> bytes:
        stalls = 0
        while stalls < 3:
            decoder = self._decoder
            if decoder.eof:
                trailing = decoder.unused_data or self._source.read(_CHUNK)
                if not trailing:
                    return b""
                if self._coding not in ("gzip", "zstd"):
                    raise self._corrupt("data after the end of the compressed stream")
                # gzip members and zstd frames may be concatenated, but not without end.
                self._members += 1
                if self._members > MAX_CONCATENATED_MEMBERS:
                    raise RequestEntityTooLarge(
                        f"The request body concatenates more than {MAX_CONCATENATED_MEMBERS}"
                        f" {self._coding} {'frames' if self._coding == 'zstd' else 'members'}."
                    )
                self._decoder = decoder = _new_decoder(self._coding)
                data = trailing
            elif decoder.needs_input:
                data = self._source.read(_CHUNK)
                if not data:
                    out = decoder.decompress(b"", size)  # output still held by the decoder
                    if out:
                        return out
                    if decoder.eof:
                        continue
                    raise self._corrupt("the body ends before the compressed stream does")
            else:
                data = b""
            out = decoder.decompress(data, size)
            if out:
                return out
            stalls = 0 if data else stalls + 1
        raise self._corrupt("the decoder stopped making progress")


class _DecodedBody(io.RawIOBase):
    """The decoded request body as ``wsgi.input``: bounded reads, capped total size."""

    def __init__(self, source: _Readable, codings: Sequence[str], cap: int) -> None:
        super().__init__()
        top: _Readable = source
        # "gzip, br" means gzip was applied first: undo br first.
        for coding in reversed(codings):
            top = _DecodingLayer(top, coding)
        self._top = top
        self._cap = cap
        self._total = 0
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        """Decode the next piece (at most 64 KiB per layer) into the buffer."""
        if self._buffer:
            return
        self._buffer = self._top.read(_CHUNK)
        self._total += len(self._buffer)
        if self._total > self._cap:
            self._buffer = b""
            raise _body_too_large(self._cap, "The decoded request body")

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        self._fill()
        count = min(len(view), len(self._buffer))
        view[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return self.readall()
        self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readall(self) -> bytes:
        # io.RawIOBase.readall reads 8 KiB at a time; whole decoded pieces are faster.
        parts: list[bytes] = []
        while True:
            self._fill()
            if not self._buffer:
                return b"".join(parts)
            parts.append(self._buffer)
            self._buffer = b""


def _parse_content_encoding(value: str) -> list[str]:
    codings = [c.strip().lower() for c in value.split(",")]
    return [_ALIASES.get(c, c) for c in codings if c and c != "identity"]


class _RequestDecodingMiddleware:
    """WSGI middleware that swaps ``wsgi.input`` for the decoded body.

    Errors found before the app runs (unknown coding, coding on a GET) are left in
    the environ for the Flask hook to raise, so they become the error envelope.
    """

    def __init__(self, wsgi_app: Any, app: Flask, settings: CompressionSettings) -> None:
        self.wsgi_app = wsgi_app
        self._app = app
        self._settings = settings

    def _caps(self) -> tuple[int, int]:
        """``(raw, decoded)``: the caps on the bytes received and on the bytes decoded."""
        config = self._app.config
        decoded = DEFAULT_MAX_DECODED_SIZE
        for value in (
            self._settings.max_decoded_size,
            config.get("GENNET_MAX_DECODED_SIZE"),
            config.get("MAX_CONTENT_LENGTH"),
        ):
            if value is not None:
                decoded = int(value)
                break
        raw = config.get("MAX_CONTENT_LENGTH")
        return (decoded if raw is None else int(raw)), decoded

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        header = environ.get("HTTP_CONTENT_ENCODING")
        if header is not None:
            self._rewrite(environ, header)
        return self.wsgi_app(environ, start_response)

    def _rewrite(self, environ: dict[str, Any], header: str) -> None:
        codings = _parse_content_encoding(header)
        del environ["HTTP_CONTENT_ENCODING"]
        environ[REQUEST_CONTENT_ENCODING_KEY] = header
        if not codings:
            return
        supported = available_encodings()
        error: Exception | None = None
        if environ.get("REQUEST_METHOD", "GET").upper() in ("GET", "HEAD"):
            error = BadRequest(
                f"Content-Encoding ({header!r}) is not allowed on a "
                f"{environ['REQUEST_METHOD'].upper()} request: it has no body to decode."
            )
        elif any(c not in supported for c in codings):
            unknown = ", ".join(c for c in codings if c not in supported)
            error = UnsupportedContentEncoding(
                f"Unsupported Content-Encoding {unknown!r}; supported: {', '.join(supported)}.",
                supported,
            )
        elif len(codings) > _MAX_STACKED_CODINGS:
            error = UnsupportedContentEncoding(
                f"Content-Encoding stacks {len(codings)} codings; at most "
                f"{_MAX_STACKED_CODINGS} are accepted.",
                supported,
            )
        if error is not None:
            environ[BEFORE_STEPS_WANTED] = environ[_ENVIRON_ERROR] = error
            environ["wsgi.input"] = io.BytesIO(b"")
            environ["CONTENT_LENGTH"] = "0"
            return
        wsgi_input: Any = environ["wsgi.input"]
        raw: _Readable = wsgi_input
        raw_cap, decoded_cap = self._caps()
        length = environ.get("CONTENT_LENGTH")
        if "chunked" in parse_set_header(environ.get("HTTP_TRANSFER_ENCODING")):
            length = None  # Transfer-Encoding overrides Content-Length (RFC 9112 §6.3)
        if length:
            try:
                size = int(length)
            except ValueError:
                size = -1
            if size < 0:
                environ[BEFORE_STEPS_WANTED] = environ[_ENVIRON_ERROR] = BadRequest(
                    "Invalid Content-Length header."
                )
                return
            if size > raw_cap:  # refused before a byte of it is read
                environ[BEFORE_STEPS_WANTED] = environ[_ENVIRON_ERROR] = _body_too_large(
                    raw_cap, "The encoded request body"
                )
                environ["wsgi.input"] = io.BytesIO(b"")
                environ["CONTENT_LENGTH"] = "0"
                return
            raw = LimitedStream(wsgi_input, size)  # raises ClientDisconnected (400) if short
        elif environ.get("wsgi.input_terminated"):
            # Chunked: the bytes received are capped as they arrive, even when
            # they decode to nothing (empty gzip members, empty deflate blocks).
            raw = _CappedBody(wsgi_input, raw_cap, "The encoded request body")
        else:
            raw = io.BytesIO(b"")
        environ["wsgi.input"] = _DecodedBody(raw, codings, decoded_cap)
        environ["wsgi.input_terminated"] = True
        environ.pop("CONTENT_LENGTH", None)  # the decoded length is not known in advance


def _raise_request_decoding_error(request: Request) -> None:
    error = request.environ.get(_ENVIRON_ERROR)
    if error is not None:
        raise error


# --------------------------------------------------------------------------- the extension


def _is_compressible(mimetype: str, extra: frozenset[str]) -> bool:
    return mimetype in extra or mimetype.startswith("text/") or mimetype.endswith(("+json", "+xml"))


def _add_vary(response: Response, vary: str) -> None:
    """Add ``Accept-Encoding`` to ``Vary`` (whose current value is ``vary``) unless covered."""
    tokens = {token.strip().lower() for token in vary.split(",")}
    if "*" in tokens or "accept-encoding" in tokens:
        return
    response.headers["Vary"] = f"{vary}, Accept-Encoding" if vary.strip() else "Accept-Encoding"


class Compression:
    """Response compression and safe request-body decoding for a Flask app.

    Example::

        from flask import Flask
        from gennet_sync import Compression, setup_error_handlers

        app = Flask(__name__)
        app.config["MAX_CONTENT_LENGTH"] = 5 * 1024 * 1024  # also caps decoded bodies
        setup_error_handlers(app)
        Compression(app, min_size=1024)

        # GET with "Accept-Encoding: br;q=1, gzip;q=0.8" -> Content-Encoding: br
        # POST with "Content-Encoding: gzip" -> request.get_json() sees the JSON;
        #   a body inflating past 5 MiB -> 413 envelope, unknown coding -> 415.

    Args:
        app: The app to set up now; or call :meth:`init_app` later.
        settings: A :class:`CompressionSettings`; or give its fields as keywords.
        **options: Fields of :class:`CompressionSettings`.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        settings: CompressionSettings | None = None,
        **options: Any,
    ) -> None:
        if settings is not None and options:
            raise TypeError("pass either settings= or keyword options, not both")
        if "algorithms" in options and isinstance(options["algorithms"], str):
            options["algorithms"] = tuple(a.strip() for a in options["algorithms"].split(","))
        elif "algorithms" in options:
            options["algorithms"] = tuple(options["algorithms"])
        if "mimetypes" in options:
            options["mimetypes"] = frozenset(options["mimetypes"])
        self._decisions: dict[str | None, tuple[str | None, bool]] = {}
        self._compressible: dict[str | None, bool] = {}
        self.settings = settings if settings is not None else CompressionSettings(**options)
        if app is not None:
            self.init_app(app)

    @property
    def settings(self) -> CompressionSettings:
        """The settings in force.  New ones assigned apply from the next response."""
        return self._settings

    @settings.setter
    def settings(self, settings: CompressionSettings) -> None:
        self._settings = settings
        self._min_size = settings.min_size  # read on every response
        available = set(available_encodings())
        self._algorithms = tuple(a for a in settings.algorithms if a in available)
        # What was decided under the old settings (codings, mimetypes) is forgotten.
        self._decisions = {}
        self._compressible = {}

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The codings actually offered for responses (configured and installed)."""
        return self._algorithms

    def init_app(self, app: Flask) -> None:
        """Install the request decoder and the response hook on ``app``."""
        state = app_state(app)
        existing = state.features.get(_FEATURE)
        if existing is self:
            return
        if existing is not None:
            raise RuntimeError("this app already has a Compression; use that one")
        state.features[_FEATURE] = self
        if self.settings.decompress_requests:
            app.wsgi_app = _RequestDecodingMiddleware(  # type: ignore[method-assign]
                app.wsgi_app, app, self.settings
            )
            state.add_request_steps(app, before=_raise_request_decoding_error, before_always=False)
        if self.settings.compress_responses:
            state.add_request_steps(app, after=self._compress)

    def compress_response(self, response: Response) -> Response:
        """Compress ``response`` for the current request when it should be.

        :meth:`init_app` runs it on every response, as an ``after_request`` hook would.
        """
        return self._compress(request, response)

    def _negotiate(self, accept_encoding: str | None) -> tuple[str | None, bool]:
        """The coding for ``accept_encoding`` and whether it allows an uncompressed answer.

        Remembered per header value (clients send a handful), as
        :func:`negotiate_encoding` would answer both questions.
        """
        decision = self._decisions.get(accept_encoding)
        if decision is None:
            decision = (
                negotiate_encoding(accept_encoding, self._algorithms),
                negotiate_encoding(accept_encoding, ()) is not None,
            )
            if accept_encoding is None or len(accept_encoding) <= _CACHED_HEADER_LENGTH:
                if len(self._decisions) >= _CACHED_DECISIONS:
                    self._decisions.clear()  # odd values must not pile up
                self._decisions[accept_encoding] = decision
        return decision

    def _decide_compressible(self, content_type: str | None) -> bool:
        """Whether a response of ``content_type`` may be compressed; remembered per value."""
        mimetype = content_type.partition(";")[0].strip() if content_type is not None else ""
        compressible = _is_compressible(mimetype, self.settings.mimetypes)
        if content_type is None or len(content_type) <= _CACHED_HEADER_LENGTH:
            if len(self._compressible) >= _CACHED_DECISIONS:
                self._compressible.clear()  # odd values must not pile up
            self._compressible[content_type] = compressible
        return compressible

    def _compress(self, request: Request, response: Response) -> Response:
        # One pass over the few headers a response has, for the five this step reads
        # (werkzeug builds a KeyError for each lookup of a missing header, and most
        # are missing).  Repeated headers are joined with ", ", as HTTP combines list
        # values (a "no-transform" or a Vary token in a second line counts too); the
        # mimetype is the first Content-Type's, as ``response.mimetype`` reads it.
        # This runs on every response: inlined, each call costs as much as a line.
        content_type = vary = encoding = cache_control = None
        ranged = False
        for name, value in response.headers._list:  # werkzeug's list (see the Vary below)
            # The two headers of almost every response, as Flask and werkzeug spell
            # them, first: no lower() call for them.
            if name == "Content-Type":
                if content_type is None:
                    content_type = value
                continue
            if name == "Content-Length":  # not needed
                continue
            key = name.lower()
            if key == "content-length":
                continue
            if key == "content-type":
                if content_type is None:
                    content_type = value
            elif key == "vary":
                vary = value if vary is None else f"{vary}, {value}"
            elif key == "content-encoding":
                encoding = value if encoding is None else f"{encoding}, {value}"
            elif key == "cache-control":
                cache_control = value if cache_control is None else f"{cache_control}, {value}"
            elif key == "content-range":
                ranged = True
        compressible = self._compressible.get(content_type)  # a handful of values
        if compressible is None:
            compressible = self._decide_compressible(content_type)
        if not compressible:
            return response
        # What the status_code property returns, without its call (a test pins it).
        status = response._status_code
        if status < 200 or status in (204, 206, 304) or ranged:
            return response
        if encoding is not None:
            encoding = encoding.strip().lower()
            if encoding and encoding != "identity":
                return response  # already encoded by the view: never compress twice
        if vary is None:
            # Nothing to replace: appended as ``headers.add`` would, without its
            # check of a constant value for newlines (a call and a regex search
            # per response).  tests/unit/test_performance_equivalence.py pins the
            # list werkzeug keeps a response's headers in.
            response.headers._list.append(("Vary", "Accept-Encoding"))
        else:
            _add_vary(response, vary)
        if cache_control is not None and "no-transform" in cache_control.lower():
            return response
        # As request.headers reads it, without building the headers object.
        accept_encoding = request.environ.get("HTTP_ACCEPT_ENCODING")
        decision = self._decisions.get(accept_encoding)  # _negotiate's cache, inlined
        coding, identity_allowed = decision or self._negotiate(accept_encoding)
        if coding is None or coding == "identity":
            # None: nothing the client accepts is available; RFC 9110 allows
            # answering without a coding rather than failing a request that ran.
            return response
        chunks = response.response
        if type(chunks) is list and len(chunks) == 1 and type(chunks[0]) is bytes:
            streamed, data = False, chunks[0]  # what get_data() joins (a view's body)
        else:
            streamed = response.is_streamed
            data = b"" if streamed else response.get_data()
        size = response.content_length if streamed else len(data)
        if (
            size is not None
            and size < self._min_size
            # Small, but sent compressed anyway when the client forbids identity.
            and identity_allowed
        ):
            return response
        level = self.settings.level(coding)
        if not streamed:
            response.set_data(compress_bytes(data, coding, level))
        response.headers["Content-Encoding"] = coding
        response.headers.pop("Accept-Ranges", None)
        etag, weak = response.get_etag()
        if etag and not weak:
            response.set_etag(f"{etag}-{coding}")
        revalidating = request.method in ("GET", "HEAD") and status == 200
        if not streamed:
            if revalidating:
                response.make_conditional(request)
            return response
        source = response.response
        if (
            revalidating
            and etag
            and not weak
            and request.if_none_match.contains(f"{etag}-{coding}")
        ):
            # make_conditional would buffer the whole stream to compute a length.
            close = getattr(source, "close", None)
            if close is not None:
                close()
            response.response = []
            response.status_code = 304
            response.headers.pop("Content-Length", None)
            return response
        response.response = _CompressedStream(response.iter_encoded(), source, coding, level)
        response.direct_passthrough = False
        response.headers.pop("Content-Length", None)
        return response

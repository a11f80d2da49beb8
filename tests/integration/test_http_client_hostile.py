"""ServiceSession against downstreams that misbehave on purpose (issue 10).

Every server here is real and listens on 127.0.0.1: a raw-socket server that
answers each connection with a script (trickles, lies about lengths, sends
garbage, gigabytes), werkzeug for well-formed redirects, and a TLS server whose
certificate nobody trusts.  Memory is measured in a child Python, never guessed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from examples.launcher import free_port
from gennet_sync.circuit_breaker import (
    CircuitBreakerError,
    CircuitState,
)
from gennet_sync.exceptions import (
    GenNetException,
    InternalServerError,
    ServiceUnavailableError,
)
from gennet_sync.http_client import (
    BadGatewayError,
    GatewayTimeoutError,
    ServiceSession,
    make_retry,
)
from tests.support import PROJECT_ROOT
from tests.support.servers import require_binary

pytestmark = pytest.mark.usefixtures("fresh_breaker_registry")


# =========================================================================== raw server


class Exchange:
    """One connection to a :class:`RawServer`: read the request, write anything."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self._buffer = b""

    def read_request(self) -> tuple[bytes, bytes]:
        """The request head and its body (Content-Length or chunked), as received."""
        while b"\r\n\r\n" not in self._buffer:
            data = self.conn.recv(65536)
            if not data:
                return b"", b""
            self._buffer += data
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        if b"content-length" in headers:
            length = int(headers[b"content-length"])
            while len(self._buffer) < length:
                data = self.conn.recv(65536)
                if not data:
                    break
                self._buffer += data
            body, self._buffer = self._buffer[:length], self._buffer[length:]
            return head, body
        if headers.get(b"transfer-encoding") == b"chunked":
            return head, self._read_chunked()
        return head, b""

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self._buffer:
                data = self.conn.recv(65536)
                if not data:
                    return body
                self._buffer += data
            size_line, _, self._buffer = self._buffer.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self._buffer) < size + 2:
                data = self.conn.recv(65536)
                if not data:
                    return body
                self._buffer += data
            body += self._buffer[:size]
            self._buffer = self._buffer[size + 2 :]
            if size == 0:
                return body

    def send(self, data: bytes) -> bool:
        """Send ``data``; ``False`` once the client has gone."""
        try:
            self.conn.sendall(data)
        except OSError:
            return False
        return True


Script = Callable[[Exchange, "RawServer"], None]


class RawServer:
    """A TCP server on 127.0.0.1 running ``script`` for each connection, in a thread.

    It records every request it read (head and body), so a test can check what
    reached the wire.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def record(self, head: bytes, body: bytes) -> None:
        with self.lock:
            self.requests.append((head, body))

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.script(Exchange(conn), self)

    def close(self) -> None:
        self._stopping.set()
        self._accepter.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def raw_server(script: Script) -> Iterator[RawServer]:
    server = RawServer(script)
    try:
        yield server
    finally:
        server.close()


def answer(status: int, body: bytes = b"", **headers: str) -> Script:
    """A script answering every request on a connection with the same response."""
    lines = [f"HTTP/1.1 {status} X"] + [
        f"{name.replace('_', '-')}: {value}" for name, value in headers.items()
    ]
    if "Content_Length" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()

    def script(exchange: Exchange, server: RawServer) -> None:
        while True:
            head_in, body_in = exchange.read_request()
            if not head_in:
                return
            server.record(head_in, body_in)
            if not exchange.send(head + body):
                return

    return script


# =========================================================================== drop-in


class TestRefusalIsARequestsError:
    def test_open_breaker_refusal_is_caught_by_requests_handlers(self) -> None:
        with raw_server(answer(500, b"down")) as server:
            session = ServiceSession(
                base_url=server.url, service_name="svc", circuit_breaker_threshold=1, retries=0
            )
            assert session.get("/x").status_code == 500  # opens the breaker
            # Code written for requests catches the refusal...
            with pytest.raises(requests.ConnectionError) as caught:
                session.get("/x")
            assert len(server.requests) == 1  # ...and nothing was sent.
        refusal = caught.value
        assert isinstance(refusal, requests.RequestException)
        assert isinstance(refusal, CircuitBreakerError)
        assert refusal.status_code == 503
        assert refusal.headers["Retry-After"] == "60"
        assert refusal.to_dict()["error"]["type"] == "CircuitBreakerError"
        assert str(refusal) == "Circuit breaker 'svc' is open; call not attempted"
        assert refusal.request is not None and refusal.request.url == f"{server.url}/x"

    def test_mapped_timeout_is_a_requests_timeout_and_pickles(self) -> None:
        def hang(exchange: Exchange, server: RawServer) -> None:
            exchange.read_request()
            time.sleep(3)

        with raw_server(hang) as server:
            session = ServiceSession(
                base_url=server.url, service_name="svc", raise_errors=True, timeout=(1, 0.3)
            )
            with pytest.raises(requests.ReadTimeout) as caught:
                session.get("/x")
        error = caught.value
        assert isinstance(error, GatewayTimeoutError) and isinstance(error, ServiceUnavailableError)
        assert error.status_code == 504 and error.metadata["reason"] == "timeout"
        copy = pickle.loads(pickle.dumps(error))
        assert isinstance(copy, requests.ReadTimeout) and isinstance(copy, GatewayTimeoutError)
        assert copy.to_dict() == error.to_dict()


class TestExplicitTimeoutNone:
    def test_none_waits_past_the_session_default(self) -> None:
        def slow(exchange: Exchange, server: RawServer) -> None:
            exchange.read_request()
            time.sleep(1.0)
            exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        with raw_server(slow) as server:
            session = ServiceSession(base_url=server.url, service_name="svc", timeout=0.3)
            with pytest.raises(requests.ReadTimeout):
                session.get("/x")
            # requests' "wait forever": the session default does not apply.
            assert session.get("/x", timeout=None).text == "ok"


# =========================================================================== proxies and TLS


class TestProxyAndTlsFailures:
    def test_dead_proxy_does_not_open_the_destination_breaker(self) -> None:
        dead_proxy = f"http://127.0.0.1:{free_port()}"
        with raw_server(answer(200, b"ok")) as server:
            session = ServiceSession(
                base_url=server.url,
                service_name="svc",
                circuit_breaker_threshold=2,
                retries=0,
                raise_errors=True,
            )
            for _ in range(5):
                with pytest.raises(requests.exceptions.ProxyError) as caught:
                    session.get("/x", proxies={"http": dead_proxy})
                assert isinstance(caught.value, ServiceUnavailableError)
                assert caught.value.metadata["reason"] == "proxy_error"
            breaker = session.circuit_breaker
            assert breaker is not None and breaker.state is CircuitState.CLOSED
            assert breaker.failure_count == 0
            # The destination itself is fine and still called.
            assert session.get("/x").text == "ok"

    def test_untrusted_certificate_does_not_count_but_broken_tls_does(self, tmp_path: Path) -> None:
        openssl = require_binary("openssl")
        key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
                *("-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        def tls(exchange: Exchange, server: RawServer) -> None:
            with context.wrap_socket(exchange.conn, server_side=True) as wrapped:
                inner = Exchange(wrapped)
                inner.read_request()
                inner.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        with raw_server(tls) as server:
            url = f"https://127.0.0.1:{server.port}/x"
            session = ServiceSession(service_name="svc", circuit_breaker_threshold=2, retries=0)
            for _ in range(4):
                with pytest.raises(requests.exceptions.SSLError):
                    session.get(url)
            breaker = session.circuit_breaker
            assert breaker is not None and breaker.failure_count == 0
            assert session.get(url, verify=str(cert)).text == "ok"

        # A plain-HTTP server behind an https URL: the TLS exchange itself fails,
        # which is the downstream's doing, and counts.
        def plain_http(exchange: Exchange, server: RawServer) -> None:
            exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            time.sleep(0.5)

        with raw_server(plain_http) as plain:
            session = ServiceSession(service_name="plain", circuit_breaker_threshold=2, retries=0)
            for _ in range(2):
                with pytest.raises(requests.exceptions.SSLError):
                    session.get(f"https://127.0.0.1:{plain.port}/x")
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.state is CircuitState.OPEN


# =========================================================================== bodies not replayed


def _retrying_session(url: str) -> ServiceSession:
    retry = make_retry(3, backoff_factor=0, backoff_jitter=0)
    return ServiceSession(base_url=url, service_name="svc", retries=retry)


class TestBodiesThatCannotBeReplayed:
    def test_generator_put_answered_503_is_sent_once_and_its_503_returned(self) -> None:
        payload = [b"chunk-%d;" % i for i in range(100)]
        with raw_server(answer(503, b"busy")) as server:
            response = _retrying_session(server.url).put("/store", data=iter(payload))
        assert response.status_code == 503
        assert len(server.requests) == 1
        assert server.requests[0][1] == b"".join(payload)

    def test_pipe_body_is_sent_once(self) -> None:
        read_end, write_end = os.pipe()
        os.write(write_end, b"x" * 1000)
        os.close(write_end)
        with raw_server(answer(503, b"busy")) as server, open(read_end, "rb") as pipe:
            response = _retrying_session(server.url).put("/store", data=pipe)
        assert response.status_code == 503
        assert [body for _, body in server.requests] == [b"x" * 1000]

    def test_bytes_and_seekable_files_are_retried_whole(self) -> None:
        with raw_server(answer(503, b"busy")) as server:
            session = _retrying_session(server.url)
            session.put("/store", data=b"bytes-body")
            session.put("/store", data=io.BytesIO(b"file-body"))
        bodies = [body for _, body in server.requests]
        assert bodies == [b"bytes-body"] * 4 + [b"file-body"] * 4


# =========================================================================== bounded error bodies


_GIB = 1024**3


def _endless(status: int, *, content_type: str, encoding: str | None = None) -> Script:
    """A script answering with a 1 GiB body announced by Content-Length, made lazily."""
    block = b"0" * 65536 if encoding is None else _gzip_bomb()

    def script(exchange: Exchange, server: RawServer) -> None:
        head_in, body_in = exchange.read_request()
        server.record(head_in, body_in)
        length = _GIB if encoding is None else len(block)
        head = (
            f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n"
            + ("" if encoding is None else f"Content-Encoding: {encoding}\r\n")
            + "\r\n"
        )
        if not exchange.send(head.encode()):
            return
        if encoding is not None:
            exchange.send(block)
            return
        sent = 0
        while sent < _GIB and exchange.send(block):
            sent += len(block)

    return script


_bomb: list[bytes] = []


def _gzip_bomb() -> bytes:
    """1 GiB of zeros, gzipped (about 1 MB), made once."""
    if not _bomb:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = bytes(1024 * 1024)
        parts = [compressor.compress(zeros) for _ in range(1024)]
        parts.append(compressor.flush())
        _bomb.append(b"".join(parts))
    return _bomb[0]


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from gennet_sync.http_client import ServiceSession
    from gennet_sync.exceptions import GenNetException

    def peak_kib():
        # VmHWM: this program's own peak RSS.  Not ru_maxrss, which a child keeps
        # from the (large) pytest process it was forked from, across exec.
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    url = sys.argv[1]
    session = ServiceSession(base_url=url, service_name="svc", raise_errors=True,
                             retries=int(sys.argv[2]), timeout=(5, 30), total_timeout=120)
    baseline = peak_kib()
    start = time.monotonic()
    try:
        session.get("/huge")
    except GenNetException as error:
        outcome = type(error).__name__ + " " + str(error.status_code)
    else:
        outcome = "no error"
    elapsed = time.monotonic() - start
    peak = peak_kib()
    print(json.dumps({"outcome": outcome, "grew_kib": peak - baseline, "seconds": elapsed}))
    """
)


_CONTROL_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import requests

    def peak_kib():
        # VmHWM: this program's own peak RSS.  Not ru_maxrss, which a child keeps
        # from the (large) pytest process it was forked from, across exec.
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    baseline = peak_kib()
    start = time.monotonic()
    response = requests.get(sys.argv[1], stream=True, timeout=30)
    body = response.raw.read(300 * 1024 * 1024)
    peak = peak_kib()
    outcome = f"read {len(body)}"
    print(json.dumps({"outcome": outcome, "grew_kib": peak - baseline,
                      "seconds": time.monotonic() - start}))
    """
)


def _measure_child(url: str, retries: int = 0, *, child: str = _CHILD) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", child, url, str(retries)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    print(f"\n{url}: {result}")  # the figures, for the record (pytest -s)
    return result


class TestErrorBodiesAreBounded:
    """Peak RSS of a child process calling with raise_errors and no streaming."""

    def test_the_measurement_sees_a_body_read_into_memory(self) -> None:
        # The control: 300 MiB of the same gigabyte, read by plain requests.
        with raw_server(_endless(500, content_type="application/json")) as server:
            result = _measure_child(server.url, child=_CONTROL_CHILD)
        assert result["outcome"] == f"read {300 * 1024 * 1024}"
        assert result["grew_kib"] > 100 * 1024  # the bound the tests below hold

    def test_a_gigabyte_500_costs_a_few_megabytes(self) -> None:
        with raw_server(_endless(500, content_type="application/json")) as server:
            result = _measure_child(server.url)
        assert result["outcome"] == "InternalServerError 500"
        assert result["grew_kib"] < 100 * 1024
        assert result["seconds"] < 60  # it does not read the gigabyte

    def test_a_gzip_bomb_costs_a_few_megabytes(self) -> None:
        bomb = _endless(500, content_type="application/json", encoding="gzip")
        with raw_server(bomb) as server:
            result = _measure_child(server.url)
        assert result["outcome"] == "InternalServerError 500"
        assert result["grew_kib"] < 100 * 1024
        assert result["seconds"] < 60

    def test_a_retried_gigabyte_503_is_not_drained(self) -> None:
        with raw_server(_endless(503, content_type="text/plain")) as server:
            result = _measure_child(server.url, retries=2)
            assert len(server.requests) == 3
        assert result["outcome"] == "ServiceUnavailableError 503"
        assert result["grew_kib"] < 100 * 1024
        assert result["seconds"] < 60

    def test_a_successful_body_is_read_as_requests_reads_it(self) -> None:
        body = b"payload " * 100_000
        with raw_server(answer(200, body, Content_Type="text/plain")) as server:
            session = ServiceSession(base_url=server.url, service_name="svc", raise_errors=True)
            response = session.get("/x")
            plain = requests.get(f"{server.url}/x", timeout=5)
        assert response.content == plain.content == body
        assert response.raw.closed or response.raw.isclosed()  # read to the end
        # Iterating again after the body was read works as in requests.
        assert b"".join(response.iter_content(1000)) == body

    def test_a_streamed_success_is_left_to_the_caller(self) -> None:
        with raw_server(answer(200, b"abc")) as server:
            session = ServiceSession(base_url=server.url, service_name="svc", raise_errors=True)
            response = session.get("/x", stream=True)
            assert response.raw.read(3) == b"abc"


# =========================================================================== protocol failures


def _garbage_scripts() -> dict[str, tuple[Script, type[requests.RequestException]]]:
    def corrupt_gzip(exchange: Exchange, server: RawServer) -> None:
        server.record(*exchange.read_request())
        junk = b"this is not gzip at all"
        # The whole body arrives, so the client would keep the connection for
        # the next call, which this script closes: say so, or that next call
        # may meet a reset instead of this garbage (a race, not the test).
        exchange.send(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(junk), junk)
        )

    def bad_chunks(exchange: Exchange, server: RawServer) -> None:
        server.record(*exchange.read_request())
        exchange.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnope\r\n")

    def ends_early(exchange: Exchange, server: RawServer) -> None:
        server.record(*exchange.read_request())
        exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    return {
        "corrupt gzip": (corrupt_gzip, requests.exceptions.ContentDecodingError),
        "bad chunked encoding": (bad_chunks, requests.exceptions.ChunkedEncodingError),
        "body ends early": (ends_early, requests.exceptions.ChunkedEncodingError),
    }


class TestProtocolFailures:
    @pytest.mark.parametrize("case", sorted(_garbage_scripts()))
    def test_garbage_is_a_502_and_opens_the_breaker(self, case: str) -> None:
        script, theirs = _garbage_scripts()[case]
        with raw_server(script) as server:
            session = ServiceSession(
                base_url=server.url,
                service_name="svc",
                raise_errors=True,
                retries=0,
                circuit_breaker_threshold=2,
            )
            for _ in range(2):
                with pytest.raises(BadGatewayError) as caught:
                    session.get("/x")
                assert isinstance(caught.value, theirs)
                assert caught.value.status_code == 502
                assert caught.value.metadata["reason"] == "bad_response"
            sent = len(server.requests)
            with pytest.raises(CircuitBreakerError):
                session.get("/x")
            assert len(server.requests) == sent  # refused without I/O

    @pytest.mark.parametrize("case", sorted(_garbage_scripts()))
    def test_without_raise_errors_requests_error_is_raised_and_counted(self, case: str) -> None:
        script, theirs = _garbage_scripts()[case]
        with raw_server(script) as server:
            session = ServiceSession(base_url=server.url, service_name="svc", retries=0)
            with pytest.raises(theirs) as caught:
                session.get("/x")
            assert not isinstance(caught.value, GenNetException)
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.failure_count == 1

    @pytest.mark.parametrize(
        ("location", "theirs", "reason"),
        [
            ("/loop", requests.TooManyRedirects, "redirect_loop"),
            ("ftp://files.test/x", requests.exceptions.InvalidSchema, "bad_redirect"),
            ("http://:99999/x", requests.exceptions.InvalidURL, "bad_redirect"),
        ],
    )
    def test_bad_redirects_are_502_and_count(
        self, location: str, theirs: type[Exception], reason: str
    ) -> None:
        with raw_server(answer(302, Location=location)) as server:
            session = ServiceSession(base_url=server.url, service_name="svc", raise_errors=True)
            session.max_redirects = 5
            with pytest.raises(theirs) as caught:
                session.get("/start")
            assert isinstance(caught.value, BadGatewayError)
            assert caught.value.metadata["reason"] == reason
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.failure_count == 1
            # Without raise_errors: requests' own error, still counted.
            plain = ServiceSession(base_url=server.url, service_name="svc")
            plain.max_redirects = 5
            with pytest.raises(theirs) as raw:
                plain.get("/start")
            assert not isinstance(raw.value, GenNetException)
            assert session.circuit_breaker.failure_count == 2

    def test_a_body_that_stalls_is_a_504_that_is_also_requests_connection_error(self) -> None:
        def stall(exchange: Exchange, server: RawServer) -> None:
            server.record(*exchange.read_request())
            exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
            time.sleep(2)

        with raw_server(stall) as server:
            session = ServiceSession(
                base_url=server.url, service_name="svc", raise_errors=True, timeout=(1, 0.3)
            )
            # requests raises a body read that timed out as a ConnectionError.
            with pytest.raises(requests.ConnectionError) as caught:
                session.get("/x")
            assert isinstance(caught.value, GatewayTimeoutError)
            assert caught.value.metadata["reason"] == "timeout"
            assert session.circuit_breaker is not None
            assert session.circuit_breaker.failure_count == 1


# =========================================================================== Retry-After


class TestRetryAfter:
    @pytest.mark.parametrize("value", ["9" * 300, "-5", "NaN", "inf", "1e3", "99999999999"])
    def test_nonsense_is_ignored(self, value: str) -> None:
        with raw_server(answer(503, b"busy", Retry_After=value)) as server:
            session = ServiceSession(
                base_url=server.url,
                service_name="svc",
                retries=make_retry(2, backoff_factor=0, backoff_jitter=0),
                raise_errors=True,
            )
            start = time.monotonic()
            with pytest.raises(ServiceUnavailableError) as caught:
                session.get("/x")
            elapsed = time.monotonic() - start
            # Retried at once, as without a Retry-After: never waited at the 5 s cap.
            assert len(server.requests) == 3
        assert elapsed < 4
        assert caught.value.retry_after is None
        assert "Retry-After" not in caught.value.headers

    def test_above_the_cap_is_not_waited_for(self) -> None:
        with raw_server(answer(503, b"busy", Retry_After="3600")) as server:
            session = ServiceSession(base_url=server.url, service_name="svc", retries=2)
            start = time.monotonic()
            response = session.get("/x")
            assert time.monotonic() - start < 4
            assert len(server.requests) == 1
        assert response.headers["Retry-After"] == "3600"

    def test_a_sane_value_is_waited_for(self) -> None:
        with raw_server(answer(503, b"busy", Retry_After="1")) as server:
            session = ServiceSession(base_url=server.url, service_name="svc", retries=1)
            start = time.monotonic()
            session.get("/x")
            assert time.monotonic() - start >= 0.9
            assert len(server.requests) == 2


# =========================================================================== total time limit


def _trickle(where: str) -> Script:
    """A script sending one byte every 0.5 s, in the head or the body, for a minute."""

    def script(exchange: Exchange, server: RawServer) -> None:
        server.record(*exchange.read_request())
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\nX-Pad: " + b"p" * 100 + b"\r\n\r\n"
        data = head + b"b" * 200
        start = len(head) if where == "body" else 0
        if not exchange.send(data[:start]):
            return
        for index in range(start, len(data)):
            time.sleep(0.5)
            if not exchange.send(data[index : index + 1]):
                return

    return script


class TestTotalTimeLimit:
    @pytest.mark.parametrize("where", ["head", "body"])
    def test_a_trickling_server_is_cut_at_the_limit(self, where: str) -> None:
        with raw_server(_trickle(where)) as server:
            session = ServiceSession(
                base_url=server.url,
                service_name="svc",
                timeout=(2, 2),  # each byte comes well within the read timeout
                total_timeout=2,
                raise_errors=True,
            )
            start = time.monotonic()
            with pytest.raises(GatewayTimeoutError) as caught:
                session.get("/x")
            elapsed = time.monotonic() - start
            assert len(server.requests) == 1  # not retried past the limit
        assert isinstance(caught.value, requests.Timeout)
        assert caught.value.metadata["reason"] == "total_timeout"
        assert 1.5 < elapsed < 10
        assert session.circuit_breaker is not None
        assert session.circuit_breaker.failure_count == 1

    def test_without_raise_errors_it_is_a_read_timeout(self) -> None:
        with raw_server(_trickle("body")) as server:
            session = ServiceSession(base_url=server.url, service_name="svc", timeout=(2, 2))
            start = time.monotonic()
            with pytest.raises(requests.ReadTimeout) as caught:
                session.request("GET", "/x", total_timeout=1.5)
            assert time.monotonic() - start < 10
        assert not isinstance(caught.value, GenNetException)
        assert "total time limit" in str(caught.value)
        assert session.circuit_breaker is not None
        assert session.circuit_breaker.failure_count == 1

    def test_a_retry_wait_past_the_limit_is_not_started(self) -> None:
        with raw_server(answer(503, b"busy", Retry_After="4")) as server:
            session = ServiceSession(
                base_url=server.url,
                service_name="svc",
                retries=make_retry(2, retry_after_max=5),
                total_timeout=2,
            )
            start = time.monotonic()
            with pytest.raises(requests.ReadTimeout):
                session.get("/x")
            assert time.monotonic() - start < 3.5
            assert len(server.requests) == 1

    def test_a_fast_call_is_not_affected_and_its_connection_is_reused(self) -> None:
        with raw_server(answer(200, b"ok")) as server:
            session = ServiceSession(base_url=server.url, service_name="svc", total_timeout=0.5)
            for _ in range(3):
                assert session.get("/x").text == "ok"
            time.sleep(0.7)  # past every call's limit: nothing cut the pooled connection
            assert session.get("/x").text == "ok"
            assert server.connections == 1


def test_internal_server_error_still_maps_without_envelope() -> None:
    with raw_server(answer(500, b"boom", Content_Type="text/plain")) as server:
        session = ServiceSession(base_url=server.url, service_name="svc", raise_errors=True)
        with pytest.raises(InternalServerError):
            session.get("/x")

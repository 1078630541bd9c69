"""TLS in the loop: asyncio's `sslproto` over muxio's stream transport, on every poller.

The server runs on a muxio loop in a background thread; the client is a
TLS engine over `ssl.MemoryBIO` on a plain socket, driven from the test
thread, so the test decides byte by byte what goes on the wire (a close_notify
then a FIN, a peer that never reads, garbage in place of a ClientHello).
The certificates come from a throwaway CA made by `trustme`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import trustme
from helpers import ServerThread, running_server, sees_close

from muxio.services.upper import UpperEcho

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0


class BioClient:
    """A TLS client over a memory BIO: every record it sends is the test's choice."""

    def __init__(self, srv: ServerThread, ctx: ssl.SSLContext, *, handshake: bool = True):
        self.sock = srv.connect()
        self.sock.setblocking(False)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.pending = bytearray()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.eof = False
        self.close_notify = False
        if handshake:
            self.handshake()

    def close(self) -> None:
        self.sel.close()
        self.sock.close()

    def _flush_some(self) -> None:
        self.pending += self.outgoing.read()
        while self.pending:
            try:
                sent = self.sock.send(self.pending)
            except BlockingIOError:
                return
            del self.pending[:sent]

    def _pump(self, timeout: float) -> bool:
        """Move raw bytes both ways once; False if nothing could move within `timeout`."""
        self._flush_some()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.pending else 0)
        self.sel.modify(self.sock, events)
        ready = self.sel.select(timeout)
        if not ready:
            return False
        for _key, mask in ready:
            if mask & selectors.EVENT_READ:
                try:
                    data = self.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                if data:
                    self.incoming.write(data)
                else:
                    self.eof = True
                    self.incoming.write_eof()
                    self.sel.modify(self.sock, selectors.EVENT_WRITE)
            if mask & selectors.EVENT_WRITE:
                self._flush_some()
        return True

    def _until(self, done: Any, what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(what)
            if self.eof and not self.pending:
                if done():
                    return
                raise ConnectionError(f"EOF while waiting for {what}")
            self._pump(min(remaining, 1.0))

    def handshake(self) -> None:
        def done() -> bool:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                return False
            self._flush_some()
            return True

        self._until(done, "the handshake")
        self._until(lambda: not self.pending, "the handshake's last flight")

    def send(self, data: bytes) -> None:
        """Encrypt all of `data` now; it reaches the wire as the peer lets it."""
        view = memoryview(data)
        for i in range(0, len(view), 16384):
            self.tls.write(view[i : i + 16384])
        self._flush_some()

    def read_available(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                return bytes(out)
            except ssl.SSLEOFError:  # a TCP EOF without close_notify
                return bytes(out)
            except ssl.SSLZeroReturnError:  # their close_notify, after ours
                self.close_notify = True
                return bytes(out)
            if not chunk:  # their close_notify first
                self.close_notify = True
                return bytes(out)
            out += chunk

    def recv_exactly(self, n: int, timeout: float = WAIT) -> bytes:
        got = bytearray()

        def done() -> bool:
            got.extend(self.read_available())
            return len(got) >= n

        self._until(done, f"{n} bytes (got {len(got)})", timeout)
        return bytes(got)

    def send_until_blocked(self, total: int, stall: float = 1.0) -> int:
        """Send without reading until the wire stays blocked for `stall` s; bytes encrypted."""
        chunk = b"x" * 65536
        encrypted = 0
        deadline = time.monotonic() + WAIT
        while encrypted < total and time.monotonic() < deadline:
            if not self.pending:
                self.send(chunk)
                encrypted += len(chunk)
                continue
            self.sel.modify(self.sock, selectors.EVENT_WRITE)
            if not self.sel.select(stall):
                break
            self._flush_some()
        return encrypted

    def unwrap_and_shut(self) -> None:
        """Our close_notify, then a FIN: the TLS and the TCP half-close."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self._until(lambda: not (self.pending or self.outgoing.pending), "close_notify out")
        self.sock.shutdown(socket.SHUT_WR)

    def read_until_eof(self, timeout: float = WAIT) -> bytes:
        got = bytearray()

        def done() -> bool:
            got.extend(self.read_available())
            return self.eof or self.close_notify

        self._until(done, "EOF", timeout)
        got.extend(self.read_available())
        return bytes(got)


class Recorder(UpperEcho):
    """The uppercase echo that keeps what the TLS transport tells about itself."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.seen.append(
            {name: transport.get_extra_info(name) for name in ("ssl_object", "peercert", "cipher")}
        )


def _payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@contextlib.contextmanager
def tls_server(ctx: ssl.SSLContext, **kwargs: Any) -> Iterator[ServerThread]:
    with running_server(kwargs.pop("factory", UpperEcho), ssl=ctx, **kwargs) as srv:
        yield srv


def test_echo_is_byte_exact_over_tls_on_every_poller(
    poller: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with tls_server(server_ctx, poller=poller) as srv:
        client = BioClient(srv, client_ctx)
        try:
            for size in (1, 100, 16384, 16385, 300_000):
                data = _payload(size, size)
                client.send(data)
                assert client.recv_exactly(size) == data.upper()
        finally:
            client.close()


def test_ten_mib_round_trip_in_random_chunks(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    data = _payload(10 * 1024 * 1024, 8)
    rng = random.Random(1)
    with tls_server(server_ctx) as srv:
        client = BioClient(srv, client_ctx)
        try:
            got = bytearray()
            pos = 0
            while pos < len(data):
                step = rng.choice((1, 7, 1000, 16383, 16385, 65536, 300_000))
                client.send(data[pos : pos + step])
                pos += step
                client._pump(0)
                got += client.read_available()
            got += client.recv_exactly(len(data) - len(got))
            assert got == data.upper()
        finally:
            client.close()


def test_half_close_gets_every_reply_then_close_notify(
    poller: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    data = _payload(1_000_000, 3)
    with tls_server(server_ctx, poller=poller) as srv:
        client = BioClient(srv, client_ctx)
        try:
            client.send(data)
            client.unwrap_and_shut()
            assert client.read_until_eof() == data.upper()
            if sys.version_info >= (3, 11):
                # 3.10's older sslproto answers a close_notify + FIN with a bare FIN
                assert client.close_notify, "the server closed without a close_notify"
            assert srv.wait_for(lambda: not srv.server.connections)
        finally:
            client.close()


def _server_buffers(srv: ServerThread) -> dict[str, int]:
    """Bytes the server holds for its one connection, layer by layer."""
    (raw,) = srv.server.connections
    tls = raw.get_protocol()
    app = tls._app_transport
    incoming = getattr(tls, "_incoming", None)  # 3.10's sslproto reads only when asked
    return {
        "app_write": app.get_write_buffer_size(),
        "tls_incoming": incoming.pending if incoming is not None else 0,
        "raw_write": raw.get_write_buffer_size(),
        "raw_paused_reading": int(not raw.is_reading()),
    }


def test_client_that_never_reads_leaves_server_memory_bounded(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with tls_server(server_ctx) as srv:
        client = BioClient(srv, client_ctx)
        try:
            sent = client.send_until_blocked(64 * 1024 * 1024)
            assert sent < 64 * 1024 * 1024, "the server took everything without back-pressure"
            assert srv.wait_for(lambda: _server_buffers(srv)["raw_paused_reading"] == 1)
            held = srv.call(_server_buffers, srv)
            # sslproto: write high water 512 KiB + one reply (one read, up to 256 KiB) over it;
            # incoming high water 256 KiB + one recv_into sslproto's 256 KiB buffer (a busy
            # machine lets the kernel queue that much) + a record; the raw transport: 64 KiB
            # + one write.
            assert held["app_write"] <= 512 * 1024 + 256 * 1024, held
            assert held["tls_incoming"] <= 256 * 1024 + 256 * 1024 + 16384, held
            assert held["raw_write"] <= 64 * 1024 + 256 * 1024 + 1024, held
            logging.getLogger("muxio.test").info("never-reading client: sent %d, held %s",
                                                 sent, held)
            assert client.recv_exactly(sent, timeout=60) == b"X" * sent
        finally:
            client.close()


def test_silent_client_is_closed_after_the_handshake_timeout(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="muxio")
    with tls_server(server_ctx, ssl_handshake_timeout=0.5) as srv:
        silent = srv.connect()
        try:
            assert sees_close(silent, timeout=10)
        finally:
            silent.close()
        assert srv.wait_for(lambda: srv.server.stats()["tls_handshakes_failed"] == 1)
        client = BioClient(srv, client_ctx)
        try:
            client.send(b"still serving")
            assert client.recv_exactly(13) == b"STILL SERVING"
        finally:
            client.close()
    failures = [r for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    assert "0.5" in failures[0].getMessage()


def test_garbage_instead_of_a_client_hello_is_closed_and_others_go_on(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="muxio")
    with tls_server(server_ctx) as srv:
        other = BioClient(srv, client_ctx)
        garbage = srv.connect()
        try:
            garbage.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sees_close(garbage, timeout=10)
            other.send(b"after garbage")
            assert other.recv_exactly(13) == b"AFTER GARBAGE"
            assert srv.wait_for(lambda: srv.server.stats()["tls_handshakes_failed"] == 1)
        finally:
            garbage.close()
            other.close()
    failures = [r for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]


@pytest.fixture(scope="module")
def mutual_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def test_client_certificate_required_and_shown_to_the_protocol(
    ca: trustme.CA, mutual_ctx: ssl.SSLContext
) -> None:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ca.issue_cert("client@example.test").configure_cert(ctx)
    Recorder.seen = []
    with tls_server(mutual_ctx, factory=Recorder) as srv:
        client = BioClient(srv, ctx)
        try:
            client.send(b"hello")
            assert client.recv_exactly(5) == b"HELLO"
        finally:
            client.close()
    (info,) = Recorder.seen
    assert isinstance(info["ssl_object"], ssl.SSLObject)
    assert info["ssl_object"].version() in ("TLSv1.2", "TLSv1.3")
    assert info["cipher"][1] in ("TLSv1.2", "TLSv1.3")
    subject_alt = dict(info["peercert"]["subjectAltName"])
    assert subject_alt.get("email") == "client@example.test" or "client@example.test" in str(
        info["peercert"]
    )


def test_client_without_certificate_is_refused(
    mutual_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with tls_server(mutual_ctx, factory=Recorder) as srv:
        Recorder.seen = []
        client = BioClient(srv, client_ctx, handshake=False)
        try:
            # TLS 1.3: the client's handshake ends first; the refusal arrives as an alert
            with pytest.raises((ssl.SSLError, ConnectionError)):
                client.handshake()
                client.send(b"hello")
                client.recv_exactly(5)
        finally:
            client.close()
        assert srv.wait_for(lambda: srv.server.stats()["tls_handshakes_failed"] == 1)
        assert Recorder.seen == [], "the protocol saw a connection that had no certificate"


def test_graceful_shutdown_flushes_buffered_tls_replies_then_sends_close_notify(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with tls_server(server_ctx) as srv:
        client = BioClient(srv, client_ctx)
        try:
            client.send_until_blocked(64 * 1024 * 1024)
            assert srv.wait_for(lambda: _server_buffers(srv)["raw_paused_reading"] == 1)
            held = srv.call(_server_buffers, srv)
            closed = threading.Event()
            srv.call(srv.server.shutdown, 20.0, closed.set)
            got = client.read_until_eof(timeout=60)
            assert client.close_notify, "the shutdown ended without a close_notify"
            assert got == b"X" * len(got)
            assert len(got) >= held["app_write"] + held["raw_write"]
            assert closed.wait(10)
            assert not srv.server.drain_cut_short
        finally:
            client.close()


def test_eof_without_close_notify_still_gets_every_reply(
    poller: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """A FIN with no close_notify first: asyncio 3.11+ flushes, answers, then closes."""
    data = _payload(300_000, 5)
    with tls_server(server_ctx, poller=poller) as srv:
        client = BioClient(srv, client_ctx)
        try:
            client.send(data)
            client._until(lambda: not client.pending, "our data out")
            client.sock.shutdown(socket.SHUT_WR)
            assert client.read_until_eof() == data.upper()
            assert srv.wait_for(lambda: not srv.server.connections)
        finally:
            client.close()


def test_tls_over_a_unix_socket(
    tmp_path: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    from muxio import bind_unix

    path = str(tmp_path / "tls.sock")
    with tls_server(server_ctx, sockets=bind_unix(path)) as srv:
        client = BioClient(srv, client_ctx)
        try:
            client.send(b"over unix")
            assert client.recv_exactly(9) == b"OVER UNIX"
        finally:
            client.close()

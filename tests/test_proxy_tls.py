"""A PROXY header before TLS: the gate reads the raw stream, TLS starts after it (issue 19 item 5).

What HAProxy's `send-proxy-v2` in front of TLS passthrough sends: the header
in clear, then the client's own ClientHello.  The gate must come first, and
whatever followed the header in the same read must reach the TLS layer.
Checked in-process (header and ClientHello in separate sends and in one),
with `muxio serve --tls-cert … --proxy-protocol`, and behind a real HAProxy.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trustme
from helpers import ServeProcess, ServerThread, free_port, recv_exactly, sees_close
from test_haproxy import HAPROXY, HAProxy

from muxio.proxy_protocol import ProxyProtocolGate, v1_header, v2_header

pytestmark = pytest.mark.timeout(60)

CLIENT = ("198.51.100.23", 61000)
BALANCED = ("192.0.2.1", 443)


class TLSReporter(asyncio.Protocol):
    """Writes one line with its peer and TLS version, then echoes in capitals."""

    made: ClassVar[list[dict[str, Any]]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        info = {
            "peername": transport.get_extra_info("peername"),
            "proxy_source": transport.get_extra_info("proxy_source"),
            "tls": ssl_object.version() if ssl_object is not None else None,
        }
        TLSReporter.made.append(info)
        transport.write(f"{info['peername']!r}|{info['tls']}\n".encode())

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


@pytest.fixture
def gated_tls(server_ctx: ssl.SSLContext) -> Iterator[ServerThread]:
    TLSReporter.made = []
    srv = ServerThread(ProxyProtocolGate.wrap(TLSReporter, timeout=2.0), ssl=server_ctx).start()
    try:
        yield srv
    finally:
        srv.stop()


def _read_line(tls: Any) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = tls.recv(1)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data.decode()


@pytest.mark.parametrize(
    "header", [v2_header(CLIENT, BALANCED), v1_header(CLIENT, BALANCED)], ids=["v2", "v1"]
)
def test_tls_after_a_proxy_header_serves_the_client_with_its_real_address(
    gated_tls: ServerThread, client_ctx: ssl.SSLContext, header: bytes
) -> None:
    raw = gated_tls.connect()
    raw.sendall(header)
    with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        line = _read_line(tls)
        assert line.startswith(f"{CLIENT!r}|TLSv1."), line
        tls.sendall(b"through the balancer")
        assert recv_exactly(tls, 20) == b"THROUGH THE BALANCER"
    (info,) = TLSReporter.made
    assert info["peername"] == CLIENT
    assert info["proxy_source"][0] == "127.0.0.1"


class BioClient:
    """A TLS client over memory BIOs, so its ClientHello can share a send with the header."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def client_hello(self) -> bytes:
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def _pump(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())
        data = self.sock.recv(65536)
        assert data, "the server closed the connection"
        self.incoming.write(data)

    def finish_handshake(self) -> None:
        for _ in range(50):
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._pump()
            else:
                self.sock.sendall(self.outgoing.read())
                return
        raise AssertionError("the handshake did not finish in 50 reads")

    def line_and_echo(self, data: bytes) -> bytes:
        """The reporter's first line, then the echo of `data`."""
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())
        got = b""
        for _ in range(50):
            try:
                got += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._pump()
            if b"\n" in got and len(got.split(b"\n", 1)[1]) >= len(data):
                break
        return got


def test_client_hello_in_the_same_segment_as_the_header_reaches_tls(
    gated_tls: ServerThread, client_ctx: ssl.SSLContext
) -> None:
    with gated_tls.connect() as raw:
        client = BioClient(raw, client_ctx)
        raw.sendall(v2_header(CLIENT, BALANCED) + client.client_hello())
        client.finish_handshake()
        got = client.line_and_echo(b"x")
        assert got.startswith(f"{CLIENT!r}|TLSv1.".encode()) and got.endswith(b"\nX"), got
    assert TLSReporter.made[0]["peername"] == CLIENT


def test_tls_without_the_header_is_refused_before_any_handshake(
    gated_tls: ServerThread, client_ctx: ssl.SSLContext
) -> None:
    with gated_tls.connect() as raw:
        client = BioClient(raw, client_ctx)
        raw.sendall(client.client_hello())
        assert sees_close(raw)
    assert TLSReporter.made == []
    assert gated_tls.call(lambda: gated_tls.server.stats()["tls_handshakes_failed"]) == 0


# -- muxio serve, directly and behind HAProxy ---------------------------------------------


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("proxy-tls")
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = root / "cert.pem", root / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    return str(cert), str(key)


@pytest.fixture
def tls_proxy_serve(cert_files: tuple[str, str]) -> Iterator[ServeProcess]:
    cert, key = cert_files
    sp = ServeProcess(
        "--port", "0", "--tls-cert", cert, "--tls-key", key, "--proxy-protocol",
        "--log-level", "debug",
    )  # fmt: skip
    try:
        sp.wait_listening()
        yield sp
    finally:
        sp.kill()


def _wait_log(sp: ServeProcess, pattern: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(re.search(pattern, line) for line in sp.lines):
        assert time.monotonic() < deadline, sp.lines[-10:]
        time.sleep(0.02)


def test_serve_with_tls_and_proxy_protocol_takes_the_header_before_the_handshake(
    tls_proxy_serve: ServeProcess, client_ctx: ssl.SSLContext
) -> None:
    raw = tls_proxy_serve.connect()
    raw.sendall(v2_header(CLIENT, BALANCED))
    with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"hello")
        assert recv_exactly(tls, 5) == b"HELLO"
    _wait_log(tls_proxy_serve, r"connection from 198\.51\.100\.23:61000 via 127\.0\.0\.1:\d+")
    assert not any("WRONG_VERSION_NUMBER" in line for line in tls_proxy_serve.lines)


HAPROXY_TLS_PASSTHROUGH = """
global
    maxconn 200

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend front
    bind 127.0.0.1:{port}
    default_backend muxio

backend muxio
    # health checks send the header too, then a whole TLS handshake of their own
    server m1 127.0.0.1:{muxio_port} send-proxy-v2 check check-ssl verify none inter 200ms
"""


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
def test_haproxy_send_proxy_v2_in_front_of_tls_passthrough(
    tls_proxy_serve: ServeProcess, client_ctx: ssl.SSLContext, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_TLS_PASSTHROUGH.format(port=port, muxio_port=tls_proxy_serve.port))
    proxy = HAProxy(config)
    try:
        deadline = time.monotonic() + 15
        while True:  # until HAProxy listens: a whole TLS round trip, so no handshake is cut
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                assert proxy.proc.poll() is None, proxy.lines
                assert time.monotonic() < deadline, proxy.lines
                time.sleep(0.05)
                continue
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"up")
                assert recv_exactly(tls, 2) == b"UP"
            break
        # a client with an address of its own: muxio must log it, not HAProxy's
        with socket.socket() as c:
            c.bind(("127.0.0.2", 0))
            c.settimeout(10)
            c.connect(("127.0.0.1", port))
            client_port = c.getsockname()[1]
            with client_ctx.wrap_socket(c, server_hostname="localhost") as tls:
                data = bytes(range(256)) * 4096  # 1 MiB, every byte value
                tls.sendall(data)
                assert recv_exactly(tls, len(data)) == data.upper()
        _wait_log(
            tls_proxy_serve,
            rf"connection from 127\.0\.0\.2:{client_port} via 127\.0\.0\.1:\d+ \(PROXY v2\)",
        )
        checks = r"PROXY LOCAL connection from 127\.0\.0\.1:\d+ \(a health check\)"
        deadline = time.monotonic() + 15
        while sum(bool(re.search(checks, line)) for line in tls_proxy_serve.lines) < 3:
            assert time.monotonic() < deadline, tls_proxy_serve.lines[-10:]
            time.sleep(0.05)
        assert not any("TLS handshake" in line for line in tls_proxy_serve.lines)
        assert not any("is DOWN" in line for line in proxy.lines), proxy.lines
    finally:
        proxy.stop()


@pytest.mark.parametrize("loop_kind", ["asyncio", "muxio"])
def test_gate_with_its_own_tls_on_any_asyncio_loop(
    loop_kind: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """`wrap(ssl=...)`: where create_server's own TLS would sit in front of the gate."""
    import muxio

    TLSReporter.made = []

    async def main() -> tuple[str, bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            ProxyProtocolGate.wrap(TLSReporter, ssl=server_ctx), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            raw.sendall(v2_header(CLIENT, BALANCED))
            raw.setblocking(False)
            reader, writer = await asyncio.open_connection(
                sock=raw, ssl=client_ctx, server_hostname="localhost"
            )
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.write(b"data")
            echoed = await asyncio.wait_for(reader.readexactly(4), 10)
            writer.close()
            return line.decode(), echoed
        finally:
            server.close()
            await server.wait_closed()

    factory = asyncio.new_event_loop if loop_kind == "asyncio" else muxio.new_event_loop
    loop = factory()
    try:
        line, echoed = loop.run_until_complete(main())
    finally:
        loop.close()
    assert line.startswith(f"{CLIENT!r}|TLSv1."), line
    assert echoed == b"DATA"

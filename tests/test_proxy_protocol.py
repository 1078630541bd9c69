"""PROXY protocol v1/v2: real sockets through the gate, the CLI option, and a fuzzed parser."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any, ClassVar

import pytest
from helpers import ServerThread, recv_exactly, round_trip, sees_close, serve_process
from hypothesis import given, settings
from hypothesis import strategies as st

from muxio.proxy_protocol import (
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    ProxyProtocolGate,
    parse_header,
    v1_header,
    v2_header,
)


class PeerReporter(asyncio.Protocol):
    """Writes one line naming its peer and proxy source, then echoes in capitals."""

    made: ClassVar[list[dict[str, Any]]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        info = {
            "peername": transport.get_extra_info("peername"),
            "proxy_source": transport.get_extra_info("proxy_source"),
            "header": transport.get_extra_info("proxy_header"),
        }
        PeerReporter.made.append(info)
        transport.write(f"{info['peername']!r}|{info['proxy_source']!r}\n".encode())

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


class BufferedUpper(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(7)  # smaller than what follows the header: several get_buffer calls

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.buf[:nbytes]).upper())


@pytest.fixture
def gated() -> Any:
    PeerReporter.made = []
    srv = ServerThread(ProxyProtocolGate.wrap(PeerReporter, timeout=0.5)).start()
    try:
        yield srv
    finally:
        srv.stop()


def read_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = recv_exactly(sock, 1)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data.decode()


def test_v1_header_sets_peername_and_keeps_the_transport_address(gated: ServerThread) -> None:
    with gated.connect() as s:
        s.sendall(v1_header(("203.0.113.7", 40000), ("198.51.100.1", 443)) + b"hello")
        line = read_line(s)
        assert line == f"('203.0.113.7', 40000)|{s.getsockname()!r}\n"
        assert recv_exactly(s, 5) == b"HELLO"


def test_v2_ipv6_header_with_tlvs_sets_peername(gated: ServerThread) -> None:
    header = v2_header(("2001:db8::1", 51000), ("2001:db8::2", 443), tlvs=[(0x05, b"id-1")])
    with gated.connect() as s:
        s.sendall(header + b"abc")
        assert read_line(s) == f"('2001:db8::1', 51000, 0, 0)|{s.getsockname()!r}\n"
        assert recv_exactly(s, 3) == b"ABC"
    assert PeerReporter.made[0]["header"].tlvs == [(0x05, b"id-1")]


@pytest.mark.parametrize("version", [1, 2])
def test_header_split_across_reads_is_reassembled(gated: ServerThread, version: int) -> None:
    header = (
        v1_header(("192.0.2.9", 1234), ("192.0.2.10", 80))
        if version == 1
        else v2_header(("192.0.2.9", 1234), ("192.0.2.10", 80))
    )
    with gated.connect() as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = 0
        for i in range(0, len(header), 5):
            s.sendall(header[i : i + 5])
            sent += len(header[i : i + 5])
            if sent < len(header):
                # each piece is read on its own before the next is sent
                assert gated.wait_for(
                    lambda n=sent: sum(t.bytes_in for t in gated.server.connections) >= n
                )
                assert PeerReporter.made == []
        s.sendall(b"xyz")
        assert read_line(s).startswith("('192.0.2.9', 1234)|")
        assert recv_exactly(s, 3) == b"XYZ"


def test_v2_local_command_keeps_the_real_peer(gated: ServerThread) -> None:
    with gated.connect() as s:
        s.sendall(v2_header() + b"ok")
        assert read_line(s) == f"{s.getsockname()!r}|{s.getsockname()!r}\n"
        assert recv_exactly(s, 2) == b"OK"
    assert PeerReporter.made[0]["header"].command == "LOCAL"


def test_v1_unknown_keeps_the_real_peer(gated: ServerThread) -> None:
    with gated.connect() as s:
        s.sendall(b"PROXY UNKNOWN\r\n")
        assert read_line(s) == f"{s.getsockname()!r}|{s.getsockname()!r}\n"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "neither v1 nor v2"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\nsecret", "invalid port"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 80\r\nsecret", "not a TCP4 address"),
        (b"PROXY TCP4 " + b"1" * V1_MAX, "longer than"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\0" * 64, "over the"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\0" * 12, "version 3"),
    ],
)
def test_bad_header_closes_with_one_log_line_and_passes_nothing_on(
    gated: ServerThread, caplog: pytest.LogCaptureFixture, payload: bytes, reason: str
) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")
    with gated.connect() as s:
        s.sendall(payload)
        s.settimeout(5)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        assert got == b""
    assert PeerReporter.made == []
    lines = [r.getMessage() for r in caplog.records if "closed a connection" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0], lines


def test_too_slow_header_is_closed_at_the_timeout(
    gated: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")
    with gated.connect() as s:
        s.sendall(b"PROXY TCP4 1.2.3.4")
        assert sees_close(s, timeout=10)
    assert PeerReporter.made == []
    assert any("within 0.5 s" in r.getMessage() for r in caplog.records)


def test_peer_closing_before_the_header_is_logged_and_never_served(
    gated: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")
    with gated.connect() as s:
        s.shutdown(socket.SHUT_WR)
        assert sees_close(s)
    assert gated.wait_for(lambda: not gated.server.connections)
    assert PeerReporter.made == []
    assert any("no PROXY protocol header" in r.getMessage() for r in caplog.records)


def test_bytes_after_the_header_reach_a_buffered_protocol_in_full() -> None:
    srv = ServerThread(ProxyProtocolGate.wrap(BufferedUpper)).start()
    try:
        with srv.connect() as s:
            s.sendall(v1_header(("10.0.0.1", 1), ("10.0.0.2", 2)) + b"abcdefghijklmnopqrstuvwxyz")
            assert recv_exactly(s, 26) == b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            assert round_trip(s, b"more") == b"MORE"
    finally:
        srv.stop()


def test_serve_proxy_protocol_logs_the_real_client_and_refuses_bad_headers() -> None:
    with serve_process("--port", "0", "--proxy-protocol", "--log-level", "debug") as sp:
        with sp.connect() as s:
            s.sendall(v2_header(("198.51.100.23", 61000), ("192.0.2.1", 8080)) + b"hi")
            assert recv_exactly(s, 2) == b"HI"
        sp.wait_line(r"connection from 198\.51\.100\.23:61000 via 127\.0\.0\.1:\d+ \(PROXY v2\)")
        with sp.connect() as s:
            s.sendall(b"hi\r\n")
            assert sees_close(s)
        sp.wait_line(r"WARNING closed a connection from 127\.0\.0\.1:\d+: no PROXY protocol")


# -- the parser, fuzzed --------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parser_on_any_bytes_waits_parses_or_refuses(data: bytes) -> None:
    try:
        header = parse_header(data)
    except ProxyProtocolError:
        return
    if header is not None:
        assert isinstance(header, ProxyHeader)
        assert 0 < header.length <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120).map(lambda b: V2_SIGNATURE + b))
def test_parser_on_bytes_after_the_v2_signature(data: bytes) -> None:
    try:
        header = parse_header(data)
    except ProxyProtocolError:
        return
    if header is not None:
        assert header.version == 2 and header.length <= len(data)


ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
ports = st.integers(0, 65535)
tlv = st.tuples(st.integers(0, 255), st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    st.tuples(ports, ports),
    st.sampled_from([1, 2]),
    st.lists(tlv, max_size=4),
    st.binary(max_size=50),
    st.data(),
)
def test_parser_round_trips_every_valid_header_and_waits_on_every_prefix(
    addrs: tuple[str, str],
    port_pair: tuple[int, int],
    version: int,
    tlvs: list[tuple[int, bytes]],
    trailing: bytes,
    data: st.DataObject,
) -> None:
    src, dst = (addrs[0], port_pair[0]), (addrs[1], port_pair[1])
    raw = v1_header(src, dst) if version == 1 else v2_header(src, dst, tlvs=tlvs)
    cut = data.draw(st.integers(0, len(raw) - 1))
    assert parse_header(raw[:cut]) is None
    header = parse_header(raw + trailing)
    assert header is not None
    assert header.length == len(raw)
    extra = (0, 0) if ":" in src[0] else ()
    assert header.source == (src[0], src[1], *extra)
    assert header.destination == (dst[0], dst[1], *extra)
    if version == 2:
        assert header.tlvs == tlvs


@pytest.mark.parametrize("loop_kind", ["asyncio", "muxio"])
def test_gate_works_with_create_server_on_any_asyncio_loop(loop_kind: str) -> None:
    import muxio

    async def main() -> tuple[str, bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            ProxyProtocolGate.wrap(PeerReporter), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(v1_header(("192.0.2.77", 4242), ("192.0.2.1", port)) + b"data")
        line = await asyncio.wait_for(reader.readline(), 10)
        echoed = await asyncio.wait_for(reader.readexactly(4), 10)
        writer.close()
        server.close()
        await server.wait_closed()
        return line.decode(), echoed

    factory = asyncio.new_event_loop if loop_kind == "asyncio" else muxio.new_event_loop
    loop = factory()
    try:
        line, echoed = loop.run_until_complete(main())
    finally:
        loop.close()
    assert line.startswith("('192.0.2.77', 4242)|('127.0.0.1', ")
    assert echoed == b"DATA"


def test_slow_callback_warning_names_the_client_from_the_header() -> None:
    with serve_process(
        "--port", "0", "--proxy-protocol", "--service", "work", "--offload", "none",
        "--slow-callback-ms", "50",
    ) as sp:
        with sp.connect() as s:
            s.sendall(v1_header(("203.0.113.9", 5555), ("192.0.2.1", 80)) + b"work 300\n")
            assert recv_exactly(s, len(b"WORK 300\n")) == b"WORK 300\n"
        sp.wait_line(r"slow callback: .* by WorkService\.\w+ \(peer \('203\.0\.113\.9', 5555\)\)")


@pytest.mark.parametrize("loop_kind", ["asyncio", "muxio"])
def test_gate_arms_its_timeout_on_any_asyncio_loop(loop_kind: str) -> None:
    """asyncio's transports have no `get_loop()`: the gate must find its loop without it."""
    import muxio

    errors: list[dict[str, object]] = []

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        server = await loop.create_server(
            ProxyProtocolGate.wrap(PeerReporter, timeout=0.2), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            got = await asyncio.wait_for(reader.read(), 10)  # the gate closes a silent peer
        except ConnectionResetError:
            got = b""
        writer.close()
        server.close()
        await server.wait_closed()
        return got

    factory = asyncio.new_event_loop if loop_kind == "asyncio" else muxio.new_event_loop
    loop = factory()
    try:
        got = loop.run_until_complete(main())
    finally:
        loop.close()
    assert got == b""
    assert errors == []

"""Datagram endpoints: UDP and Unix datagram sockets with asyncio's contract.

Every test runs twice: on asyncio's stock loop, calling
`muxio.transports.datagram.create_datagram_endpoint(loop, ...)` directly, and
on muxio's loop through its `create_datagram_endpoint` method.  All sockets
are real (127.0.0.1, ::1, Unix sockets in a temporary directory); the only
stand-in is a spy on `loop.getaddrinfo` that records calls and passes them on.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import socket
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import has_ipv6_loopback

import muxio
from muxio.transports import datagram
from muxio.transports.datagram import DatagramTransport, create_datagram_endpoint

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
WAIT = 5.0
PY311 = sys.version_info >= (3, 11)
PY313 = sys.version_info >= (3, 13)




HAS_IPV6 = has_ipv6_loopback()
HAS_REUSEPORT = hasattr(socket, "SO_REUSEPORT")


@pytest.fixture(params=["asyncio", "muxio"])
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh loop of each kind, closed after the test."""
    lp: asyncio.AbstractEventLoop
    lp = muxio.new_event_loop() if request.param == "muxio" else asyncio.new_event_loop()
    try:
        yield lp
    finally:
        if not lp.is_closed():
            lp.close()


def is_muxio(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.split(".")[0] == "muxio"


async def endpoint(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], T],
    *args: Any,
    **kwargs: Any,
) -> tuple[DatagramTransport, T]:
    """The loop's own method on muxio, the module function on asyncio's loop."""
    if is_muxio(loop):
        result: Any = await loop.create_datagram_endpoint(factory, *args, **kwargs)
    else:
        result = await create_datagram_endpoint(loop, factory, *args, **kwargs)
    transport, protocol = result
    assert isinstance(transport, DatagramTransport)
    return transport, protocol


def run(loop: asyncio.AbstractEventLoop, coro: Awaitable[T]) -> T:
    return loop.run_until_complete(asyncio.wait_for(coro, WAIT))


async def within(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, WAIT)


class Recorder(asyncio.DatagramProtocol):
    """Records every callback; create it inside the running loop."""

    def __init__(self, echo: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.echo = echo
        self.transport: DatagramTransport | None = None
        self.made = loop.create_future()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.datagrams: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.paused = asyncio.Event()
        self.resumed = asyncio.Event()
        self.calls: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, DatagramTransport)
        self.calls.append("connection_made")
        self.transport = transport
        self.made.set_result(None)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.calls.append("datagram_received")
        self.datagrams.put_nowait((data, addr))
        if self.echo:
            assert self.transport is not None
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.calls.append("error_received")
        self.errors.put_nowait(exc)

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")
        self.paused.set()
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")
        self.resumed.set()
        self.paused.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("connection_lost")
        self.lost.set_result(exc)


class Sink:
    """A plain datagram socket the test drains only when it chooses to."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.loop = loop
        self.sock = sock
        self.received: list[bytes] = []
        self._want = 0
        self._enough: asyncio.Future[None] | None = None

    def read_available(self) -> None:
        while True:
            try:
                self.received.append(self.sock.recv(65536))
            except BlockingIOError:
                break
        enough = self._enough
        if enough is not None and not enough.done() and len(self.received) >= self._want:
            enough.set_result(None)

    async def drain_until(self, count: int) -> list[bytes]:
        """Read as datagrams arrive until `count` have come."""
        self._want = count
        self._enough = self.loop.create_future()
        self.loop.add_reader(self.sock.fileno(), self.read_available)
        try:
            self.read_available()
            await within(self._enough)
        finally:
            self.loop.remove_reader(self.sock.fileno())
        return self.received


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path: sun_path holds only ~107 bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mxd") as d:
        yield Path(d)


@pytest.fixture
def sink_socket(short_tmp: Path) -> Iterator[tuple[socket.socket, str]]:
    """A Unix datagram socket bound in the temp dir, and its path."""
    path = str(short_tmp / "sink")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    try:
        yield s, path
    finally:
        s.close()


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def numbered(i: int, size: int) -> bytes:
    return i.to_bytes(4, "big") + b"x" * (size - 4)


async def fill_until_paused(
    transport: DatagramTransport, proto: Recorder, size: int = 1024, limit: int = 10_000
) -> int:
    """Send numbered datagrams to a peer that does not read until the protocol pauses."""
    for i in range(limit):
        transport.sendto(numbered(i, size))
        if proto.paused.is_set():
            return i + 1
    pytest.fail(f"pause_writing was not called after {limit} datagrams")


async def connected_to_sink(
    loop: asyncio.AbstractEventLoop, path: str, high: int = 4096
) -> tuple[DatagramTransport, Recorder]:
    transport, proto = await endpoint(loop, Recorder, remote_addr=path, family=socket.AF_UNIX)
    transport.set_write_buffer_limits(high=high)
    return transport, proto


# =============================================================================
# Round trips
# =============================================================================


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param("::1", marks=pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")),
    ],
)
def test_udp_echo_round_trip_connected_client(loop: asyncio.AbstractEventLoop, host: str) -> None:
    async def main() -> None:
        server, sproto = await endpoint(loop, lambda: Recorder(echo=True), local_addr=(host, 0))
        saddr = server.get_extra_info("sockname")
        client, cproto = await endpoint(loop, Recorder, remote_addr=saddr[:2])
        try:
            assert client.get_extra_info("peername")[:2] == saddr[:2]
            assert server.get_extra_info("peername") is None
            for payload in (b"one", bytearray(b"two"), memoryview(b"three")):
                client.sendto(payload)
                data, _ = await within(cproto.datagrams.get())
                assert data == bytes(payload)
                assert type(data) is bytes
            _, from_addr = await within(sproto.datagrams.get())
            assert from_addr[:2] == client.get_extra_info("sockname")[:2]
        finally:
            client.close()
            server.close()
        assert await within(cproto.lost) is None
        assert await within(sproto.lost) is None

    run(loop, main())


def test_udp_unconnected_endpoints_exchange_with_explicit_addresses(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        a, aproto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        b, bproto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        try:
            a.sendto(b"to b", b.get_extra_info("sockname"))
            data, addr = await within(bproto.datagrams.get())
            assert (data, addr) == (b"to b", a.get_extra_info("sockname"))
            b.sendto(b"to a", addr)
            assert (await within(aproto.datagrams.get()))[0] == b"to a"
        finally:
            a.close()
            b.close()

    run(loop, main())


def test_datagrams_keep_their_boundaries_and_order(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        server, sproto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        client, _ = await endpoint(loop, Recorder, remote_addr=server.get_extra_info("sockname"))
        sizes = [1, 7, 1000, 9000, 65507]
        try:
            for i, size in enumerate(sizes):
                client.sendto(numbered(i, max(size, 4))[:size])
            got = [(await within(sproto.datagrams.get()))[0] for _ in sizes]
        finally:
            client.close()
            server.close()
        assert [len(d) for d in got] == sizes
        assert got[2][:4] == numbered(2, 4)

    run(loop, main())


def test_unix_datagram_echo_round_trip(loop: asyncio.AbstractEventLoop, short_tmp: Path) -> None:
    spath, cpath = str(short_tmp / "server"), str(short_tmp / "client")

    async def main() -> None:
        server, sproto = await endpoint(
            loop, lambda: Recorder(echo=True), local_addr=spath, family=socket.AF_UNIX
        )
        client, cproto = await endpoint(
            loop, Recorder, local_addr=cpath, remote_addr=spath, family=socket.AF_UNIX
        )
        try:
            assert client.get_extra_info("peername") == spath
            assert server.get_extra_info("sockname") == spath
            client.sendto(b"ping")
            assert await within(cproto.datagrams.get()) == (b"ping", spath)
            assert await within(sproto.datagrams.get()) == (b"ping", cpath)
        finally:
            client.close()
            server.close()
        await within(cproto.lost)

    run(loop, main())


def test_connection_made_has_run_when_the_endpoint_is_returned(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        transport, proto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        assert proto.made.done()
        assert proto.transport is transport
        assert transport.get_protocol() is proto
        transport.close()
        await within(proto.lost)

    run(loop, main())


def test_get_extra_info_reports_socket_sockname_and_peername(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        transport, proto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        sock = transport.get_extra_info("socket")
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_DGRAM
        assert sock.getsockname() == transport.get_extra_info("sockname")
        assert transport.get_extra_info("peername") is None
        assert transport.get_extra_info("nonesuch", "dflt") == "dflt"
        transport.close()
        await within(proto.lost)
        # Still answered after the socket is gone.
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"

    run(loop, main())


# =============================================================================
# sendto() errors
# =============================================================================


def test_sendto_rejects_data_that_is_not_bytes_like(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        transport, _ = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        try:
            for bad in ("text", 42, None, [1, 2]):
                with pytest.raises(TypeError, match="bytes-like object"):
                    transport.sendto(bad, ("127.0.0.1", 9))  # type: ignore[arg-type]
            assert not transport.is_closing()
        finally:
            transport.close()

    run(loop, main())


def test_connected_sendto_refuses_another_address(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        server, sproto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        saddr = server.get_extra_info("sockname")
        client, _ = await endpoint(loop, Recorder, remote_addr=saddr)
        try:
            with pytest.raises(ValueError, match="Invalid address"):
                client.sendto(b"no", ("127.0.0.1", saddr[1] + 1))
            client.sendto(b"same", saddr)
            client.sendto(b"none", None)
            got = [(await within(sproto.datagrams.get()))[0] for _ in range(2)]
            assert got == [b"same", b"none"]
            assert not client.is_closing()
        finally:
            client.close()
            server.close()

    run(loop, main())


def test_unconnected_sendto_without_address_is_fatal_as_in_asyncio(
    loop: asyncio.AbstractEventLoop,
) -> None:
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _lp, ctx: contexts.append(ctx))

    async def main() -> None:
        transport, proto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        transport.sendto(b"where to?")
        assert transport.is_closing()
        exc = await within(proto.lost)
        assert isinstance(exc, TypeError)
        assert transport.get_protocol() is None

    run(loop, main())
    assert [c["message"] for c in contexts] == ["Fatal write error on datagram transport"]
    assert isinstance(contexts[0]["exception"], TypeError)


def test_empty_datagram_follows_the_running_python(loop: asyncio.AbstractEventLoop) -> None:
    """3.13 sends a zero-length datagram; 3.10-3.12 drop it silently."""

    async def main() -> None:
        server, sproto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        client, _ = await endpoint(loop, Recorder, remote_addr=server.get_extra_info("sockname"))
        try:
            client.sendto(b"")
            client.sendto(b"after")
            first = (await within(sproto.datagrams.get()))[0]
        finally:
            client.close()
            server.close()
        assert first == (b"" if PY313 else b"after")

    run(loop, main())


def test_icmp_port_unreachable_reaches_error_received_without_closing(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        port = free_udp_port()
        transport, proto = await endpoint(loop, Recorder, remote_addr=("127.0.0.1", port))
        try:
            transport.sendto(b"anyone?")
            exc = await within(proto.errors.get())
            assert isinstance(exc, ConnectionRefusedError)
            assert not transport.is_closing()
            assert not proto.lost.done()
            # Still usable: a listener that appears later gets the next datagram.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
                listener.bind(("127.0.0.1", port))
                listener.settimeout(WAIT)
                transport.sendto(b"now?")
                data = await loop.run_in_executor(None, listener.recv, 100)
            assert data == b"now?"
        finally:
            transport.close()
        assert await within(proto.lost) is None

    run(loop, main())


# =============================================================================
# Flow control, close and abort
# =============================================================================


def test_write_buffer_limits_default_and_validation(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        transport, _ = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        try:
            assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            assert transport.get_write_buffer_size() == 0
            transport.set_write_buffer_limits(high=100)
            assert transport.get_write_buffer_limits() == (25, 100)
            transport.set_write_buffer_limits(low=10)
            assert transport.get_write_buffer_limits() == (10, 40)
            with pytest.raises(ValueError, match="must be >="):
                transport.set_write_buffer_limits(high=1, low=2)
            with pytest.raises(ValueError, match="must be >="):
                transport.set_write_buffer_limits(high=-1)
        finally:
            transport.close()

    run(loop, main())


def test_full_socket_pauses_writing_and_draining_resumes_it(
    loop: asyncio.AbstractEventLoop, sink_socket: tuple[socket.socket, str]
) -> None:
    sock, path = sink_socket

    async def main() -> None:
        transport, proto = await connected_to_sink(loop, path)
        try:
            sent = await fill_until_paused(transport, proto)
            low, high = transport.get_write_buffer_limits()
            assert transport.get_write_buffer_size() > high
            assert not proto.resumed.is_set()
            received = await Sink(loop, sock).drain_until(sent)
            await within(proto.resumed.wait())
            assert transport.get_write_buffer_size() <= low
            assert received == [numbered(i, 1024) for i in range(sent)]
            assert proto.calls.count("pause_writing") == 1
        finally:
            transport.close()
        assert await within(proto.lost) is None

    run(loop, main())


def test_close_flushes_buffered_datagrams_then_reports_lost(
    loop: asyncio.AbstractEventLoop, sink_socket: tuple[socket.socket, str]
) -> None:
    sock, path = sink_socket

    async def main() -> None:
        transport, proto = await connected_to_sink(loop, path)
        sent = await fill_until_paused(transport, proto)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        assert transport.is_closing()
        await asyncio.sleep(0)  # a loop turn: the buffer is still waiting for room
        assert not proto.lost.done()
        received = await Sink(loop, sock).drain_until(sent)
        assert await within(proto.lost) is None
        assert received == [numbered(i, 1024) for i in range(sent)]
        assert transport.get_write_buffer_size() == 0

    run(loop, main())


def test_abort_drops_buffered_datagrams(
    loop: asyncio.AbstractEventLoop, sink_socket: tuple[socket.socket, str]
) -> None:
    sock, path = sink_socket

    async def main() -> None:
        transport, proto = await connected_to_sink(loop, path)
        sent = await fill_until_paused(transport, proto)
        transport.abort()
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        assert await within(proto.lost) is None
        sink = Sink(loop, sock)
        sink.read_available()  # the sender is closed: all that will come is here
        assert 0 < len(sink.received) < sent
        assert sink.received == [numbered(i, 1024) for i in range(len(sink.received))]

    run(loop, main())


def assert_unwatched(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """The loop watches the (now closed) descriptor for nothing."""
    assert not loop.remove_reader(fd)
    assert not loop.remove_writer(fd)


async def fill_until_buffered(transport: DatagramTransport, count: int, limit: int = 10_000) -> int:
    """Send until exactly `count` datagrams wait in the transport's buffer."""
    for i in range(limit):
        transport.sendto(numbered(i, 1024))
        if transport.get_write_buffer_size() >= count * 1024:
            return i + 1
    pytest.fail(f"nothing was buffered after {limit} datagrams")


def test_write_buffer_size_counts_buffered_datagrams_as_the_running_python(
    loop: asyncio.AbstractEventLoop, sink_socket: tuple[socket.socket, str]
) -> None:
    """3.13 adds an 8-byte header per datagram; 3.10-3.12 count the payload only."""
    sock, path = sink_socket

    async def main() -> None:
        transport, proto = await connected_to_sink(loop, path, high=1 << 20)
        sent = await fill_until_buffered(transport, 2)
        assert transport.get_write_buffer_size() == 2 * (1024 + (8 if PY313 else 0))
        received = await Sink(loop, sock).drain_until(sent)
        assert len(received) == sent
        transport.close()
        assert await within(proto.lost) is None
        assert transport.get_write_buffer_size() == 0

    run(loop, main())


def test_peer_vanishing_reports_every_buffered_datagram_to_error_received(
    loop: asyncio.AbstractEventLoop, sink_socket: tuple[socket.socket, str]
) -> None:
    sock, path = sink_socket

    async def main() -> None:
        transport, proto = await connected_to_sink(loop, path, high=1 << 20)
        await fill_until_buffered(transport, 3)
        sock.close()  # the kernel drops its queue and wakes the sender
        errors = [await within(proto.errors.get()) for _ in range(3)]
        assert isinstance(errors[0], ConnectionRefusedError)
        assert all(isinstance(e, OSError) for e in errors)
        assert transport.get_write_buffer_size() == 0
        assert not transport.is_closing()
        fd = transport.get_extra_info("socket").fileno()
        transport.close()
        assert await within(proto.lost) is None
        assert_unwatched(loop, fd)

    run(loop, main())


def test_close_from_error_received_during_a_flush_completes_the_close(
    loop: asyncio.AbstractEventLoop, sink_socket: tuple[socket.socket, str]
) -> None:
    sock, path = sink_socket

    class CloseOnError(Recorder):
        def error_received(self, exc: Exception) -> None:
            super().error_received(exc)
            assert self.transport is not None
            self.transport.close()

    async def main() -> None:
        transport, proto = await endpoint(
            loop, CloseOnError, remote_addr=path, family=socket.AF_UNIX
        )
        await fill_until_buffered(transport, 1)
        fd = transport.get_extra_info("socket").fileno()
        sock.close()
        assert isinstance(await within(proto.errors.get()), ConnectionRefusedError)
        assert await within(proto.lost) is None
        assert_unwatched(loop, fd)

    run(loop, main())


def test_writes_after_close_queue_behind_a_buffer_still_flushing(
    loop: asyncio.AbstractEventLoop, sink_socket: tuple[socket.socket, str]
) -> None:
    sock, path = sink_socket

    async def main() -> None:
        transport, proto = await connected_to_sink(loop, path)
        sent = await fill_until_paused(transport, proto)
        transport.close()
        transport.sendto(numbered(sent, 1024))
        received = await Sink(loop, sock).drain_until(sent + 1)
        assert await within(proto.lost) is None
        assert received == [numbered(i, 1024) for i in range(sent + 1)]

    run(loop, main())


def test_writes_after_close_are_dropped_with_asyncio_warning(
    loop: asyncio.AbstractEventLoop,
    sink_socket: tuple[socket.socket, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock, path = sink_socket

    async def main() -> None:
        transport, proto = await connected_to_sink(loop, path)
        transport.sendto(b"before")
        transport.close()
        with caplog.at_level(logging.WARNING):
            for _ in range(4):
                transport.sendto(b"after")
            assert "socket.send() raised exception." not in caplog.text
            transport.sendto(b"after")
            assert "socket.send() raised exception." in caplog.text
        await within(proto.lost)
        transport.sendto(b"after lost")  # no socket left: dropped, no error
        sink = Sink(loop, sock)
        sink.read_available()
        assert sink.received == [b"before"]

    run(loop, main())


def test_close_is_idempotent_and_connection_lost_comes_once_on_a_later_turn(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        transport, proto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        transport.close()
        assert not proto.lost.done()  # not from inside close()
        transport.close()
        transport.abort()
        assert await within(proto.lost) is None
        await asyncio.sleep(0)
        assert proto.calls.count("connection_lost") == 1
        assert transport.get_extra_info("socket").fileno() == -1

    run(loop, main())


def test_close_inside_connection_made_never_reads(loop: asyncio.AbstractEventLoop) -> None:
    class Closer(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            transport.close()

    async def main() -> None:
        transport, proto = await endpoint(loop, Closer, local_addr=("127.0.0.1", 0))
        assert transport.is_closing()
        assert not transport.is_reading()
        assert await within(proto.lost) is None
        assert proto.calls == ["connection_made", "connection_lost"]

    run(loop, main())


def test_connection_lost_breaks_the_transport_protocol_cycle(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> weakref.ref[Recorder]:
        transport, proto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        assert proto.transport is transport  # the cycle
        transport.close()
        await within(proto.lost)
        assert transport.get_protocol() is None
        return weakref.ref(proto)

    gc.disable()
    try:
        ref = run(loop, main())
        loop.run_until_complete(asyncio.sleep(0))
        assert ref() is None, "the protocol outlived its transport without the collector"
    finally:
        gc.enable()


def test_pause_reading_holds_datagrams_until_resumed(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        server, sproto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        client, _ = await endpoint(loop, Recorder, remote_addr=server.get_extra_info("sockname"))
        try:
            server.pause_reading()
            server.pause_reading()
            assert not server.is_reading()
            client.sendto(b"held")
            await asyncio.sleep(0)
            server.resume_reading()
            assert server.is_reading()
            assert (await within(sproto.datagrams.get()))[0] == b"held"
        finally:
            client.close()
            server.close()

    run(loop, main())


def test_exception_in_pause_writing_goes_to_the_exception_handler(
    loop: asyncio.AbstractEventLoop, sink_socket: tuple[socket.socket, str]
) -> None:
    _, path = sink_socket
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _lp, ctx: contexts.append(ctx))

    class Broken(Recorder):
        def pause_writing(self) -> None:
            super().pause_writing()
            raise RuntimeError("boom")

    async def main() -> None:
        transport, proto = await endpoint(loop, Broken, remote_addr=path, family=socket.AF_UNIX)
        transport.set_write_buffer_limits(high=4096)
        await fill_until_paused(transport, proto)
        assert not transport.is_closing()
        transport.abort()
        await within(proto.lost)

    run(loop, main())
    assert [c["message"] for c in contexts] == ["protocol.pause_writing() failed"]


# =============================================================================
# sock=
# =============================================================================


def test_given_socket_is_used_and_made_non_blocking(loop: asyncio.AbstractEventLoop) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    async def main() -> None:
        transport, proto = await endpoint(loop, lambda: Recorder(echo=True), sock=sock)
        client, cproto = await endpoint(loop, Recorder, remote_addr=sock.getsockname())
        try:
            assert sock.getblocking() is False
            assert transport.get_extra_info("socket").fileno() == sock.fileno()
            assert transport.get_extra_info("sockname") == sock.getsockname()
            client.sendto(b"via sock=")
            assert (await within(cproto.datagrams.get()))[0] == b"via sock="
        finally:
            client.close()
            transport.close()
        await within(proto.lost)
        assert sock.fileno() == -1  # the transport owned it

    run(loop, main())


def test_given_connected_socketpair_sends_without_an_address(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A socketpair's peer is named '': still connected (asyncio would call sendto(None))."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    async def main() -> None:
        transport, proto = await endpoint(loop, Recorder, sock=mine)
        try:
            transport.sendto(b"to the pair")
            theirs.settimeout(WAIT)
            assert await loop.run_in_executor(None, theirs.recv, 100) == b"to the pair"
            theirs.send(b"back")
            assert (await within(proto.datagrams.get()))[0] == b"back"
        finally:
            transport.close()
            theirs.close()

    run(loop, main())


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"local_addr": ("127.0.0.1", 0)}, "local_addr=('127.0.0.1', 0)"),
        ({"remote_addr": ("127.0.0.1", 9)}, "remote_addr=('127.0.0.1', 9)"),
        ({"family": socket.AF_INET}, "family="),
        ({"proto": socket.IPPROTO_UDP}, "proto=17"),
        ({"flags": socket.AI_PASSIVE}, "flags="),
        ({"reuse_port": True}, "reuse_port=True"),
        ({"allow_broadcast": True}, "allow_broadcast=True"),
    ],
)
def test_given_socket_refuses_socket_modifiers(
    loop: asyncio.AbstractEventLoop, kwargs: dict[str, Any], named: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(ValueError, match="can not be used when sock is specified") as info:
            run(loop, endpoint(loop, Recorder, sock=sock, **kwargs))
        assert named in str(info.value)
        assert sock.fileno() != -1


def test_given_stream_socket_is_refused(loop: asyncio.AbstractEventLoop) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        expected = "A datagram socket was expected" if PY313 else "A UDP Socket was expected"
        with pytest.raises(ValueError, match=expected):
            run(loop, endpoint(loop, Recorder, sock=sock))


# =============================================================================
# Argument validation and address resolution
# =============================================================================


def test_no_address_needs_a_family(loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(ValueError, match="unexpected address family"):
        run(loop, endpoint(loop, Recorder))


def test_family_alone_makes_an_unbound_unconnected_socket(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        server, sproto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        client, _ = await endpoint(loop, Recorder, family=socket.AF_INET)
        try:
            assert client.get_extra_info("peername") is None
            client.sendto(b"hello", server.get_extra_info("sockname"))
            assert (await within(sproto.datagrams.get()))[0] == b"hello"
        finally:
            client.close()
            server.close()

    run(loop, main())


@pytest.mark.parametrize("key", ["local_addr", "remote_addr"])
def test_unix_addresses_must_be_strings(
    loop: asyncio.AbstractEventLoop, short_tmp: Path, key: str
) -> None:
    with pytest.raises(TypeError, match="string is expected"):
        run(loop, endpoint(loop, Recorder, family=socket.AF_UNIX, **{key: short_tmp / "p"}))


@pytest.mark.parametrize("addr", [("127.0.0.1",), ("127.0.0.1", 0, 0), "127.0.0.1:0"])
def test_inet_addresses_must_be_pairs(loop: asyncio.AbstractEventLoop, addr: Any) -> None:
    expected = TypeError if PY311 else AssertionError
    with pytest.raises(expected, match="2-tuple is expected"):
        run(loop, endpoint(loop, Recorder, local_addr=addr))


def test_reuse_address_is_refused_as_the_running_asyncio_does(
    loop: asyncio.AbstractEventLoop,
) -> None:
    if PY311:
        with pytest.raises(TypeError, match="reuse_address"):
            run(loop, endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), reuse_address=True))
        with pytest.raises(TypeError, match="reuse_address"):
            run(loop, endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), reuse_address=False))
        return
    with pytest.raises(ValueError, match="reuse_address=True"):
        run(loop, endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), reuse_address=True))
    with pytest.warns(DeprecationWarning, match="reuse_address"):
        transport, _ = run(
            loop, endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), reuse_address=False)
        )
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))


def test_reuse_address_matches_stock_asyncio_exception() -> None:
    """Parity with the interpreter's own loop, whatever its version."""

    async def ours(lp: asyncio.AbstractEventLoop) -> Any:
        return await create_datagram_endpoint(
            lp, asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), reuse_address=True
        )

    async def theirs(lp: asyncio.AbstractEventLoop) -> Any:
        return await lp.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), reuse_address=True
        )

    kinds = []
    for make in (ours, theirs):
        lp = asyncio.new_event_loop()
        try:
            with pytest.raises(Exception) as info:
                lp.run_until_complete(asyncio.wait_for(make(lp), WAIT))
            kinds.append(type(info.value))
        finally:
            lp.close()
    assert kinds[0] is kinds[1]


def test_addresses_of_no_common_family_are_refused(loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(ValueError, match="can not get address information"):
        run(
            loop,
            endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), remote_addr=("::1", 9)),
        )


def test_bind_failure_raises_the_socket_error(loop: asyncio.AbstractEventLoop) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as info:
            run(loop, endpoint(loop, Recorder, local_addr=taken.getsockname()))
        assert info.value.errno is not None
        assert "Address already in use" in str(info.value)


def test_stale_unix_socket_file_is_replaced(
    loop: asyncio.AbstractEventLoop, short_tmp: Path
) -> None:
    path = str(short_tmp / "stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as old:
        old.bind(path)  # closing leaves the file behind
    assert os.path.exists(path)

    async def main() -> None:
        transport, proto = await endpoint(loop, Recorder, local_addr=path, family=socket.AF_UNIX)
        transport.close()
        await within(proto.lost)

    run(loop, main())


def test_a_live_unix_datagram_socket_is_never_taken_over(
    loop: asyncio.AbstractEventLoop, short_tmp: Path
) -> None:
    path = str(short_tmp / "live")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(path)
        with pytest.raises(OSError) as info:
            run(loop, endpoint(loop, Recorder, local_addr=path, family=socket.AF_UNIX))
        assert info.value.errno == errno.EADDRINUSE
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"still here", path)  # the live socket still owns its path
        live.settimeout(WAIT)
        assert live.recv(100) == b"still here"


def test_unix_path_taken_by_a_regular_file_is_not_removed(
    loop: asyncio.AbstractEventLoop, short_tmp: Path
) -> None:
    path = short_tmp / "regular"
    path.write_text("keep me")
    with pytest.raises(OSError):
        run(loop, endpoint(loop, Recorder, local_addr=str(path), family=socket.AF_UNIX))
    assert path.read_text() == "keep me"


def test_host_names_are_resolved_through_loop_getaddrinfo(
    loop: asyncio.AbstractEventLoop,
) -> None:
    calls: list[tuple[Any, ...]] = []
    real = loop.getaddrinfo

    async def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append((*args, kwargs))
        return await real(*args, **kwargs)

    loop.getaddrinfo = spy  # type: ignore[method-assign]

    async def main() -> None:
        transport, _ = await endpoint(
            loop, Recorder, local_addr=("localhost", 0), family=socket.AF_INET
        )
        try:
            assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
        finally:
            transport.close()
        literal, lproto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        literal.close()
        await within(lproto.lost)

    run(loop, main())
    assert len(calls) == 1, "a literal address needs no resolver"
    host, port, kwargs = calls[0]
    assert (host, port) == ("localhost", 0)
    assert kwargs["type"] == socket.SOCK_DGRAM
    assert kwargs["family"] == socket.AF_INET


@pytest.mark.skipif(not HAS_REUSEPORT, reason="no SO_REUSEPORT")
def test_reuse_port_lets_two_endpoints_share_a_port(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        a, aproto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), reuse_port=True)
        addr = a.get_extra_info("sockname")
        b, bproto = await endpoint(loop, Recorder, local_addr=addr, reuse_port=True)
        try:
            assert b.get_extra_info("sockname") == addr
            sock = a.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        finally:
            a.close()
            b.close()
        await within(aproto.lost)
        await within(bproto.lost)

    run(loop, main())


def test_allow_broadcast_sets_so_broadcast_and_leaves_the_socket_unconnected(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> None:
        server, sproto = await endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        saddr = server.get_extra_info("sockname")
        client, _ = await endpoint(loop, Recorder, remote_addr=saddr, allow_broadcast=True)
        try:
            sock = client.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
            assert client.get_extra_info("peername") is None
            client.sendto(b"default destination")
            assert (await within(sproto.datagrams.get()))[0] == b"default destination"
            with pytest.raises(ValueError, match="Invalid address"):
                client.sendto(b"x", ("127.0.0.1", 9))
        finally:
            client.close()
            server.close()

    run(loop, main())


def test_protocol_factory_failure_propagates(loop: asyncio.AbstractEventLoop) -> None:
    def factory() -> Recorder:
        raise RuntimeError("no protocol today")

    with pytest.raises(RuntimeError, match="no protocol today"):
        run(loop, endpoint(loop, factory, local_addr=("127.0.0.1", 0)))


def test_module_exports() -> None:
    assert datagram.__all__ == ["DatagramTransport", "create_datagram_endpoint"]
    assert issubclass(DatagramTransport, asyncio.DatagramTransport)

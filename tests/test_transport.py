"""Transport: the write path, flow control, half-close, resets and fairness.

The first half drives a transport over a fault-injecting socket from the
test thread, for the failures a real socket cannot produce on demand.  The
second half runs a real server on 127.0.0.1 in a background thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import (
    ServerThread,
    exchange,
    recv_exactly,
    recv_until_eof,
    round_trip,
    running_server,
    send_until_blocked,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muxio import EventLoop, Protocol, Transport
from muxio.services.upper import UpperEcho
from muxio.transports import stream as stream_module

pytestmark = pytest.mark.timeout(60)


# =============================================================================
# Fault injection
# =============================================================================


class FaultSocket:
    """Fault injection around one end of a real socketpair.

    This is not a mock: the fd is real, so the loop's poller watches a real
    socket and bytes really cross it.  The stream transport reads and writes
    the descriptor itself (`os.read`/`os.write`/`os.readv`/`os.writev`, named
    in `muxio.transports.stream`), and `fault_injection` routes those calls
    for this descriptor through here, where they can be told, call by call,
    to fail or to move less than offered:

    * `write_faults` scripts write calls, `recv_faults` read calls; each
      entry is consumed by one call: an exception instance is raised, an int
      caps how many bytes the call moves, None passes.
    * `endless = N` makes the next N reads return a full buffer each
      without touching the socket: a peer that never stops sending (the
      budget only keeps a broken transport from looping forever).
    """

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.write_faults: deque[BaseException | int | None] = deque()
        self.recv_faults: deque[BaseException | int | None] = deque()
        self.write_calls = 0
        self.recv_calls = 0
        self.endless = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def _write_fault(self) -> BaseException | int | None:
        self.write_calls += 1
        fault = self.write_faults.popleft() if self.write_faults else None
        if isinstance(fault, BaseException):
            raise fault
        return fault

    def write(self, fd: int, data: Any) -> int:
        fault = self._write_fault()
        if isinstance(fault, int):
            data = memoryview(data)[:fault]
        return os.write(fd, data)

    def writev(self, fd: int, buffers: list[Any]) -> int:
        fault = self._write_fault()
        if isinstance(fault, int):
            capped, room = [], fault
            for b in buffers:
                if room <= 0:
                    break
                capped.append(memoryview(b)[:room])
                room -= len(capped[-1])
            buffers = capped
        return os.writev(fd, buffers)

    def read(self, fd: int, size: int) -> bytes:
        self.recv_calls += 1
        if self.endless:
            self.endless -= 1
            return b"f" * size
        fault = self.recv_faults.popleft() if self.recv_faults else None
        if isinstance(fault, BaseException):
            raise fault
        if isinstance(fault, int):
            size = min(size, fault)
        return os.read(fd, size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


_faulty: dict[int, FaultSocket] = {}


@pytest.fixture(autouse=True)
def fault_injection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Route the stream transport's descriptor I/O for faulty sockets through them."""

    def route(name: str) -> None:
        real = getattr(os, name)
        fault_method = {"read": "read", "write": "write", "writev": "writev"}.get(name)

        def call(fd: int, arg: Any) -> Any:
            fake = _faulty.get(fd)
            if fake is None or fault_method is None:
                return real(fd, arg)
            return getattr(fake, fault_method)(fd, arg)

        monkeypatch.setattr(stream_module, f"_{name}", call)

    for name in ("read", "write", "writev"):
        route(name)
    yield
    _faulty.clear()


class Recorder(Protocol):
    """Records every callback it gets."""

    def __init__(self) -> None:
        self.transport: Transport | None = None
        self.data = bytearray()
        self.chunks = 0
        self.eofs = 0
        self.lost: list[BaseException | None] = []
        self.paused = 0
        self.resumed = 0
        self.echo = False

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.chunks += 1
        if self.echo:
            assert self.transport is not None
            self.transport.write(data.upper())

    def eof_received(self) -> None:
        self.eofs += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1


def spin(loop: EventLoop, until: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run the loop in this thread until `until()` is true (bounded)."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() >= deadline:
            raise TimeoutError("condition not reached while running the loop")
        loop.call_later(0.01, loop.stop)
        loop.run_forever()


def one_iteration(loop: EventLoop) -> None:
    """Exactly one pass of the loop: a zero-timeout poll, its events, ready callbacks."""
    loop.call_soon(loop.stop)
    loop.run_forever()


class Conn:
    def __init__(self, loop: EventLoop, echo: bool = False) -> None:
        a, self.peer = socket.socketpair()
        a.setblocking(False)
        self.peer.settimeout(5)
        self.fake = FaultSocket(a)
        _faulty[a.fileno()] = self.fake
        self.proto = Recorder()
        self.proto.echo = echo
        self.transport = Transport(loop, self.fake, self.proto)  # type: ignore[arg-type]
        self.transport.start()
        self.fd = a.fileno()

    def close(self) -> None:
        _faulty.pop(self.fake.real.fileno(), None)
        self.peer.close()
        self.fake.real.close()


@pytest.fixture
def conns(loop: EventLoop) -> Iterator[Callable[..., Conn]]:
    made: list[Conn] = []

    def make(echo: bool = False) -> Conn:
        c = Conn(loop, echo)
        made.append(c)
        return c

    yield make
    for c in made:
        if not c.transport._lost:
            c.transport.abort()
    for c in made:
        c.close()


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="muxio")
    return caplog


def loud_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "muxio" and r.levelno > logging.DEBUG]


def test_partial_write_buffers_exactly_the_rest_and_flushes_in_order(
    loop: EventLoop, conns: Callable[..., Conn]
) -> None:
    c = conns()
    first = os.urandom(10_000)
    second = b"second write"
    third = os.urandom(3_000)
    c.fake.write_faults.extend([1000])
    c.transport.write(first)
    assert c.transport.bytes_out == 1000
    assert c.transport.get_write_buffer_size() == 9000
    assert c.fd in loop._writers
    # while a buffer is pending, new writes queue behind it without a syscall
    c.transport.write(second)
    c.transport.write(bytearray(third))
    assert c.fake.write_calls == 1
    assert c.transport.get_write_buffer_size() == 9000 + len(second) + len(third)
    # the flush itself is cut short: partial, would-block, then a cut inside `second`
    c.fake.write_faults.extend([4321, BlockingIOError(errno.EAGAIN, "again"), 9000 - 4321 + 5])
    spin(loop, lambda: c.transport.get_write_buffer_size() == 0)
    assert c.fd not in loop._writers
    expected = first + second + third
    assert recv_exactly(c.peer, len(expected), 5) == expected
    assert c.transport.bytes_out == len(expected)
    assert c.proto.lost == []


def test_eagain_on_first_send_buffers_and_flushes_later(
    loop: EventLoop, conns: Callable[..., Conn]
) -> None:
    c = conns()
    data = os.urandom(200_000)
    c.fake.write_faults.append(BlockingIOError(errno.EAGAIN, "again"))
    c.transport.write(data)
    assert c.transport.bytes_out == 0
    assert c.transport.get_write_buffer_size() == len(data)
    assert c.fd in loop._writers
    # past the high-water mark: the protocol is told to stop producing, once
    assert c.proto.paused == 1
    c.transport.write(b"!")
    assert c.proto.paused == 1
    received = bytearray()

    def drained() -> bool:
        c.peer.settimeout(0)
        with contextlib.suppress(BlockingIOError):
            received.extend(c.peer.recv(1 << 20))
        c.peer.settimeout(5)
        return c.transport.get_write_buffer_size() == 0

    spin(loop, drained)
    received += recv_exactly(c.peer, len(data) + 1 - len(received), 5)
    assert bytes(received) == data + b"!"
    assert c.proto.resumed == 1
    assert c.fd not in loop._writers


def test_eintr_is_retried_on_send_flush_and_recv(
    loop: EventLoop, conns: Callable[..., Conn]
) -> None:
    c = conns()
    c.fake.write_faults.extend(
        [InterruptedError(errno.EINTR, "interrupted"), InterruptedError(errno.EINTR, "again"), 7]
    )
    c.transport.write(b"interrupted but delivered")
    assert c.transport.get_write_buffer_size() == len(b"interrupted but delivered")
    spin(loop, lambda: c.transport.get_write_buffer_size() == 0)
    assert recv_exactly(c.peer, 25, 5) == b"interrupted but delivered"

    c.fake.recv_faults.extend([InterruptedError(errno.EINTR, "interrupted"), 3])
    c.peer.sendall(b"hello")
    spin(loop, lambda: bytes(c.proto.data) == b"hello")
    assert c.proto.lost == []
    assert not c.transport.is_closing()


def test_econnreset_on_first_send(
    loop: EventLoop, conns: Callable[..., Conn], quiet_log: pytest.LogCaptureFixture
) -> None:
    c = conns()
    other = conns(echo=True)
    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    c.fake.write_faults.append(reset)
    c.transport.write(b"doomed")  # must not raise
    assert c.transport.is_closing()
    c.transport.write(b"after the reset")  # a no-op, no exception
    assert c.fake.write_calls == 1
    spin(loop, lambda: bool(c.proto.lost))
    # the loop keeps serving the other connection
    other.peer.sendall(b"still here")
    spin(loop, lambda: bytes(other.proto.data) == b"still here")
    spin(loop, lambda: other.transport.get_write_buffer_size() == 0)
    assert recv_exactly(other.peer, 10, 5) == b"STILL HERE"
    assert c.proto.lost == [reset]
    assert c.fd not in loop._readers and c.fd not in loop._writers
    assert loud_records(quiet_log) == []


def test_econnreset_while_flushing(
    loop: EventLoop, conns: Callable[..., Conn], quiet_log: pytest.LogCaptureFixture
) -> None:
    c = conns()
    other = conns(echo=True)
    c.fake.write_faults.extend([100, ConnectionResetError(errno.ECONNRESET, "reset")])
    c.transport.write(os.urandom(5000))
    assert c.transport.get_write_buffer_size() == 4900
    # the peer also sends, so the reader and the writer are both ready
    c.peer.sendall(b"x")
    c.fake.recv_faults.append(ConnectionResetError(errno.ECONNRESET, "reset"))
    other.peer.sendall(b"ping")
    spin(loop, lambda: bool(c.proto.lost) and bytes(other.proto.data) == b"ping")
    for _ in range(5):
        one_iteration(loop)
    assert len(c.proto.lost) == 1
    assert isinstance(c.proto.lost[0], ConnectionResetError)
    assert c.transport.get_write_buffer_size() == 0
    spin(loop, lambda: other.transport.get_write_buffer_size() == 0)
    assert recv_exactly(other.peer, 4, 5) == b"PING"
    assert loud_records(quiet_log) == []


def test_econnreset_on_recv(
    loop: EventLoop, conns: Callable[..., Conn], quiet_log: pytest.LogCaptureFixture
) -> None:
    c = conns()
    other = conns(echo=True)
    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    c.fake.recv_faults.append(reset)
    c.peer.sendall(b"never delivered")
    other.peer.sendall(b"ok")
    spin(loop, lambda: bool(c.proto.lost) and bytes(other.proto.data) == b"ok")
    for _ in range(5):
        one_iteration(loop)
    assert c.proto.lost == [reset]
    assert c.proto.data == b""
    assert c.proto.eofs == 0
    c.transport.write(b"no-op")
    c.transport.close()
    c.transport.abort()
    one_iteration(loop)
    assert c.proto.lost == [reset]
    spin(loop, lambda: other.transport.get_write_buffer_size() == 0)
    assert recv_exactly(other.peer, 2, 5) == b"OK"
    assert loud_records(quiet_log) == []


def test_reads_per_event_are_capped(loop: EventLoop, conns: Callable[..., Conn]) -> None:
    flood = conns()
    quiet = conns()
    flood.fake.endless = 1000
    flood.peer.sendall(b"!")  # the real fd is readable; recv itself never runs dry
    quiet.peer.sendall(b"ping")
    one_iteration(loop)
    cap = 1  # one read per readiness event
    assert flood.proto.chunks == cap
    assert len(flood.proto.data) == cap * Transport.read_size
    assert bytes(quiet.proto.data) == b"ping"
    one_iteration(loop)
    assert flood.proto.chunks == 2 * cap


# =============================================================================
# Real sockets
# =============================================================================


@pytest.fixture(scope="module")
def upper_server() -> Iterator[ServerThread]:
    with running_server(UpperEcho) as srv:
        yield srv


def make_server(factory: Callable[[], Protocol], **kwargs: Any) -> Iterator[ServerThread]:
    with running_server(factory, **kwargs) as srv:
        yield srv


class Factory:
    """A protocol factory that remembers what it built."""

    def __init__(self, cls: Callable[[], Protocol]) -> None:
        self.cls = cls
        self.built: list[Any] = []
        self.made = threading.Event()

    def __call__(self) -> Protocol:
        proto = self.cls()
        self.built.append(proto)
        self.made.set()
        return proto


@pytest.fixture
def server_with() -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(factory: Callable[[], Protocol], **kwargs: Any) -> ServerThread:
        srv = ServerThread(factory, **kwargs).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.mark.timeout(90)
def test_round_trip_10mib_with_small_client_buffers(upper_server: ServerThread) -> None:
    data = os.urandom(10 * 1024 * 1024)
    with upper_server.connect(SO_SNDBUF=4096, SO_RCVBUF=4096) as sock:
        reply = exchange(sock, data, timeout=80)
    assert len(reply) == len(data)
    assert reply == data.upper()


chunk = st.binary(max_size=4096) | st.text(max_size=1500).map(lambda s: s.encode("utf-8"))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chunks=st.lists(chunk, max_size=40), lockstep=st.booleans())
def test_reply_is_upper_of_the_stream_whatever_the_chunking(
    upper_server: ServerThread, chunks: list[bytes], lockstep: bool
) -> None:
    expected = b"".join(chunks).upper()
    with upper_server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if lockstep:
            # each chunk alone on the wire: the server's reads follow the chunking
            got = b"".join(round_trip(sock, c) for c in chunks if c)
            sock.shutdown(socket.SHUT_WR)
            got += recv_until_eof(sock)
        else:
            got = exchange(sock, chunks, timeout=20)
    assert got == expected


SMALL_WRITES = 30_000
"""About 55 KiB a burst: well past what the two shrunken socket buffers can hold."""


def small_pieces() -> list[bytes]:
    rng = random.Random(20240607)
    return [rng.randbytes(rng.randint(1, 10)) for _ in range(SMALL_WRITES)]


class ManySmallWrites(Protocol):
    """Writes 30,000 pieces of 1-10 bytes in three bursts, then closes."""

    def __init__(self) -> None:
        self.max_buffered = 0
        self.errors: list[BaseException] = []
        self.all_written = threading.Event()

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pieces = small_pieces()
        third = len(pieces) // 3
        self._burst(pieces[:third])
        loop = transport._loop
        loop.call_soon(self._burst, pieces[third : 2 * third])
        loop.call_later(0.02, self._burst, pieces[2 * third :], True)

    def _burst(self, pieces: list[bytes], last: bool = False) -> None:
        for p in pieces:
            self.transport.write(p)
            self.max_buffered = max(self.max_buffered, self.transport.get_write_buffer_size())
        if last:
            self.transport.close()
            self.all_written.set()


def test_many_small_writes_arrive_intact_and_in_order(
    server_with: Callable[..., ServerThread],
) -> None:
    factory = Factory(ManySmallWrites)
    srv = server_with(factory)
    with srv.connect(SO_RCVBUF=4096) as sock:
        # Read only once all is written: then the 55 KiB cannot all fit in the two
        # 4 KiB socket buffers, however fast this thread would have read them.
        assert factory.made.wait(10)
        assert factory.built[0].all_written.wait(10)
        got = recv_until_eof(sock, timeout=30)
    assert got == b"".join(small_pieces())
    # the scenario really went through the buffer (and sendmsg's iovecs)
    assert factory.built[0].max_buffered > 1000


class WriteAfterClose(Protocol):
    payload = os.urandom(1024 * 1024)

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.lost: list[BaseException | None] = []
        self.done = threading.Event()

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.write(self.payload)
        transport.close()
        try:
            transport.write(b"AFTER CLOSE")
            transport.writelines([b"more", b"and more"])
            transport.write_eof()
        except BaseException as exc:  # pragma: no cover - the failure being tested
            self.errors.append(exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        try:
            self.transport.write(b"AFTER LOST")
        except BaseException as e:  # pragma: no cover
            self.errors.append(e)
        self.done.set()


def test_write_after_close_is_flushed_while_closing_and_dropped_once_lost(
    server_with: Callable[..., ServerThread],
) -> None:
    # asyncio's contract: close() stops reading and flushes; writes made while
    # the buffer still drains go out with it, write_eof() is a no-op, and
    # writes after connection_lost are dropped without an error.
    factory = Factory(WriteAfterClose)
    srv = server_with(factory)
    with srv.connect(SO_RCVBUF=4096) as sock:
        got = recv_until_eof(sock, timeout=30)
    assert got == WriteAfterClose.payload + b"AFTER CLOSE" + b"moreand more"
    proto = factory.built[0]
    assert proto.done.wait(5)
    assert proto.errors == []
    assert proto.lost == [None]


def test_client_half_close_gets_every_reply_then_eof(upper_server: ServerThread) -> None:
    data = os.urandom(2 * 1024 * 1024)
    with upper_server.connect(SO_RCVBUF=4096) as sock:
        sock.sendall(data[:100_000])
        # half-close while replies are still queued on the server
        reply = exchange(sock, data[100_000:], timeout=30)
    assert reply == data.upper()


class HalfCloser(Protocol):
    """Says hello, half-closes, then keeps reading until the peer's EOF."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = threading.Event()
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(b"hello, ")
        transport.write(b"then EOF")
        transport.write_eof()
        try:
            transport.write(b"refused: after write_eof")
        except RuntimeError as exc:
            self.refused = exc

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        self.eof.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def test_server_write_eof_keeps_reading(server_with: Callable[..., ServerThread]) -> None:
    factory = Factory(HalfCloser)
    srv = server_with(factory)
    with srv.connect() as sock:
        assert recv_until_eof(sock, timeout=10) == b"hello, then EOF"
        sock.sendall(b"later, ")
        sock.sendall(b"still received")
        sock.shutdown(socket.SHUT_WR)
        assert factory.made.wait(5)
        proto = factory.built[0]
        assert proto.eof.wait(10)
    assert bytes(proto.data) == b"later, still received"
    assert srv.wait_for(lambda: srv.server.connections == set())
    assert proto.lost == [None]
    assert "after write_eof" in str(proto.refused)


class LostRecorder(UpperEcho):
    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.lost: list[BaseException | None] = []
        self.gone = threading.Event()
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.gone.set()


def test_reset_mid_reply_is_quiet_and_the_server_goes_on(
    server_with: Callable[..., ServerThread], quiet_log: pytest.LogCaptureFixture
) -> None:
    factory = Factory(LostRecorder)
    srv = server_with(factory)
    sock = srv.connect(SO_RCVBUF=4096)
    try:
        sent = send_until_blocked(sock, os.urandom(16 * 1024 * 1024), stall=0.3)
        assert sent > 0
        # replies are queued in the server: reset now
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
    proto = factory.built[0]
    assert proto.gone.wait(10)
    assert srv.wait_for(lambda: not srv.server.connections)
    assert len(proto.lost) == 1
    assert proto.lost[0] is None or isinstance(proto.lost[0], OSError)
    with srv.connect() as second:
        assert round_trip(second, b"second client") == b"SECOND CLIENT"
    assert len(proto.lost) == 1
    assert loud_records(quiet_log) == [], [r.getMessage() for r in loud_records(quiet_log)]


class MeasuredEcho(UpperEcho):
    """The uppercase echo, noting the largest write buffer it ever saw."""

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.max_buffered = 0
        self.pauses = 0

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())
        size = self.transport.get_write_buffer_size()
        if size > self.max_buffered:
            self.max_buffered = size

    def pause_writing(self) -> None:
        self.pauses += 1
        super().pause_writing()


@pytest.mark.timeout(90)
def test_peer_that_never_reads_keeps_server_memory_bounded(
    server_with: Callable[..., ServerThread],
) -> None:
    factory = Factory(MeasuredEcho)
    srv = server_with(factory)
    bound = Transport.high_water + Transport.read_size
    data = os.urandom(64 * 1024 * 1024)
    with srv.connect() as sock:
        sent = send_until_blocked(sock, data, stall=0.5, timeout=20)
        proto = factory.built[0]
        live = srv.call(lambda: [t.get_write_buffer_size() for t in srv.server.connections])
        assert len(live) == 1 and live[0] <= bound
        assert proto.pauses >= 1, "the scenario never filled the server's buffer"
        assert proto.max_buffered <= bound
        # now read: every byte comes back, in order
        reply = exchange(sock, data[sent:], timeout=70)
    assert len(reply) == len(data)
    assert reply == data.upper()
    assert proto.max_buffered <= bound


class Pauser(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport
        # a duplicate to peek with: the transport's own socket is not ours to read
        self.sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        transport.pause_reading()
        transport.pause_reading()
        self.reading_after_pause = transport.is_reading()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.transport.write(data.upper())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.sock.close()

    def unread(self) -> int:
        try:
            return len(self.sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return 0


def test_pause_and_resume_reading_are_idempotent(
    server_with: Callable[..., ServerThread], quiet_log: pytest.LogCaptureFixture
) -> None:
    factory = Factory(Pauser)
    srv = server_with(factory)
    with srv.connect() as sock:
        sock.sendall(b"abc")
        assert factory.made.wait(5)
        proto = factory.built[0]
        # the bytes sit in the server's kernel buffer...
        assert srv.wait_for(lambda: proto.unread() == 3)
        # ...and full loop iterations later they are still unread
        for _ in range(3):
            srv.call(lambda: None)
        assert srv.call(lambda: bytes(proto.data)) == b""
        assert proto.reading_after_pause is False

        def resume_twice() -> bool:
            proto.transport.resume_reading()
            proto.transport.resume_reading()
            return proto.transport.is_reading()

        assert srv.call(resume_twice) is True
        assert recv_exactly(sock, 3) == b"ABC"

        def pause_twice_resume_twice() -> None:
            proto.transport.pause_reading()
            proto.transport.pause_reading()
            proto.transport.resume_reading()
            proto.transport.resume_reading()

        srv.call(pause_twice_resume_twice)
        assert round_trip(sock, b"again") == b"AGAIN"
    assert loud_records(quiet_log) == []


@pytest.mark.timeout(60)
def test_flooding_client_does_not_starve_another(upper_server: ServerThread) -> None:
    stop = threading.Event()
    flooded = [0]
    drained = [0]
    flood = upper_server.connect()
    flood.settimeout(10)
    block = os.urandom(256 * 1024)

    def pump() -> None:
        try:
            while not stop.is_set():
                flood.sendall(block)
                flooded[0] += len(block)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                flood.shutdown(socket.SHUT_WR)

    def drain() -> None:
        try:
            while True:
                chunk = flood.recv(1 << 20)
                if not chunk:
                    return
                drained[0] += len(chunk)
        except OSError:
            pass

    threads = [
        threading.Thread(target=pump, daemon=True),
        threading.Thread(target=drain, daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while flooded[0] < 4 * len(block) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flooded[0] >= 4 * len(block), "the flood never got going"
        # the second client is served while the first floods: keep going until
        # the flood has visibly advanced alongside the round trips
        before = flooded[0]
        deadline = time.monotonic() + 20
        with upper_server.connect() as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            i = 0
            while i < 50 or flooded[0] - before < 4 * len(block):
                assert time.monotonic() < deadline, (i, flooded[0] - before)
                msg = f"round trip {i}".encode()
                assert round_trip(sock, msg, timeout=5) == msg.upper()
                i += 1
        assert not stop.is_set()
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        flood.close()
    assert not any(t.is_alive() for t in threads)
    assert drained[0] == flooded[0]

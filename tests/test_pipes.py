"""Pipe transports over real pipes, FIFOs, ptys, sockets and /dev/null.

Every test runs on asyncio's stock loop routed through muxio.transports.pipes
and on muxio's loop (see loop_kinds).  "Nothing was delivered while paused"
is checked with a barrier pipe written at the same moment: once the barrier's
byte has arrived, the loop has polled since the write, so a registered
descriptor would have been served in that same poll.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import gc
import os
import pty
import sys
import tty
import weakref
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest
from conftest import SocketPair
from loop_kinds import loop_fixture, run  # noqa: F401 - loop_fixture is the `loop` fixture

from muxio.transports.pipes import ReadPipeTransport, WritePipeTransport

pytestmark = pytest.mark.timeout(60)

CHUNK = 16 * 1024


class Reader(asyncio.Protocol):
    """Records the callbacks it gets; `until(n)` waits for n bytes in total."""

    pause_at_start = False

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport: Any = None
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self._wanted: list[tuple[int, asyncio.Future[None]]] = []

    def connection_made(self, transport: Any) -> None:
        self.calls.append("made")
        self.transport = transport
        if self.pause_at_start:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.calls[-1] != "data":
            self.calls.append("data")
        self.data += data
        for n, fut in self._wanted:
            if len(self.data) >= n and not fut.done():
                fut.set_result(None)

    def eof_received(self) -> None:
        self.calls.append("eof")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("lost")
        self.lost.set_result(exc)

    async def until(self, n: int) -> None:
        if len(self.data) >= n:
            return
        fut = asyncio.get_running_loop().create_future()
        self._wanted.append((n, fut))
        await fut


class PausedReader(Reader):
    pause_at_start = True


class Writer(asyncio.BaseProtocol):
    """Counts pause/resume; `paused`/`resumed` are replaced after each use."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.calls: list[str] = []
        self.pauses = 0
        self.resumes = 0
        self.paused = self._loop.create_future()
        self.resumed = self._loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = self._loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.calls.append("made")

    def pause_writing(self) -> None:
        self.pauses += 1
        if not self.paused.done():
            self.paused.set_result(None)

    def resume_writing(self) -> None:
        self.resumes += 1
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("lost")
        self.lost.set_result(exc)


class Files:
    """File objects the test opened, closed at the end unless a transport did."""

    def __init__(self) -> None:
        self._all: list[BinaryIO] = []

    def add(self, f: Any) -> Any:
        self._all.append(f)
        return f

    def open(self, file: int | str, mode: str) -> Any:
        return self.add(open(file, mode, buffering=0))

    def pipe(self) -> tuple[Any, Any]:
        r, w = os.pipe()
        return self.open(r, "rb"), self.open(w, "wb")

    def close(self) -> None:
        for f in self._all:
            with contextlib.suppress(OSError):
                f.close()


@pytest.fixture
def files() -> Iterator[Files]:
    f = Files()
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def handler_calls(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """What reached the loop's exception handler."""
    calls: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: calls.append(context))
    return calls


def fill(transport: Any, proto: Writer, limit: int = 16 << 20) -> bytes:
    """Write chunks until the protocol is paused; return everything written."""
    written = bytearray()
    while not proto.pauses:
        assert len(written) < limit, "never paused"
        chunk = os.urandom(CHUNK)
        transport.write(chunk)
        written += chunk
    return bytes(written)


# -- reading -------------------------------------------------------------------


def test_read_pipe_delivers_data_then_eof_then_loses_the_connection(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()

    async def main() -> tuple[Any, Reader, BaseException | None]:
        transport, proto = await loop.connect_read_pipe(Reader, r)
        assert proto.calls == ["made"], "connection_made runs before connect returns"
        assert proto.transport is transport
        assert isinstance(transport, ReadPipeTransport)
        assert transport.get_extra_info("pipe") is r
        assert not os.get_blocking(r.fileno())
        assert transport.is_reading()
        w.write(b"hello ")
        w.write(b"world")
        w.close()
        return transport, proto, await proto.lost

    transport, proto, exc = run(loop, main())
    assert exc is None
    assert bytes(proto.data) == b"hello world"
    assert proto.calls == ["made", "data", "eof", "lost"]
    assert r.closed
    assert transport.is_closing()
    assert not transport.is_reading()
    assert transport.get_protocol() is None


def test_pipe_transports_refuse_regular_files_with_asyncios_error(
    loop: asyncio.AbstractEventLoop, tmp_path: Any
) -> None:
    path = tmp_path / "regular"
    path.write_bytes(b"x")
    stock = asyncio.new_event_loop()
    try:
        for method in ("connect_read_pipe", "connect_write_pipe"):
            with open(path, "r+b", buffering=0) as f:
                with pytest.raises(ValueError) as theirs:
                    stock.run_until_complete(getattr(stock, method)(asyncio.Protocol, f))
                with pytest.raises(ValueError) as ours:
                    run(loop, getattr(loop, method)(asyncio.Protocol, f))
                assert str(ours.value) == str(theirs.value)
                assert not f.closed
    finally:
        stock.close()
    with open(path, "rb", buffering=0) as f:
        with pytest.raises(ValueError):
            ReadPipeTransport(loop, f, asyncio.Protocol())
        assert os.get_blocking(f.fileno()), "a refused file is left as it was"


def test_read_pipe_honours_pause_from_connection_made_and_resumes(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()
    barrier_r, barrier_w = files.pipe()

    async def main() -> None:
        transport, proto = await loop.connect_read_pipe(PausedReader, r)
        barrier_t, barrier = await loop.connect_read_pipe(Reader, barrier_r)
        assert not transport.is_reading()
        w.write(b"held")
        barrier_w.write(b"1")
        await barrier.until(1)
        assert proto.data == b"", "read although paused in connection_made"

        transport.resume_reading()
        assert transport.is_reading()
        await proto.until(4)
        transport.pause_reading()
        transport.pause_reading()  # harmless twice
        w.write(b"more")
        barrier_w.write(b"2")
        await barrier.until(2)
        assert proto.data == b"held", "read although paused"

        transport.resume_reading()
        transport.resume_reading()
        await proto.until(8)
        assert proto.data == b"heldmore"
        transport.close()
        assert not transport.is_reading()
        transport.resume_reading()  # no effect once closing
        assert not transport.is_reading()
        assert await proto.lost is None
        assert "eof" not in proto.calls
        barrier_t.close()
        await barrier.lost

    run(loop, main())


def test_closing_a_read_pipe_closes_it_so_the_writer_gets_epipe(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()

    async def main() -> None:
        transport, proto = await loop.connect_read_pipe(Reader, r)
        transport.close()
        transport.close()
        assert await proto.lost is None
        assert proto.calls == ["made", "lost"]

    run(loop, main())
    assert r.closed
    with pytest.raises(BrokenPipeError):
        w.write(b"x")


def test_a_failing_data_received_closes_the_pipe_with_its_error(
    loop: asyncio.AbstractEventLoop, files: Files, handler_calls: list[dict[str, Any]]
) -> None:
    r, w = files.pipe()
    boom = RuntimeError("boom")

    class Failing(Reader):
        def data_received(self, data: bytes) -> None:
            raise boom

    async def main() -> BaseException | None:
        _, proto = await loop.connect_read_pipe(Failing, r)
        w.write(b"x")
        return await proto.lost

    assert run(loop, main()) is boom
    assert [c["exception"] for c in handler_calls] == [boom]
    assert "data_received" in handler_calls[0]["message"]
    assert r.closed


def test_connection_lost_breaks_the_transport_protocol_cycle(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()

    async def main() -> tuple[Any, Any, weakref.ref[Any], weakref.ref[Any]]:
        rt, rp = await loop.connect_read_pipe(Reader, r)
        wt, wp = await loop.connect_write_pipe(Writer, w)
        wt.close()
        await rp.lost
        await wp.lost
        return rt, wt, weakref.ref(rp), weakref.ref(wp)

    gc.disable()
    try:
        rt, wt, read_ref, write_ref = run(loop, main())
        assert rt.get_protocol() is None
        assert wt.get_protocol() is None
        assert read_ref() is None, "the read protocol outlived its transport's connection_lost"
        assert write_ref() is None, "the write protocol outlived its transport's connection_lost"
    finally:
        gc.enable()


# -- other kinds of file ---------------------------------------------------------


def test_fifo_round_trip_ends_with_eof(
    loop: asyncio.AbstractEventLoop, files: Files, tmp_path: Any
) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    r = files.open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
    w = files.open(os.open(path, os.O_WRONLY), "wb")
    payload = os.urandom(300_000)

    async def main() -> Reader:
        _, rp = await loop.connect_read_pipe(Reader, r)
        wt, wp = await loop.connect_write_pipe(Writer, w)
        wt.write(payload)
        wt.close()
        assert await wp.lost is None
        assert await rp.lost is None
        return rp

    rp = run(loop, main())
    assert rp.data == payload
    assert rp.calls[-2:] == ["eof", "lost"]


def test_socketpair_round_trip_ends_with_eof(
    loop: asyncio.AbstractEventLoop, socket_pair: SocketPair
) -> None:
    a, b = socket_pair
    payload = os.urandom(500_000)

    async def main() -> Reader:
        _, rp = await loop.connect_read_pipe(Reader, a)
        wt, wp = await loop.connect_write_pipe(Writer, b)
        assert wt.get_extra_info("pipe") is b
        wt.write(payload)
        wt.close()
        assert await wp.lost is None
        assert await rp.lost is None
        return rp

    rp = run(loop, main())
    assert rp.data == payload
    assert rp.calls[-2:] == ["eof", "lost"]


def test_pty_round_trip_in_both_directions(loop: asyncio.AbstractEventLoop, files: Files) -> None:
    master_fd, slave_fd = pty.openpty()
    tty.setraw(slave_fd)
    master_r = files.open(master_fd, "rb")
    master_w = files.open(os.dup(master_fd), "wb")
    slave_r = files.open(slave_fd, "rb")
    slave_w = files.open(os.dup(slave_fd), "wb")
    to_slave = os.urandom(100_000)
    to_master = os.urandom(100_000)

    async def main() -> tuple[Reader, Reader]:
        mt, at_master = await loop.connect_read_pipe(Reader, master_r)
        st, at_slave = await loop.connect_read_pipe(Reader, slave_r)
        mw, _ = await loop.connect_write_pipe(Writer, master_w)
        sw, _ = await loop.connect_write_pipe(Writer, slave_w)
        mw.write(to_slave)
        sw.write(to_master)
        await at_slave.until(len(to_slave))
        await at_master.until(len(to_master))
        for transport in (mt, st, mw, sw):
            transport.close()
        await at_master.lost
        await at_slave.lost
        return at_master, at_slave

    at_master, at_slave = run(loop, main())
    assert at_slave.data == to_slave
    assert at_master.data == to_master


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's pty EIO")
def test_pty_master_reports_a_closed_slave_quietly(
    loop: asyncio.AbstractEventLoop, files: Files, handler_calls: list[dict[str, Any]]
) -> None:
    master_fd, slave_fd = pty.openpty()
    tty.setraw(slave_fd)
    master = files.open(master_fd, "rb")

    async def main() -> tuple[Reader, BaseException | None]:
        _, proto = await loop.connect_read_pipe(Reader, master)
        os.write(slave_fd, b"bye")
        os.close(slave_fd)
        return proto, await proto.lost

    proto, exc = run(loop, main())
    assert proto.data == b"bye"
    assert isinstance(exc, OSError) and exc.errno == errno.EIO, "as asyncio reports it"
    assert handler_calls == []
    assert master.closed


def test_write_pipe_to_a_character_device_is_not_mistaken_for_a_closed_reader(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    # /dev/null always polls readable: watching it would report the reader gone.
    devnull = files.open(os.devnull, "wb")
    barrier_r, barrier_w = files.pipe()

    async def main() -> None:
        transport, proto = await loop.connect_write_pipe(Writer, devnull)
        barrier_t, barrier = await loop.connect_read_pipe(Reader, barrier_r)
        transport.write(os.urandom(1 << 20))
        assert transport.get_write_buffer_size() == 0
        barrier_w.write(b"1")
        await barrier.until(1)
        assert not proto.lost.done()
        assert not transport.is_closing()
        transport.close()
        barrier_t.close()
        assert await proto.lost is None
        await barrier.lost

    run(loop, main())


# -- writing ---------------------------------------------------------------------


def test_write_pipe_buffers_what_the_pipe_refuses_and_close_flushes_it_all(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()
    payload = os.urandom(1 << 20)

    async def main() -> tuple[Reader, Writer]:
        wt, wp = await loop.connect_write_pipe(Writer, w)
        assert isinstance(wt, WritePipeTransport)
        assert wp.calls == ["made"]
        assert wt.get_extra_info("pipe") is w
        assert not os.get_blocking(w.fileno())
        wt.write(payload)
        assert 0 < wt.get_write_buffer_size() < len(payload)
        assert wp.pauses == 1
        wt.close()
        assert wt.is_closing()
        _, rp = await loop.connect_read_pipe(Reader, r)
        assert await wp.lost is None
        assert await rp.lost is None
        assert wt.get_write_buffer_size() == 0
        return rp, wp

    rp, wp = run(loop, main())
    assert rp.data == payload
    assert wp.resumes == 1
    assert w.closed


def test_writer_pauses_while_the_reader_reads_nothing_and_resumes_at_low_water(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()

    async def main() -> tuple[bytes, Reader]:
        rt, rp = await loop.connect_read_pipe(PausedReader, r)
        wt, wp = await loop.connect_write_pipe(Writer, w)
        low, high = wt.get_write_buffer_limits()
        assert (low, high) == (16 * 1024, 64 * 1024)
        written = fill(wt, wp)
        assert high < wt.get_write_buffer_size() <= high + CHUNK, "memory bounded by high water"
        more = os.urandom(CHUNK)
        wt.write(more)
        assert wp.pauses == 1, "paused once only"
        rt.resume_reading()
        await wp.resumed
        assert wt.get_write_buffer_size() <= low
        assert wp.resumes == 1
        wt.close()
        await rp.lost
        return written + more, rp

    written, rp = run(loop, main())
    assert rp.data == written


def test_write_buffer_limits_follow_asyncios_rules(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    _r, w = files.pipe()

    async def main() -> None:
        wt, wp = await loop.connect_write_pipe(Writer, w)
        wt.set_write_buffer_limits(high=100)
        assert wt.get_write_buffer_limits() == (25, 100)
        wt.set_write_buffer_limits(low=10)
        assert wt.get_write_buffer_limits() == (10, 40)
        wt.set_write_buffer_limits()
        assert wt.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        with pytest.raises(ValueError, match=r"high \(1\) must be >= low \(2\) must be >= 0"):
            wt.set_write_buffer_limits(high=1, low=2)
        wt.set_write_buffer_limits()
        wt.write(os.urandom(70 * 1024))  # the pipe takes its fill, the rest is buffered
        assert 0 < wt.get_write_buffer_size() <= 64 * 1024
        assert wp.pauses == 0
        wt.set_write_buffer_limits(high=1000)
        assert wp.pauses == 1, "lowering the mark under what is buffered pauses at once"
        wt.abort()
        await wp.lost

    run(loop, main())


def test_reader_going_away_with_data_buffered_loses_with_broken_pipe(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()

    async def main() -> Any:
        wt, wp = await loop.connect_write_pipe(Writer, w)
        wt.write(os.urandom(1 << 20))
        assert wt.get_write_buffer_size() > 0
        r.close()
        exc = await wp.lost
        assert wt.get_write_buffer_size() == 0
        return exc

    assert isinstance(run(loop, main()), BrokenPipeError)
    assert w.closed


def test_reader_going_away_is_noticed_while_the_writer_is_idle(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()

    async def main() -> BaseException | None:
        wt, wp = await loop.connect_write_pipe(Writer, w)
        wt.write(b"unread")
        r.close()
        return await wp.lost

    assert run(loop, main()) is None, "nothing was pending, so nothing was lost (as asyncio)"
    assert w.closed


def test_writing_to_a_closed_reader_loses_with_broken_pipe_and_later_writes_are_dropped(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()

    async def main() -> Any:
        wt, wp = await loop.connect_write_pipe(Writer, w)
        r.close()
        wt.write(b"x")  # before the loop polls: the write itself fails
        assert wt.is_closing()
        for _ in range(10):
            wt.write(b"dropped")
        assert wt.get_write_buffer_size() == 0
        return await wp.lost

    assert isinstance(run(loop, main()), BrokenPipeError)


def test_write_eof_flushes_then_the_reader_sees_eof(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()
    payload = os.urandom(200_000)

    async def main() -> tuple[Reader, BaseException | None]:
        wt, wp = await loop.connect_write_pipe(Writer, w)
        assert wt.can_write_eof()
        wt.write(payload)
        wt.write_eof()
        wt.write_eof()
        assert wt.is_closing()
        wt.write(b"too late")
        _, rp = await loop.connect_read_pipe(Reader, r)
        exc = await wp.lost
        await rp.lost
        return rp, exc

    rp, exc = run(loop, main())
    assert exc is None
    assert rp.data == payload
    assert rp.calls[-2:] == ["eof", "lost"]


def test_abort_drops_the_buffer_and_closes_at_once(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()
    payload = os.urandom(1 << 20)

    async def main() -> Reader:
        wt, wp = await loop.connect_write_pipe(Writer, w)
        wt.write(payload)
        wt.abort()
        assert wt.get_write_buffer_size() == 0
        assert await wp.lost is None
        _, rp = await loop.connect_read_pipe(Reader, r)
        await rp.lost
        return rp

    rp = run(loop, main())
    assert 0 < len(rp.data) < len(payload)
    assert rp.data == payload[: len(rp.data)]
    assert rp.calls[-2:] == ["eof", "lost"]


class Boom(BaseException):
    """Not an Exception: what `except Exception` would let through to the loop."""


def test_base_exception_in_data_received_is_fatal_and_the_loop_goes_on(
    loop: asyncio.AbstractEventLoop, files: Files, handler_calls: list[dict[str, Any]]
) -> None:
    r, w = files.pipe()

    class Raiser(Reader):
        def data_received(self, data: bytes) -> None:
            raise Boom("protocol bug")

    async def main() -> tuple[Any, BaseException | None]:
        rt, rp = await loop.connect_read_pipe(Raiser, r)
        w.write(b"x")
        exc = await rp.lost
        await asyncio.sleep(0)  # the loop keeps turning
        return rt, exc

    rt, exc = run(loop, main())
    assert isinstance(exc, Boom)
    assert [c["message"] for c in handler_calls] == [
        "Fatal error: protocol.data_received() call failed."
    ]
    assert handler_calls[0]["exception"] is exc
    assert rt.get_protocol() is None and rt.is_closing()


@pytest.mark.parametrize("buffered", [False, True], ids=["empty-buffer", "full-buffer"])
def test_write_refuses_what_is_not_bytes_like_with_asyncios_message(
    loop: asyncio.AbstractEventLoop, files: Files, buffered: bool
) -> None:
    _r, w = files.pipe()

    async def main() -> list[str]:
        wt, wp = await loop.connect_write_pipe(Writer, w)
        if buffered:
            fill(wt, wp)
        before = wt.get_write_buffer_size()
        assert (before > 0) is buffered
        messages = []
        for data in ("text", array.array("b", b"ab"), 42):
            with pytest.raises(TypeError) as info:
                wt.write(data)
            messages.append(str(info.value))
        assert wt.get_write_buffer_size() == before
        wt.abort()
        await wp.lost
        return messages

    assert run(loop, main()) == [
        f"data argument must be a bytes-like object, not {name!r}"
        for name in ("str", "array", "int")
    ]


def test_write_copies_mutable_buffers_and_rejects_text(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    r, w = files.pipe()
    ints = array.array("i", range(1000))

    async def main() -> Reader:
        rt, rp = await loop.connect_read_pipe(PausedReader, r)
        wt, wp = await loop.connect_write_pipe(Writer, w)
        before = len(fill(wt, wp))  # so the next writes are buffered
        mutable = bytearray(b"A" * 100)
        wt.write(mutable)
        mutable[:] = b"B" * 100
        wt.write(memoryview(ints))
        with pytest.raises(TypeError, match="bytes-like"):
            wt.write("text")  # type: ignore[arg-type]
        wt.close()
        rt.resume_reading()
        await rp.lost
        assert rp.data[before : before + 100] == b"A" * 100
        assert rp.data[before + 100 :] == ints.tobytes()
        return rp

    run(loop, main())


def test_connect_write_pipe_returns_after_connection_made_and_signals_nonblocking(
    loop: asyncio.AbstractEventLoop, files: Files
) -> None:
    _r, w = files.pipe()
    assert os.get_blocking(w.fileno())

    async def main() -> None:
        wt, wp = await loop.connect_write_pipe(Writer, w)
        assert wp.calls == ["made"]
        assert not os.get_blocking(w.fileno())
        assert repr(wt).startswith("<WritePipeTransport")
        wt.close()
        await wp.lost

    run(loop, main())

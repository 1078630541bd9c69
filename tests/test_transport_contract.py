"""The stream transport's contract, on muxio's loop and on asyncio's side by side.

Each test runs once with asyncio's own selector transport, the reference, and
once with muxio's, over a real Unix socketpair, and asserts the same outcome
for both: the write argument check, protocol callbacks that raise, and flow
control callbacks that raise.
"""

from __future__ import annotations

import array
import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


@pytest.fixture
def handler_calls(aloop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    aloop.set_exception_handler(lambda _loop, context: calls.append(context))
    return calls


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(WAIT)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.paused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.paused += 1


def run(loop: asyncio.AbstractEventLoop, aw: Any) -> Any:
    return loop.run_until_complete(asyncio.wait_for(aw, WAIT))


def type_error_message(transport: Any, data: Any) -> str:
    with pytest.raises(TypeError) as info:
        transport.write(data)
    return str(info.value)


NOT_BYTES = [
    ("text", "data argument must be a bytes-like object, not 'str'"),
    (array.array("b", b"ab"), "data argument must be a bytes-like object, not 'array'"),
    (42, "data argument must be a bytes-like object, not 'int'"),
]


@pytest.mark.parametrize("buffered", [False, True], ids=["empty-buffer", "full-buffer"])
def test_write_refuses_what_is_not_bytes_like_with_asyncios_message(
    aloop: asyncio.AbstractEventLoop, pair: tuple[socket.socket, socket.socket], buffered: bool
) -> None:
    a, _peer = pair

    async def main() -> tuple[list[str], int]:
        transport, _ = await aloop.create_connection(Recorder, sock=a)
        if buffered:
            transport.set_write_buffer_limits(high=1 << 30)
            while not transport.get_write_buffer_size():
                transport.write(b"x" * 65536)
        before = transport.get_write_buffer_size()
        messages = [type_error_message(transport, data) for data, _ in NOT_BYTES]
        assert transport.get_write_buffer_size() == before, "nothing was taken"
        transport.abort()
        return messages, before

    messages, before = run(aloop, main())
    assert messages == [message for _, message in NOT_BYTES]
    assert (before > 0) is buffered


class Boom(BaseException):
    """Not an Exception: what `except Exception` would let through to the loop."""


class RaisesInDataReceived(Recorder):
    def data_received(self, data: bytes) -> None:
        raise Boom("protocol bug")


@pytest.mark.parametrize("exc_type", [Boom, asyncio.CancelledError])
def test_base_exception_in_data_received_is_fatal_and_the_loop_goes_on(
    aloop: asyncio.AbstractEventLoop,
    pair: tuple[socket.socket, socket.socket],
    handler_calls: list[dict[str, Any]],
    exc_type: type[BaseException],
) -> None:
    a, peer = pair

    class Raiser(Recorder):
        def data_received(self, data: bytes) -> None:
            raise exc_type("protocol bug")

    async def main() -> tuple[Any, BaseException | None]:
        transport, proto = await aloop.create_connection(Raiser, sock=a)
        peer.sendall(b"hello")
        exc = await proto.lost
        await asyncio.sleep(0)  # the loop keeps turning
        return transport, exc

    transport, exc = run(aloop, main())
    assert isinstance(exc, exc_type)
    assert [c["message"] for c in handler_calls] == [
        "Fatal error: protocol.data_received() call failed."
    ]
    assert handler_calls[0]["exception"] is exc
    assert handler_calls[0]["transport"] is transport
    assert transport.is_closing()
    assert transport.get_protocol() is None, "the transport <-> protocol cycle is broken"
    assert peer.recv(16) == b"", "the socket was closed"


def test_raising_pause_writing_is_reported_and_the_connection_stays_open(
    aloop: asyncio.AbstractEventLoop,
    pair: tuple[socket.socket, socket.socket],
    handler_calls: list[dict[str, Any]],
) -> None:
    a, peer = pair

    class BadPause(Recorder):
        def pause_writing(self) -> None:
            super().pause_writing()
            raise RuntimeError("cannot pause")

    async def main() -> tuple[Any, BadPause, int]:
        transport, proto = await aloop.create_connection(BadPause, sock=a)
        transport.set_write_buffer_limits(high=1000)
        written = 0
        while not proto.paused:
            transport.write(b"y" * 4096)
            written += 4096
        assert not transport.is_closing()
        transport.write_eof()
        received = 0
        while received < written:
            chunk = await aloop.sock_recv(peer, 1 << 20)
            assert chunk, "the connection ended before every byte arrived"
            received += len(chunk)
        assert await aloop.sock_recv(peer, 16) == b""
        transport.close()
        assert await proto.lost is None
        return transport, proto, received

    peer.setblocking(False)
    _transport, proto, _ = run(aloop, main())
    assert proto.paused == 1
    assert [c["message"] for c in handler_calls] == ["protocol.pause_writing() failed"]
    assert isinstance(handler_calls[0]["exception"], RuntimeError)


# -- the completion order of create_connection and its kin ----------------------

CONNECTS = ["create_connection", "create_unix_connection", "connect_accepted_socket"]


def connect(loop: asyncio.AbstractEventLoop, how: str, factory: Any, sock: socket.socket) -> Any:
    if how == "create_connection":
        return loop.create_connection(factory, sock=sock)
    if how == "create_unix_connection":
        return loop.create_unix_connection(factory, sock=sock)
    return loop.connect_accepted_socket(factory, sock)


@pytest.mark.parametrize("how", CONNECTS)
def test_connection_made_runs_a_turn_later_before_the_caller_resumes(
    aloop: asyncio.AbstractEventLoop, pair: tuple[socket.socket, socket.socket], how: str
) -> None:
    """asyncio schedules `connection_made`, then wakes the waiter: the call always yields."""
    a, _peer = pair
    order: list[str] = []

    class Ordered(Recorder):
        def __init__(self) -> None:
            super().__init__()
            order.append("factory")

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            order.append("connection_made")

    async def main() -> None:
        task = asyncio.ensure_future(connect(aloop, how, Ordered, a))
        await asyncio.sleep(0)
        order.append("one turn later")
        transport, _ = await task
        order.append("returned")
        transport.close()

    run(aloop, main())
    assert order == ["factory", "one turn later", "connection_made", "returned"]


@pytest.mark.parametrize("how", CONNECTS)
def test_connection_made_that_raises_goes_to_the_handler_and_the_call_returns(
    aloop: asyncio.AbstractEventLoop,
    pair: tuple[socket.socket, socket.socket],
    handler_calls: list[dict[str, Any]],
    how: str,
) -> None:
    a, peer = pair

    class RaisesInConnectionMade(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            raise Boom("connection_made failed")

        def data_received(self, data: bytes) -> None:
            self.got = data

    async def main() -> tuple[bool, bytes]:
        transport, proto = await connect(aloop, how, RaisesInConnectionMade, a)
        closing = transport.is_closing()
        peer.sendall(b"still read")
        while not hasattr(proto, "got"):
            await asyncio.sleep(0.01)
        transport.close()
        await proto.lost
        return closing, proto.got

    closing, got = run(aloop, main())
    assert (closing, got) == (False, b"still read")
    assert [type(c.get("exception")) for c in handler_calls] == [Boom]
    assert "connection_made" in handler_calls[0]["message"]


@pytest.mark.parametrize("how", CONNECTS)
def test_cancelled_a_turn_after_it_starts_the_call_detaches_the_socket(
    aloop: asyncio.AbstractEventLoop, pair: tuple[socket.socket, socket.socket], how: str
) -> None:
    a, _peer = pair
    made: list[bool] = []

    class Made(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            made.append(True)

    async def main() -> None:
        task = asyncio.ensure_future(connect(aloop, how, Made, a))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(aloop, main())
    assert a.fileno() == -1
    assert made == [True]

"""muxio's loop as an asyncio event loop: the entry points and the contract.

CPython's own suite (conformance/asyncio_suite.py) is the broad bar; these
tests pin down what muxio adds or had to get right itself, on real sockets.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import weakref

import pytest

import muxio
from muxio import EventLoop


def run(loop: EventLoop, coro: object, timeout: float = 10.0) -> object:
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


# -- entry points --------------------------------------------------------------


async def _which_loop() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_muxio_run_runs_a_coroutine_on_a_muxio_loop() -> None:
    assert muxio.run(_which_loop()) is EventLoop


def test_muxio_run_passes_the_poller_through() -> None:
    async def poller_name() -> str:
        return asyncio.get_running_loop().poller.name  # type: ignore[attr-defined, no-any-return]

    assert muxio.run(poller_name(), poller="poll") == "poll"


def test_policy_makes_every_new_loop_a_muxio_loop() -> None:
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(muxio.EventLoopPolicy())
    try:
        assert asyncio.run(_which_loop()) is EventLoop
    finally:
        asyncio.set_event_loop_policy(old)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_takes_muxio_as_loop_factory() -> None:
    assert asyncio.run(_which_loop(), loop_factory=muxio.new_event_loop) is EventLoop  # type: ignore[call-arg]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is 3.11+")
def test_asyncio_runner_takes_muxio_as_loop_factory() -> None:
    with asyncio.Runner(loop_factory=muxio.new_event_loop) as runner:
        assert runner.run(_which_loop()) is EventLoop
        assert runner.run(_which_loop()) is EventLoop  # the same loop, twice


# -- callbacks, contexts, the exception handler ----------------------------------


def test_call_soon_runs_in_the_given_context(loop: EventLoop) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inner")
    seen: list[str] = []
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["inner", "outer"]


def test_callback_exception_reaches_the_exception_handler_with_its_handle(
    loop: EventLoop,
) -> None:
    contexts: list[dict[str, object]] = []
    loop.set_exception_handler(lambda loop, context: contexts.append(context))

    def boom() -> None:
        raise ValueError("boom")

    handle = loop.call_soon(boom)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ValueError)
    assert contexts[0]["handle"] is handle
    assert "boom" in str(contexts[0]["message"])


def test_call_soon_on_a_closed_loop_raises() -> None:
    loop = muxio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(lambda: None)


def test_debug_mode_refuses_call_soon_from_another_thread(loop: EventLoop) -> None:
    loop.set_debug(True)
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            loop.call_soon(lambda: None)
        except RuntimeError as exc:
            errors.append(exc)
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(threading.Thread(target=other_thread).start)
    loop.run_forever()
    assert len(errors) == 1
    assert "Non-thread-safe" in str(errors[0])


def test_timers_cancelled_after_they_ran_do_not_count_as_cancelled(loop: EventLoop) -> None:
    fired: list[int] = []
    handles = [loop.call_later(0, fired.append, i) for i in range(10)]
    last = loop.create_future()
    loop.call_later(0, last.set_result, None)  # same deadline: runs after the ten
    run(loop, last)
    before = loop._timers_cancelled  # run()'s own wait_for timer may count
    for handle in handles:
        handle.cancel()
    assert fired == list(range(10))
    assert loop._timers_cancelled == before


def test_task_factory_is_used_and_named(loop: EventLoop) -> None:
    made: list[asyncio.Task[object]] = []

    def factory(
        loop: asyncio.AbstractEventLoop, coro: object, **kwargs: object
    ) -> asyncio.Task[object]:
        task = asyncio.Task(coro, loop=loop, **kwargs)  # type: ignore[arg-type]
        made.append(task)
        return task

    loop.set_task_factory(factory)

    async def main() -> str:
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0), name="named")
        await task
        return task.get_name()

    assert run(loop, main()) == "named"
    assert [t.get_name() for t in made].count("named") == 1


def test_async_generators_are_finalised_by_shutdown_asyncgens(loop: EventLoop) -> None:
    closed: list[bool] = []

    async def agen():  # type: ignore[no-untyped-def]
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main() -> None:
        gen = agen()
        await gen.__anext__()  # left suspended on purpose
        main.gen = gen  # type: ignore[attr-defined]

    run(loop, main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == [True]


def test_run_in_executor_and_getaddrinfo(loop: EventLoop) -> None:
    async def main() -> tuple[int, list[object]]:
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(None, sum, [1, 2, 3])
        infos = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        return value, infos  # type: ignore[return-value]

    value, infos = run(loop, main())  # type: ignore[misc]
    assert value == 6
    assert infos[0][4] == ("127.0.0.1", 80)  # type: ignore[index]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_signal_handler_runs_on_the_loop(loop: EventLoop) -> None:
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, got.set_result, "handled")
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        assert run(loop, got) == "handled"  # awaited, bounded by run()'s timeout
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)
    with pytest.raises(RuntimeError, match="cannot be caught"):
        loop.add_signal_handler(signal.SIGKILL, print)
    with pytest.raises(ValueError):
        loop.add_signal_handler(0, print)


# -- streams and servers ---------------------------------------------------------


async def _upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data.upper())
        await writer.drain()
    writer.close()


def test_streams_echo_one_mebibyte_byte_exact(loop: EventLoop) -> None:
    payload = os.urandom(1 << 20)

    async def main() -> bytes:
        server = await asyncio.start_server(_upper, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        got = await reader.read(-1)
        await sender
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got

    assert run(loop, main()) == payload.upper()


def test_unix_streams_round_trip(loop: EventLoop, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "s.sock")

    async def main() -> bytes:
        server = await asyncio.start_unix_server(_upper, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"unix")
        writer.write_eof()
        got = await reader.read(-1)
        writer.close()
        server.close()
        await server.wait_closed()
        return got

    assert run(loop, main()) == b"UNIX"
    assert os.path.exists(path) == (sys.version_info < (3, 13))  # 3.13's cleanup_socket


def test_server_wait_closed_waits_for_the_last_connection_from_3_12_1(loop: EventLoop) -> None:
    async def main() -> list[str]:
        order: list[str] = []
        server = await asyncio.start_server(_upper, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        await reader.readexactly(1)
        server.close()
        assert server.sockets == ()
        assert not server.is_serving()

        async def closer() -> None:
            await asyncio.sleep(0)  # wait_closed() is waiting by now, or has returned
            order.append("client closes")
            writer.close()

        task = asyncio.ensure_future(closer())
        await server.wait_closed()
        order.append("wait_closed returned")
        await task
        return order

    waits = sys.version_info >= (3, 12, 1)
    first, second = ("client closes", "wait_closed returned")[:: 1 if waits else -1]
    assert run(loop, main()) == [first, second]


def test_serve_forever_ends_when_cancelled_and_closes_the_server(loop: EventLoop) -> None:
    async def main() -> bool:
        server = await asyncio.start_server(_upper, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return server.is_serving()

    assert run(loop, main()) is False


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost = asyncio.get_event_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


def test_transport_write_contract(loop: EventLoop) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_upper, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, proto = await loop.create_connection(_Recorder, "127.0.0.1", port)
        assert isinstance(transport, asyncio.Transport)
        with pytest.raises(TypeError):
            transport.write("text")  # type: ignore[attr-defined]
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)  # type: ignore[attr-defined]
        transport.set_write_buffer_limits(high=1000)  # type: ignore[attr-defined]
        assert transport.get_write_buffer_limits() == (250, 1000)  # type: ignore[attr-defined]
        assert transport.get_write_buffer_size() == 0  # type: ignore[attr-defined]
        assert transport.is_reading()  # type: ignore[attr-defined]
        transport.write(bytearray(b"abc"))  # type: ignore[attr-defined]
        transport.write_eof()  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match="write_eof"):
            transport.write(b"more")  # type: ignore[attr-defined]
        assert await proto.lost is None  # type: ignore[attr-defined]
        assert bytes(proto.data) == b"ABC"  # type: ignore[attr-defined]
        assert transport.get_protocol() is None  # the cycle is broken
        server.close()
        await server.wait_closed()

    run(loop, main())


class _Buffered(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(4096)
        self.view = memoryview(self.buf)
        self.got = bytearray()
        self.done = asyncio.get_event_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.got += self.view[:nbytes]

    def eof_received(self) -> None:
        self.done.set_result(bytes(self.got))


def test_buffered_protocol_reads_into_its_own_buffer(loop: EventLoop) -> None:
    payload = os.urandom(300_000)

    async def main() -> bytes:
        server = await asyncio.start_server(_upper, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, proto = await loop.create_connection(_Buffered, "127.0.0.1", port)
        transport.write(payload)  # type: ignore[attr-defined]
        transport.write_eof()  # type: ignore[attr-defined]
        got: bytes = await proto.done  # type: ignore[attr-defined]
        transport.close()
        server.close()
        await server.wait_closed()
        return got

    assert run(loop, main()) == payload.upper()


def test_closed_connections_are_freed_without_the_garbage_collector(loop: EventLoop) -> None:
    refs: list[weakref.ref[object]] = []

    async def main() -> None:
        server = await asyncio.start_server(_upper, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(20):
            transport, proto = await loop.create_connection(_Recorder, "127.0.0.1", port)
            refs.append(weakref.ref(transport))
            refs.append(weakref.ref(proto))
            transport.close()
            await proto.lost  # type: ignore[attr-defined]
            del transport, proto
        server.close()
        await server.wait_closed()

    gc.disable()
    try:
        run(loop, main())
        assert sum(r() is not None for r in refs) == 0
    finally:
        gc.enable()


def test_plain_asyncio_protocol_drains_and_stops_under_graceful_shutdown(
    loop: EventLoop,
) -> None:
    """muxio.Server's shutdown asks `is_busy()`; a plain asyncio.Protocol has none."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    server = muxio.Server(loop, Echo, [sock])  # type: ignore[arg-type]
    server.start()
    port = sock.getsockname()[1]

    async def main() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        got = await reader.readexactly(4)
        stopped = loop.create_future()
        server.shutdown(5.0, lambda: stopped.set_result(True))
        assert await stopped
        assert await reader.read() == b""  # our FIN after the flush
        writer.close()
        return got

    assert run(loop, main()) == b"ping"
    assert server.connections == set()


# -- the watchdog ----------------------------------------------------------------


async def blocks_the_loop() -> None:
    await asyncio.sleep(0)
    time.sleep(0.3)


def test_watchdog_names_the_coroutine_and_task_that_blocked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")

    async def main() -> None:
        await asyncio.get_running_loop().create_task(blocks_the_loop(), name="the-blocker")

    muxio.run(main(), slow_callback_ms=100)
    slow = [r.getMessage() for r in caplog.records if "slow callback" in r.getMessage()]
    assert slow, "no slow-callback warning"
    assert any(
        "coroutine blocks_the_loop() in task 'the-blocker' at" in m and "test_asyncio_api.py" in m
        for m in slow
    ), slow

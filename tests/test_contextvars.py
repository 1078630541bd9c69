"""Context variables in protocol callbacks, on asyncio's loop and muxio's side by side.

Each test runs once on asyncio's own loop (its selector and unix transports,
the reference) and once on muxio's, and asserts the same observations for
both: what a callback reads (a value set before `create_server` or
`create_connection`, or by an earlier callback of the same connection), and
that nothing a callback sets escapes to the caller, to another connection,
or past `run()`.  The observed sequences are asyncio's (3.11-3.13 agree):
`connection_made` runs in a copy of the connection's context of its own, so
what it sets is not seen by `data_received`, while what `data_received` sets
is seen by the next event of the same reader.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import ssl
import sys
import tempfile
from typing import Any

import pytest

import muxio

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
cv: contextvars.ContextVar[str] = contextvars.ContextVar("cv", default="unset")


def run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, WAIT)

    result = loop.run_until_complete(bounded())
    assert cv.get() == "unset", "a value leaked out of the loop"
    return result


class Recorder:
    """Logs `(tag, event, cv.get())` at each callback, then sets cv to `tag:event`."""

    def __init__(self, tag: str, log: list[tuple[str, str, str]]) -> None:
        self.tag = tag
        self.log = log
        self.transport: Any = None
        self.lost = asyncio.get_running_loop().create_future()
        self.made = asyncio.get_running_loop().create_future()
        self.event("factory")

    def event(self, name: str) -> None:
        self.log.append((self.tag, name, cv.get()))
        cv.set(f"{self.tag}:{name}")

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.event("made")
        self.made.set_result(None)

    def eof_received(self) -> None:
        self.event("eof")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.event("lost")
        if not self.lost.done():
            self.lost.set_result(None)


class StreamRecorder(Recorder, asyncio.Protocol):
    def __init__(self, tag: str, log: list[tuple[str, str, str]]) -> None:
        super().__init__(tag, log)
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def data_received(self, data: bytes) -> None:
        self.event("data")
        self.got.put_nowait(data)


class BufferedRecorder(Recorder, asyncio.BufferedProtocol):
    def __init__(self, tag: str, log: list[tuple[str, str, str]]) -> None:
        super().__init__(tag, log)
        self.buf = bytearray(100)
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def get_buffer(self, sizehint: int) -> bytearray:
        self.event("get_buffer")
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.event("updated")
        self.got.put_nowait(bytes(self.buf[:nbytes]))


async def first_served(served: list[Any]) -> Any:
    """The server's first protocol once it has `connection_made` (asyncio accepts in a task)."""
    while not served:
        await asyncio.sleep(0.001)
    await served[0].made
    return served[0]


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        assert chunk
        data += chunk
    return data


def test_the_issue_script_reads_main(aloop: asyncio.AbstractEventLoop) -> None:
    async def main() -> bytes:
        cv.set("main")

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(cv.get().encode())
            await w.drain()
            w.close()

        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with srv:
            r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
            got = await r.read()
            w.close()
            return got

    assert run(aloop, main()) == b"main"


def test_a_value_set_in_data_received_does_not_outlive_run() -> None:
    """`muxio.run()` and `asyncio.run()` alike: not after, nor in a later handler's task."""
    seen: dict[str, str] = {}

    class Setter(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            cv.set("from data_received")
            seen["in callback"] = cv.get()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Setter, "127.0.0.1", 0)
        async with srv:
            c = socket.create_connection(srv.sockets[0].getsockname()[:2])
            c.setblocking(False)
            with c:
                await loop.sock_sendall(c, b"x")
                while "in callback" not in seen:
                    await asyncio.sleep(0.01)
        seen["main after"] = cv.get()
        seen["later task"] = await asyncio.create_task(asyncio.sleep(0, cv.get()))

    for runner in (asyncio.run, muxio.run):
        seen.clear()
        runner(asyncio.wait_for(main(), WAIT))
        assert seen == {
            "in callback": "from data_received",
            "main after": "unset",
            "later task": "unset",
        }
        assert cv.get() == "unset"


def test_two_clients_each_keep_their_own_value(aloop: asyncio.AbstractEventLoop) -> None:
    reads: list[tuple[bytes, str]] = []

    class PerConnection(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            reads.append((data, cv.get()))
            cv.set(data.decode())
            self.transport.write(b"k")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cv.set("server")
        srv = await loop.create_server(PerConnection, "127.0.0.1", 0)
        addr = srv.sockets[0].getsockname()[:2]
        clients = [socket.create_connection(addr) for _ in range(2)]
        try:
            for c in clients:
                c.setblocking(False)
            for rnd in (b"1", b"2"):
                for name, c in zip((b"a", b"b"), clients, strict=True):
                    await loop.sock_sendall(c, name + rnd)
                    assert await recv_exactly(c, 1) == b"k"
        finally:
            for c in clients:
                c.close()
            srv.close()
        assert cv.get() == "server"

    run(aloop, main())
    assert reads == [(b"a1", "server"), (b"b1", "server"), (b"a2", "a1"), (b"b2", "b1")]


def test_stream_server_and_client(aloop: asyncio.AbstractEventLoop) -> None:
    log: list[tuple[str, str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cv.set("create_server")
        served: list[StreamRecorder] = []

        def server_protocol() -> StreamRecorder:
            served.append(StreamRecorder("srv", log))
            return served[-1]

        srv = await loop.create_server(server_protocol, "127.0.0.1", 0)
        cv.set("create_connection")
        t, p = await loop.create_connection(
            lambda: StreamRecorder("cli", log), *srv.sockets[0].getsockname()[:2]
        )
        cv.set("after")
        for chunk in (b"1", b"2"):
            t.write(chunk)
            await (await first_served(served)).got.get()
        (await first_served(served)).transport.write(b"3")
        await p.got.get()
        t.write_eof()
        await served[0].lost
        await p.lost
        srv.close()
        assert cv.get() == "after"

    run(aloop, main())
    srv_log = [e for e in log if e[0] == "srv"]
    cli_log = [e for e in log if e[0] == "cli"]
    assert srv_log == [
        ("srv", "factory", "create_server"),
        ("srv", "made", "srv:factory"),
        ("srv", "data", "srv:factory"),
        ("srv", "data", "srv:data"),
        ("srv", "eof", "srv:data"),
        ("srv", "lost", "srv:eof"),
    ]
    assert cli_log == [
        ("cli", "factory", "create_connection"),
        ("cli", "made", "cli:factory"),
        ("cli", "data", "cli:factory"),
        ("cli", "eof", "cli:data"),
        ("cli", "lost", "cli:eof"),
    ]


def test_pause_and_resume_take_the_context_of_who_resumes(
    aloop: asyncio.AbstractEventLoop,
) -> None:
    """asyncio registers a new reader handle on `resume_reading`, in the caller's context."""
    log: list[tuple[str, str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cv.set("create_server")
        served: list[StreamRecorder] = []

        def factory() -> StreamRecorder:
            served.append(StreamRecorder("srv", log))
            return served[-1]

        srv = await loop.create_server(factory, "127.0.0.1", 0)
        c = socket.create_connection(srv.sockets[0].getsockname()[:2])
        c.setblocking(False)
        with c:
            await loop.sock_sendall(c, b"1")
            await (await first_served(served)).got.get()
            (await first_served(served)).transport.pause_reading()
            cv.set("resumer")
            (await first_served(served)).transport.resume_reading()
            await loop.sock_sendall(c, b"2")
            await (await first_served(served)).got.get()
        await served[0].lost
        srv.close()

    run(aloop, main())
    assert [e[2] for e in log if e[1] == "data"] == ["srv:factory", "resumer"]


def test_buffered_protocol(aloop: asyncio.AbstractEventLoop) -> None:
    log: list[tuple[str, str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cv.set("create_server")
        served: list[BufferedRecorder] = []

        def factory() -> BufferedRecorder:
            served.append(BufferedRecorder("srv", log))
            return served[-1]

        srv = await loop.create_server(factory, "127.0.0.1", 0)
        c = socket.create_connection(srv.sockets[0].getsockname()[:2])
        c.setblocking(False)
        with c:
            for chunk in (b"1", b"2"):
                await loop.sock_sendall(c, chunk)
                assert await (await first_served(served)).got.get() == chunk
        await served[0].lost
        srv.close()

    run(aloop, main())
    assert log == [
        ("srv", "factory", "create_server"),
        ("srv", "made", "srv:factory"),
        ("srv", "get_buffer", "srv:factory"),
        ("srv", "updated", "srv:get_buffer"),
        ("srv", "get_buffer", "srv:updated"),
        ("srv", "updated", "srv:get_buffer"),
        ("srv", "get_buffer", "srv:updated"),
        ("srv", "eof", "srv:get_buffer"),
        ("srv", "lost", "srv:eof"),
    ]


def test_tls_server_and_client(
    aloop: asyncio.AbstractEventLoop, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    log: list[tuple[str, str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cv.set("create_server")
        served: list[StreamRecorder] = []

        def factory() -> StreamRecorder:
            served.append(StreamRecorder("srv", log))
            return served[-1]

        srv = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx)
        cv.set("create_connection")
        t, p = await loop.create_connection(
            lambda: StreamRecorder("cli", log),
            *srv.sockets[0].getsockname()[:2],
            ssl=client_ctx,
            server_hostname="localhost",
        )
        cv.set("after")
        t.write(b"1")
        await (await first_served(served)).got.get()
        (await first_served(served)).transport.write(b"2")
        await p.got.get()
        t.close()
        await p.lost
        await served[0].lost
        srv.close()

    run(aloop, main())
    srv_log = [e for e in log if e[0] == "srv"]
    cli_log = [e for e in log if e[0] == "cli"]
    # sslproto calls connection_made from the reader once the handshake is done
    assert srv_log == [
        ("srv", "factory", "create_server"),
        ("srv", "made", "srv:factory"),
        ("srv", "data", "srv:made"),
        ("srv", "eof", "srv:data"),
        ("srv", "lost", "srv:eof"),
    ]
    assert cli_log == [
        ("cli", "factory", "create_connection"),
        ("cli", "made", "cli:factory"),
        ("cli", "data", "cli:made"),
        ("cli", "eof", "cli:data"),
        ("cli", "lost", "cli:eof"),
    ]


def test_connect_accepted_socket(aloop: asyncio.AbstractEventLoop) -> None:
    log: list[tuple[str, str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        with b:
            cv.set("connect_accepted_socket")
            _, p = await loop.connect_accepted_socket(lambda: StreamRecorder("acc", log), a)
            cv.set("after")
            await loop.sock_sendall(b, b"1")
            await p.got.get()
            await loop.sock_sendall(b, b"2")
            await p.got.get()
        await p.lost

    run(aloop, main())
    assert log == [
        ("acc", "factory", "connect_accepted_socket"),
        ("acc", "made", "acc:factory"),
        ("acc", "data", "acc:factory"),
        ("acc", "data", "acc:data"),
        ("acc", "eof", "acc:data"),
        ("acc", "lost", "acc:eof"),
    ]


def test_start_tls(
    aloop: asyncio.AbstractEventLoop, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    log: list[tuple[str, str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cv.set("create_server")
        served: list[StreamRecorder] = []

        def factory() -> StreamRecorder:
            served.append(StreamRecorder("srv", log))
            return served[-1]

        srv = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx)
        cv.set("create_connection")
        t, p = await loop.create_connection(
            lambda: StreamRecorder("cli", log), *srv.sockets[0].getsockname()[:2]
        )
        cv.set("start_tls")
        tls = await loop.start_tls(t, p, client_ctx, server_hostname="localhost")
        cv.set("after")
        tls.write(b"1")
        await (await first_served(served)).got.get()
        (await first_served(served)).transport.write(b"2")
        await p.got.get()
        tls.close()
        await p.lost
        await served[0].lost
        srv.close()

    run(aloop, main())
    cli_log = [e for e in log if e[0] == "cli"]
    # start_tls resumes reading from the caller: the new reader has its context
    assert cli_log == [
        ("cli", "factory", "create_connection"),
        ("cli", "made", "cli:factory"),
        ("cli", "data", "start_tls"),
        ("cli", "eof", "cli:data"),
        ("cli", "lost", "cli:eof"),
    ]


class DatagramRecorder(Recorder, asyncio.DatagramProtocol):
    def __init__(self, tag: str, log: list[tuple[str, str, str]]) -> None:
        super().__init__(tag, log)
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.event("datagram")
        self.got.put_nowait(data)


def test_datagram(aloop: asyncio.AbstractEventLoop) -> None:
    log: list[tuple[str, str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cv.set("create_datagram_endpoint")
        t, p = await loop.create_datagram_endpoint(
            lambda: DatagramRecorder("udp", log), local_addr=("127.0.0.1", 0)
        )
        cv.set("after")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for chunk in (b"1", b"2"):
                s.sendto(chunk, t.get_extra_info("sockname"))
                await p.got.get()
        t.close()
        await p.lost

    run(aloop, main())
    assert log == [
        ("udp", "factory", "create_datagram_endpoint"),
        ("udp", "made", "udp:factory"),
        ("udp", "datagram", "udp:factory"),
        ("udp", "datagram", "udp:datagram"),
        ("udp", "lost", "after"),
    ]


def test_read_and_write_pipes(aloop: asyncio.AbstractEventLoop) -> None:
    log: list[tuple[str, str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        rfd, wfd = os.pipe()
        cv.set("connect_read_pipe")
        _, rp = await loop.connect_read_pipe(
            lambda: StreamRecorder("read", log), os.fdopen(rfd, "rb", 0)
        )
        cv.set("connect_write_pipe")
        wt, wp = await loop.connect_write_pipe(
            lambda: StreamRecorder("write", log), os.fdopen(wfd, "wb", 0)
        )
        cv.set("after")
        for chunk in (b"1", b"2"):
            wt.write(chunk)
            await rp.got.get()
        wt.close()
        await rp.lost
        await wp.lost

    run(aloop, main())
    assert [e for e in log if e[0] == "read"] == [
        ("read", "factory", "connect_read_pipe"),
        ("read", "made", "read:factory"),
        ("read", "data", "read:factory"),
        ("read", "data", "read:data"),
        ("read", "eof", "read:data"),
        ("read", "lost", "read:data"),
    ]
    assert [e for e in log if e[0] == "write"] == [
        ("write", "factory", "connect_write_pipe"),
        ("write", "made", "write:factory"),
        ("write", "lost", "after"),
    ]


class ProcessRecorder(Recorder, asyncio.SubprocessProtocol):
    def __init__(self, tag: str, log: list[tuple[str, str, str]]) -> None:
        super().__init__(tag, log)
        self.exited = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.event(f"data{fd}")

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        self.event(f"pipe_lost{fd}")

    def process_exited(self) -> None:
        self.event("exited")
        self.exited.set_result(None)


def test_subprocess_protocol(aloop: asyncio.AbstractEventLoop) -> None:
    log: list[tuple[str, str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cv.set("subprocess_exec")
        t, p = await loop.subprocess_exec(
            lambda: ProcessRecorder("proc", log),
            sys.executable,
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read())",
        )
        cv.set("after")
        t.get_pipe_transport(0).write(b"hello")
        t.get_pipe_transport(0).close()
        await p.exited
        await p.lost
        t.close()

    run(aloop, main())
    assert log[:2] == [
        ("proc", "factory", "subprocess_exec"),
        ("proc", "made", "proc:factory"),
    ]
    seen = {event: value for _, event, value in log[2:]}
    assert seen["data1"] == seen["pipe_lost1"] == seen["pipe_lost2"] == "proc:factory"
    assert seen["pipe_lost0"] == "after"  # the caller closed stdin
    # The exit is reported in the context that started watching the child
    # (muxio's pidfd, asyncio's PidfdChildWatcher from 3.12); 3.11's default
    # watcher reports it from a thread, in the thread's empty context.
    thread_watcher = not isinstance(aloop, muxio.EventLoop) and sys.version_info < (3, 12)
    reference = "unset" if thread_watcher else "proc:factory"
    assert seen["exited"] == reference
    assert log[-1][1] == "lost"


def test_unix_server_and_client(aloop: asyncio.AbstractEventLoop) -> None:
    log: list[tuple[str, str, str]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s")
            cv.set("create_unix_server")
            served: list[StreamRecorder] = []

            def factory() -> StreamRecorder:
                served.append(StreamRecorder("srv", log))
                return served[-1]

            srv = await loop.create_unix_server(factory, path)
            cv.set("create_unix_connection")
            t, p = await loop.create_unix_connection(lambda: StreamRecorder("cli", log), path)
            cv.set("after")
            (await first_served(served)).transport.write(b"1")
            await p.got.get()
            t.write(b"2")
            await (await first_served(served)).got.get()
            t.close()
            await p.lost
            await served[0].lost
            srv.close()

    run(aloop, main())
    assert [e for e in log if e[0] == "cli"] == [
        ("cli", "factory", "create_unix_connection"),
        ("cli", "made", "cli:factory"),
        ("cli", "data", "cli:factory"),
        ("cli", "lost", "after"),
    ]
    assert [e for e in log if e[0] == "srv"] == [
        ("srv", "factory", "create_unix_server"),
        ("srv", "made", "srv:factory"),
        ("srv", "data", "srv:factory"),
        ("srv", "eof", "srv:data"),
        ("srv", "lost", "srv:eof"),
    ]


# -- TLS: the completion order of create_connection(ssl=...) ---------------------


class Connected(asyncio.Protocol):
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        if self.fail:
            raise RuntimeError("connection_made failed")

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def test_tls_connection_made_that_raises(
    aloop: asyncio.AbstractEventLoop, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """sslproto calls it once the handshake is done, from its reader: the call fails with it."""
    calls: list[dict[str, Any]] = []
    aloop.set_exception_handler(lambda _loop, context: calls.append(context))

    async def main() -> str:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Connected, "127.0.0.1", 0, ssl=server_ctx)
        async with srv:
            try:
                await loop.create_connection(
                    lambda: Connected(fail=True),
                    *srv.sockets[0].getsockname()[:2],
                    ssl=client_ctx,
                    server_hostname="localhost",
                )
            except BaseException as exc:
                return type(exc).__name__
            return "returned"

    outcome = run(aloop, main())
    assert outcome == "RuntimeError"
    assert [type(c.get("exception")) for c in calls] == [RuntimeError], calls


def test_tls_create_connection_cancelled_a_turn_after_it_starts(
    aloop: asyncio.AbstractEventLoop, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(Connected, "127.0.0.1", 0, ssl=server_ctx)
        async with srv:
            s = socket.create_connection(srv.sockets[0].getsockname()[:2])
            task = asyncio.ensure_future(
                loop.create_connection(
                    Connected, sock=s, ssl=client_ctx, server_hostname="localhost"
                )
            )
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):
                if s.fileno() == -1:
                    break
                await asyncio.sleep(0)
            assert s.fileno() == -1

    run(aloop, main())


def test_a_transports_descriptor_is_still_refused_to_add_reader(
    aloop: asyncio.AbstractEventLoop, make_socket_pair: Any
) -> None:
    """The reader in its context still names its transport, so the loop's check still sees it."""
    a, _peer = make_socket_pair()
    a.setblocking(False)

    async def main() -> str:
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, sock=a
        )
        try:
            with pytest.raises(RuntimeError) as info:
                aloop.add_reader(a.fileno(), lambda: None)
            return str(info.value)
        finally:
            transport.close()

    assert "is used by transport" in run(aloop, main())


def test_muxio_native_server_copies_the_context_that_started_it() -> None:
    """`muxio serve`'s path: `Server(...)` and `start()`, byte counts and idle sweep on."""
    from muxio.listeners import bind_tcp

    loop = muxio.new_event_loop()
    reads: list[tuple[bytes, str]] = []

    class PerConnection(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            reads.append((data, cv.get()))
            cv.set(data.decode())
            self.transport.write(b"k")

    async def main() -> None:
        cv.set("serving")
        server = muxio.Server(loop, PerConnection, bind_tcp("127.0.0.1", 0), idle_timeout=60)
        server.start()
        cv.set("after start")
        clients = [socket.create_connection(server.sockets[0].getsockname()[:2]) for _ in range(2)]
        try:
            for c in clients:
                c.setblocking(False)
            for rnd in (b"1", b"2"):
                for name, c in zip((b"a", b"b"), clients, strict=True):
                    await loop.sock_sendall(c, name + rnd)
                    assert await recv_exactly(c, 1) == b"k"
        finally:
            for c in clients:
                c.close()
            server.close()
        assert cv.get() == "after start"

    try:
        run(loop, main())
    finally:
        loop.close()
    assert reads == [(b"a1", "serving"), (b"b1", "serving"), (b"a2", "a1"), (b"b2", "b1")]

"""What a TLS connection costs the server while it waits, and that sharing the read buffer is safe.

asyncio's `SSLProtocol` gives each connection a 256 KiB receive buffer of
its own; muxio's loop shares one between its TLS connections (issue 19
item 8).  The cost is measured with tracemalloc over real connections on
loopback (OpenSSL's own allocations are not Python's and are not counted:
benchmarks/tls_memory.py measures RSS).  Sharing is correct only if no
connection's bytes reach another: many connections and both ends of each
on one loop, all moving distinct data at once, must stay byte-exact.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import tracemalloc
from collections.abc import Callable

import pytest
from helpers import ServerThread, running_server

from muxio import EventLoop
from muxio.services.upper import UpperEcho

pytestmark = pytest.mark.timeout(120)

CONNECTIONS = 50
BOUND = 64 * 1024
"""Per connection; asyncio's buffer alone was 256 KiB, muxio's Python-side cost is ~5 KiB."""


def _idle(srv: ServerThread, ctx: ssl.SSLContext) -> socket.socket:
    tls = ctx.wrap_socket(srv.connect(), server_hostname="localhost")
    tls.sendall(b"x")
    assert tls.recv(16) == b"X"  # the server finished its side of the handshake too
    return tls


def _silent(srv: ServerThread, ctx: ssl.SSLContext) -> socket.socket:
    return srv.connect()


def _traced_per_connection(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    opener: Callable[[ServerThread, ssl.SSLContext], socket.socket],
) -> float:
    with running_server(UpperEcho, ssl=server_ctx) as srv:
        for _ in range(3):  # first-use allocations (the shared buffer among them) come before
            _idle(srv, client_ctx).close()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            conns = [opener(srv, client_ctx) for _ in range(CONNECTIONS)]
            try:
                assert srv.wait_for(lambda: len(srv.server.connections) >= CONNECTIONS)
                # the loop thread builds each connection's TLS layer when it accepts it
                after = srv.call(lambda: tracemalloc.get_traced_memory()[0])
            finally:
                for c in conns:
                    c.close()
        finally:
            tracemalloc.stop()
    return (after - before) / CONNECTIONS


def test_an_idle_tls_connection_holds_far_less_than_asyncios_256_kib_buffer(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    per = _traced_per_connection(server_ctx, client_ctx, _idle)
    assert per <= BOUND, f"{per / 1024:.1f} KiB per idle TLS connection"


def test_a_connection_silent_before_its_client_hello_holds_far_less_than_256_kib(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    per = _traced_per_connection(server_ctx, client_ctx, _silent)
    assert per <= BOUND, f"{per / 1024:.1f} KiB per silent TLS connection"


def test_silent_connection_still_handshakes_once_its_client_hello_comes(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """The server defers its first handshake step until bytes arrive; it must not skip it."""
    with running_server(UpperEcho, ssl=server_ctx) as srv:
        raw = srv.connect()
        assert srv.wait_for(lambda: len(srv.server.connections) == 1)
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"late")
            assert tls.recv(16) == b"LATE"


def test_twenty_mib_over_concurrent_tls_connections_is_byte_exact(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """Four clients at once, 5 MiB each way, distinct data: the shared buffer never mixes them.

    The clients run on asyncio's own loop in the test thread, sending and
    reading at once, so the server's connections all read in the same turns.
    """
    size = 5 * 1024 * 1024

    async def one(port: int, n: int) -> bool:
        data = random.Random(n).randbytes(size)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )

        async def send() -> None:
            for i in range(0, size, 100_000):
                writer.write(data[i : i + 100_000])
                await writer.drain()

        sending = asyncio.ensure_future(send())
        got = await reader.readexactly(size)
        await sending
        writer.close()
        return got == data.upper()

    async def main(port: int) -> list[bool]:
        return await asyncio.wait_for(asyncio.gather(*(one(port, n) for n in range(4))), 90)

    with running_server(UpperEcho, ssl=server_ctx) as srv:
        assert asyncio.run(main(srv.port)) == [True] * 4


def test_clients_and_servers_on_one_loop_share_its_buffer_byte_exact(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """Both ends of eight TLS connections on one muxio loop, through asyncio's stream API."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    async def one(port: int, n: int) -> bool:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        rng = random.Random(n)
        ok = True
        for _ in range(20):
            block = rng.randbytes(rng.choice((1, 1000, 16384, 70_000, 300_000)))
            writer.write(block)
            got = await reader.readexactly(len(block))
            ok = ok and got == block.upper()
        writer.close()
        await writer.wait_closed()
        return ok

    async def main() -> list[bool]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(one(port, n) for n in range(8))), 60
            )
        finally:
            server.close()
            await server.wait_closed()

    loop = EventLoop(slow_callback_ms=None)
    try:
        assert loop.run_until_complete(main()) == [True] * 8
    finally:
        loop.close()

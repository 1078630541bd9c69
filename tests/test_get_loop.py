"""Every transport muxio hands out answers `get_loop()` with the loop it runs on.

asyncio's own transports have no such method; a protocol given only its
transport (a library callback, a `set_protocol` hand-over) needs it to
schedule on the right loop without `asyncio.get_running_loop()`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import muxio
from muxio import EventLoop


async def _transports() -> dict[str, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    found: dict[str, asyncio.BaseTransport] = {}

    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    found["stream"], _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    server.close()

    found["datagram"], _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )

    r, w = os.pipe()
    found["read pipe"], _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(r, "rb"))
    found["write pipe"], _ = await loop.connect_write_pipe(
        asyncio.BaseProtocol, os.fdopen(w, "wb")
    )

    found["subprocess"], _ = await loop.subprocess_exec(
        asyncio.SubprocessProtocol, sys.executable, "-c", "pass"
    )
    return found


def test_every_transport_returns_its_own_loop() -> None:
    loop = muxio.new_event_loop()
    try:
        transports = loop.run_until_complete(_transports())
        try:
            for kind, transport in transports.items():
                assert transport.get_loop() is loop, kind  # type: ignore[attr-defined]
        finally:
            for transport in transports.values():
                transport.close()
            loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def test_a_served_connection_returns_the_servers_loop() -> None:
    loop = EventLoop()
    seen: list[object] = []

    class Probe(muxio.Protocol):
        def connection_made(self, transport: muxio.Transport) -> None:  # type: ignore[override]
            seen.append(transport.get_loop())
            transport.close()
            loop.stop()

    sockets = muxio.bind_tcp("127.0.0.1", 0)
    server = muxio.Server(loop, Probe, sockets)
    try:
        server.start()
        client = socket.create_connection(sockets[0].getsockname()[:2])
        loop.call_later(10, loop.stop)
        loop.run_forever()
        client.close()
    finally:
        server.close()
        loop.close()
    assert seen == [loop]

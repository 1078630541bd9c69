"""The uppercase echo as a coroutine over asyncio streams, on muxio's loop.

The same service as `upper`, written the way most asyncio code is written:
`async def handle(reader, writer)`.  It exists to measure what streams and
tasks cost on top of the transport (`muxio compare`), and as the example of
a coroutine service under `muxio serve`.
"""

from __future__ import annotations

import asyncio

READ_SIZE = 65536


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every chunk with its uppercase until the peer's EOF, then close."""
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data.upper())
            await writer.drain()
    except ConnectionError:
        pass  # the peer is gone; the transport reports it
    finally:
        writer.close()


def protocol_factory() -> asyncio.StreamReaderProtocol:
    """What `asyncio.start_server` builds per connection, without its server."""
    return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=READ_SIZE), handle)

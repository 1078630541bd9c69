"""asyncio's high-level streams, the API most asyncio servers are written in.

It pays for a task per connection and a StreamReader buffer on top of the
Protocol peer; comparing the two shows what that convenience costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from muxio.tools.peers import announce, parse_args


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(handle, host, port, backlog=1024, reuse_address=True)
    announce(host, server.sockets[0].getsockname()[1])
    try:
        await stop.wait()
    finally:
        # Not wait_closed(): since 3.12 it waits for every client to hang up.
        server.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args("asyncio streams uppercase echo server.", argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

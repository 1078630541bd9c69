"""asyncio's high-level streams, the API most asyncio servers are written in.

It pays for a task per connection and a StreamReader buffer on top of the
Protocol peer; comparing the two shows what that convenience costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from muxio.tools.peers import parse_args, serve_until_sigterm


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
    await serve_until_sigterm(
        host, lambda: asyncio.start_server(handle, host, port, backlog=1024, reuse_address=True)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args("asyncio streams uppercase echo server.", argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

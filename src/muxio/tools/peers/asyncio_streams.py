"""asyncio's high-level streams, the API most asyncio servers are written in.

It pays for a task per connection and a StreamReader buffer on top of the
Protocol peer; comparing the two shows what that convenience costs.  `--loop`
runs the same code on uvloop or muxio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from muxio.tools.peers import (
    add_loop_argument,
    add_tls_arguments,
    run_on,
    serve_until_sigterm,
    tls_context,
)


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


async def serve(host: str, port: int, ssl: Any = None) -> None:
    await serve_until_sigterm(
        host, lambda: asyncio.start_server(
            handle, host, port, backlog=1024, reuse_address=True, ssl=ssl
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="asyncio streams uppercase echo server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    add_loop_argument(p)
    add_tls_arguments(p)
    args = p.parse_args(argv)
    return run_on(args.loop, lambda: serve(args.host, args.port, tls_context(args)))


if __name__ == "__main__":
    sys.exit(main())

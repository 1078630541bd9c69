"""asyncio at its leanest: a Protocol writing straight to the transport.

With --uvloop the identical code runs on uvloop's libuv loop, which makes the
pair the cleanest measure of how much the event loop itself costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine
from typing import Any, cast

from muxio.tools.peers import serve_until_sigterm


class Upper(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    await serve_until_sigterm(
        host, lambda: loop.create_server(Upper, host, port, backlog=1024, reuse_address=True)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="asyncio Protocol uppercase echo server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio")
    args = p.parse_args(argv)
    runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            print("muxio: uvloop is not installed; pip install uvloop", file=sys.stderr)
            return 2
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

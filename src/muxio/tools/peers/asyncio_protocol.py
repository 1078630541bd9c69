"""asyncio at its leanest: a Protocol writing straight to the transport.

With `--loop uvloop` or `--loop muxio` the identical code runs on another
loop, which makes the set the cleanest measure of what the loop itself costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, cast

from muxio.tools.peers import (
    add_loop_argument,
    add_tls_arguments,
    run_on,
    serve_until_sigterm,
    tls_context,
)


class Upper(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


async def serve(host: str, port: int, ssl: Any = None) -> None:
    loop = asyncio.get_running_loop()
    await serve_until_sigterm(
        host, lambda: loop.create_server(
            Upper, host, port, backlog=1024, reuse_address=True, ssl=ssl
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="asyncio Protocol uppercase echo server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    add_loop_argument(p)
    add_tls_arguments(p)
    p.add_argument("--uvloop", action="store_true", help="the same as --loop uvloop")
    args = p.parse_args(argv)
    ssl = tls_context(args)
    return run_on("uvloop" if args.uvloop else args.loop, lambda: serve(args.host, args.port, ssl))


if __name__ == "__main__":
    sys.exit(main())

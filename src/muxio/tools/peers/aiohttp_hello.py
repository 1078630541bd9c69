"""aiohttp's hello world, the same app on asyncio's loop, uvloop or muxio's loop.

A real framework on top of the loop shows what an application gains from the
loop, where the uppercase echo only shows the loop's own cost. Access logging
is off: formatting a log line per request would swamp what is being compared.
aiohttp is imported lazily so that `--help` works without it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from muxio.tools.peers import add_loop_argument, run_on, serve_until_sigterm

BODY = "Hello, World!"


async def serve(host: str, port: int) -> None:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=BODY)

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    loop = asyncio.get_running_loop()
    handler: Any = runner.server

    async def start() -> Any:
        return await loop.create_server(handler, host, port, backlog=1024, reuse_address=True)

    try:
        await serve_until_sigterm(host, start)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="aiohttp hello-world HTTP server (GET / only).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    add_loop_argument(p)
    args = p.parse_args(argv)
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print("muxio: aiohttp is not installed; pip install aiohttp", file=sys.stderr)
        return 2
    return run_on(args.loop, lambda: serve(args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())

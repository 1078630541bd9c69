"""The aiohttp app of docs/integrations.md: `python aiohttp_app.py PORT` serves it on muxio."""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import web

import muxio


async def hello(request: web.Request) -> web.Response:
    return web.Response(text=f"{type(asyncio.get_running_loop()).__module__} pid={os.getpid()}")


async def announce(app: web.Application) -> None:
    module = type(asyncio.get_running_loop()).__module__
    print(f"app started on {module} in {os.getpid()}", file=sys.stderr, flush=True)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)
    app.on_startup.append(announce)
    return app


app = make_app()

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), loop=muxio.new_event_loop())

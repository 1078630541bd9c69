"""Libraries no one here wrote, running on muxio's loop: aiohttp and websockets.

They use the loop the way real applications do (their own protocols, timers,
`create_server`, `create_connection`, executors), so they catch what a test
written against our own expectations would not.
"""

from __future__ import annotations

import asyncio
import os

import pytest

import muxio

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is in the test extra")
websockets = pytest.importorskip("websockets", reason="websockets is in the test extra")
from aiohttp import web  # noqa: E402


async def _aiohttp_round_trips() -> list[str]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.match_info['name']}")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=(await request.read()).upper())

    app = web.Application()
    app.add_routes([web.get("/hello/{name}", hello), web.post("/echo", echo)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    results: list[str] = []
    payload = os.urandom(256 * 1024)
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(50):  # keep-alive: one connection, many requests
                async with session.get(f"http://127.0.0.1:{port}/hello/{i}") as resp:
                    assert resp.status == 200
                    results.append(await resp.text())
            async with session.post(f"http://127.0.0.1:{port}/echo", data=payload) as resp:
                assert await resp.read() == payload.upper()
    finally:
        await runner.cleanup()
    return results


def test_aiohttp_server_and_client_on_muxio() -> None:
    assert muxio.run(_aiohttp_round_trips()) == [f"hello {i}" for i in range(50)]


async def _websockets_echo() -> list[str]:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    async def handler(ws: object) -> None:
        async for message in ws:  # type: ignore[attr-defined]
            await ws.send(message.upper())  # type: ignore[attr-defined]

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            replies = []
            for word in ("alpha", "beta", "gamma" * 10000):
                await ws.send(word)
                replies.append(await ws.recv())
    return replies


def test_websockets_echo_on_muxio() -> None:
    replies = muxio.run(_websockets_echo())
    assert replies == ["ALPHA", "BETA", "GAMMA" * 10000]


def test_aiohttp_gets_the_same_answers_on_asyncio_and_muxio() -> None:
    assert muxio.run(_aiohttp_round_trips()) == asyncio.run(_aiohttp_round_trips())

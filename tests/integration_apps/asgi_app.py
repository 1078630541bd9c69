"""The ASGI app of docs/integrations.md: it answers with the loop it runs on.

`APP_BLOCK_AT_IMPORT=0.3` makes its import hold the loop for 0.3 s, as a heavy
app's imports do at a worker's start: what the slow-callback watchdog reports.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

if os.environ.get("APP_BLOCK_AT_IMPORT"):
    time.sleep(float(os.environ["APP_BLOCK_AT_IMPORT"]))


def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                started = f"app started on {loop_module()} in {os.getpid()}"
                print(started, file=sys.stderr, flush=True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"{loop_module()} pid={os.getpid()} http={scope['http_version']}"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})

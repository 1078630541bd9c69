"""A small ASGI app with one slow handler, for docs/observability.md.

`/` answers at once; `/report` renders a report in pure Python on the loop
(over 100 ms of CPU: the blocking handler to find); `/debug/profile?seconds=N[&clock=wall]`
profiles the loop for N seconds and answers with `muxio profile-report`'s text,
also writing the profile to `slowapp-profile.json` for speedscope.

    uvicorn docs.perf.slowapp:app --loop muxio:new_event_loop --port 8000
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

ROWS = [{"id": i, "name": f"item {i}", "price": (i * 37) % 1000 / 10} for i in range(2000)]


def render_report() -> bytes:
    """The slow part: sorting, formatting and encoding, all on the loop thread."""
    lines = []
    for _ in range(30):
        ranked = sorted(ROWS, key=lambda row: (-row["price"], row["name"]))
        lines = [f"{row['id']:>6} {row['name']:<12} {row['price']:8.2f}" for row in ranked]
    return json.dumps({"rows": lines}).encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/report":
        body = render_report()
    elif path == "/debug/profile":
        query = urllib.parse.parse_qs(scope["query_string"].decode())
        seconds = float(query.get("seconds", ["5"])[0])
        clock = query.get("clock", ["cpu"])[0]
        loop = asyncio.get_running_loop()
        profile = await loop.profile(seconds, clock=clock)  # type: ignore[attr-defined]
        profile.write_speedscope("slowapp-profile.json")
        body = profile.report(8).encode()
    else:
        body = b"hello\n"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})

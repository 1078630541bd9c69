"""uvicorn started from code, as docs/integrations.md shows: `python uvicorn_serve.py PORT`."""

from __future__ import annotations

import sys

import uvicorn

if __name__ == "__main__":
    port = int(sys.argv[1])
    uvicorn.run("asgi_app:app", host="127.0.0.1", port=port, loop="muxio:new_event_loop")

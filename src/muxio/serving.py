"""`muxio.serve`: the lifecycle of `muxio serve` for an embedding program."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from .loop import EventLoop
from .runner import ServeConfig, run_service
from .services import Servable, Service, StreamHandler, as_protocol_factory, stream_protocol_factory


def serve(
    service: Service | Servable,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    unix: str | None = None,
    poller: str = "auto",
    max_connections: int | None = None,
    idle_timeout: float | None = None,
    shutdown_timeout: float = 10.0,
    slow_callback_ms: float = 100.0,
    ssl: Any = None,
    sockets: list[socket.socket] | None = None,
    on_start: Callable[[EventLoop], object] | None = None,
    on_close: Callable[[float], object] | None = None,
    name: str | None = None,
) -> dict[str, object]:
    """Serve until SIGTERM/SIGINT/SIGHUP, drain, and return the summary's totals.

    This is `muxio serve` without the command line, so a program that
    embeds muxio gets the same signals, graceful drain (a second signal
    stops at once), slow-callback watchdog and summary line instead of
    rewriting them.  `service` is a protocol factory, an
    `async def handler(reader, writer)` as for `asyncio.start_server`, or a
    `Service` that carries its own hooks.  `on_start(loop)` runs before
    listening (start resources there); `on_close(seconds_left)` runs after
    the loop stopped, with what is left of `shutdown_timeout` to release
    them.  Port 0 picks a free port: it is in the "listening on" log line
    and `on_start` can read it from the sockets passed in.
    """
    if isinstance(service, Service):
        if (on_start is not None and service.on_start is not None) or (
            on_close is not None and service.on_close is not None
        ):
            raise ValueError(
                "on_start/on_close given twice: as parameters and in the Service; give one"
            )
        factory = service.factory
        on_start = on_start or service.on_start
        on_close = on_close or service.on_close
        default_name = str(getattr(factory, "__name__", type(factory).__name__))
    else:
        factory = as_protocol_factory(service)
        default_name = str(getattr(service, "__name__", type(service).__name__))
    config = ServeConfig(
        host=host,
        port=port,
        unix=unix,
        poller=poller,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        slow_callback_ms=slow_callback_ms,
        shutdown_timeout=shutdown_timeout,
        service_name=name or default_name,
        tls=ssl,
    )
    return run_service(
        Service(factory, on_start=on_start, on_close=on_close), config, sockets=sockets
    )


__all__ = ["Servable", "StreamHandler", "as_protocol_factory", "serve", "stream_protocol_factory"]

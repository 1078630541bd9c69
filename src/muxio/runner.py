"""Run a service until SIGINT/SIGTERM, then shut down gracefully and report.

This is `muxio serve` without the argument parsing, so an embedding program
gets the same lifecycle: one log line when listening, a drain on the first
signal, an immediate stop on the second, one summary line at the end.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable

from .loop import EventLoop
from .pollers import Poller
from .protocol import Protocol
from .server import Server, bind_tcp, bind_unix

log = logging.getLogger("muxio")


class ServeConfig:
    """What `muxio serve` was asked for (a plain class: `dataclasses` costs 2 MiB of RSS)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        unix: str | None = None,
        poller: str = "auto",
        backlog: int = 1024,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        slow_callback_ms: float = 100.0,
        shutdown_timeout: float = 10.0,
        service_name: str = "upper",
    ) -> None:
        self.host = host
        self.port = port
        self.unix = unix
        self.poller = poller
        self.backlog = backlog
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.slow_callback_ms = slow_callback_ms
        self.shutdown_timeout = shutdown_timeout
        self.service_name = service_name


def serve(
    protocol_factory: Callable[[], Protocol],
    config: ServeConfig,
    *,
    on_shutdown: Callable[[], object] | None = None,
    poller: Poller | None = None,
    on_start: Callable[[EventLoop], object] | None = None,
    on_close: Callable[[], object] | None = None,
) -> dict[str, object]:
    """Serve until a signal, returning the totals printed in the summary.

    `on_start(loop)` runs once the loop exists, before the server listens
    (start a worker pool there); `on_close()` runs once the loop has
    stopped for good, before it is closed (shut the pool down there).
    """
    if config.unix:
        sockets: list[socket.socket] = [bind_unix(config.unix, backlog=config.backlog)]
    else:
        sockets = bind_tcp(config.host, config.port, backlog=config.backlog)
    loop = EventLoop(
        poller if poller is not None else config.poller,
        slow_callback_ms=config.slow_callback_ms,
    )
    server = Server(
        loop,
        protocol_factory,
        sockets,
        max_connections=config.max_connections,
        idle_timeout=config.idle_timeout,
    )

    def begin_shutdown(signame: str) -> None:
        if server.is_shutting_down():
            log.warning("%s again: stopping now", signame)
            for transport in list(server.connections):
                transport.abort()
            loop.call_soon(loop.stop)
            return
        log.info(
            "%s: shutting down, flushing %d connections (up to %g s)",
            signame,
            len(server.connections),
            config.shutdown_timeout,
        )
        if on_shutdown is not None:
            on_shutdown()
        server.shutdown(config.shutdown_timeout, loop.stop)

    if on_start is not None:
        try:
            on_start(loop)
        except BaseException:
            server.close()
            loop.close()
            raise
    loop.add_signal_handler(signal.SIGINT, begin_shutdown, "SIGINT")
    loop.add_signal_handler(signal.SIGTERM, begin_shutdown, "SIGTERM")
    server.start()
    log.info(
        "listening on %s (poller %s, service %s, pid %d)",
        ", ".join(server.addresses),
        loop.poller.name,
        config.service_name,
        os.getpid(),
    )
    try:
        loop.run_forever()
    finally:
        server.close()
        for transport in list(server.connections):
            transport.abort()
        loop.stop()
        loop.run_forever()
        if on_close is not None:
            try:
                on_close()
            except Exception:
                log.exception("exception in on_close")
        totals: dict[str, object] = dict(server.totals())
        totals.update(loop.stats().as_dict())
        loop.close()
    log.info(
        "shutdown complete: %s",
        " ".join(f"{k}={v}" for k, v in totals.items()),
    )
    return totals

"""Reference servers that speak muxio's uppercase-echo protocol.

`muxio compare` runs each as a subprocess so that its CPU time and memory can
be measured in isolation; keeping them tiny keeps the comparison about the
I/O design rather than about how much code sits around it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Give every peer the same command line so compare can start them uniformly."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    return p.parse_args(argv)


LOOPS = ("asyncio", "uvloop", "muxio")


def add_loop_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--loop", choices=LOOPS, default="asyncio", help="the loop to run on (default asyncio)"
    )


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")


def tls_context(args: argparse.Namespace) -> Any:
    """The server context `muxio serve` would build from the same files, or None."""
    if not args.tls_cert:
        return None
    from muxio.tls import server_context

    return server_context(args.tls_cert, args.tls_key)


def run_on(loop_name: str, main: Callable[[], Any]) -> int:
    """Run the coroutine `main()` on the named loop; exit 2 if that loop is not installed."""
    import asyncio
    import contextlib

    runner: Callable[[Any], Any] = asyncio.run
    if loop_name == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("muxio: uvloop is not installed; pip install uvloop", file=sys.stderr)
            return 2
        runner = uvloop.run
    elif loop_name == "muxio":
        from muxio.policy import run

        runner = run
    with contextlib.suppress(KeyboardInterrupt):
        runner(main())
    return 0


def announce(host: str, port: int) -> None:
    """Tell the parent the real port; it waits for exactly this line on stderr."""
    from muxio.tools.process import announcement

    print(announcement(host, port), file=sys.stderr, flush=True)


async def serve_until_sigterm(host: str, start: Callable[[], Awaitable[Any]]) -> None:
    """Run an asyncio server from `start()` until SIGTERM (shared by the asyncio peers)."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await start()
    announce(host, server.sockets[0].getsockname()[1])
    try:
        await stop.wait()
    finally:
        # Not wait_closed(): since 3.12 it waits for every client to hang up.
        server.close()

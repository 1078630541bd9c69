"""Run a peer's `serve(host, port)` on muxio's loop with the watchdog thread off.

The watchdog wakes every slow_callback_ms / 2 whatever the load, so under
callgrind (50x slower) its share per request depends on wall time, and muxio's
counts then spread by 1-4 % where asyncio's repeat to 0.1 %. Without it the
count is the loop's alone, for callgrind_per_request.py's `*-nowatchdog` servers.

    python benchmarks/muxio_no_watchdog.py asyncio_protocol --host 127.0.0.1 --port 0
        [--tls-cert FILE --tls-key FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

import muxio
from muxio.tools.peers import add_tls_arguments, tls_context


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("peer", choices=("asyncio_protocol", "asyncio_streams", "aiohttp_hello"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    add_tls_arguments(p)
    args = p.parse_args(argv)
    peer = importlib.import_module(f"muxio.tools.peers.{args.peer}")
    ssl = tls_context(args)
    serving = peer.serve(args.host, args.port, ssl) if ssl else peer.serve(args.host, args.port)
    with contextlib.suppress(KeyboardInterrupt):
        muxio.run(serving, slow_callback_ms=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

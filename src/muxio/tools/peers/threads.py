"""Thread-per-connection blocking server, the design select() loops replace.

socketserver is what the standard library offers for this, so it is the fair
representative: no pool, one OS thread per client, blocking recv/sendall.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import socketserver
import sys
from types import FrameType
from typing import Any

from muxio.tools.peers import announce, parse_args


class UpperHandler(socketserver.BaseRequestHandler):
    request: socket.socket

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data.upper())
        except OSError:
            # A reset client is normal under a benchmark; socketserver would
            # print a traceback per connection.
            pass


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: 'can't start new thread' under 5000 clients is counted by the bench."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Thread-per-connection uppercase echo server.", argv)
    signal.signal(signal.SIGTERM, _stop)
    with Server((args.host, args.port), UpperHandler) as server:
        announce(args.host, server.server_address[1])
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

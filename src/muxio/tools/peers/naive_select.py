"""The classic select() tutorial server, kept as the baseline everyone starts from.

The design is the tutorial's on purpose: select() over Python lists with a
0.5 s timeout, recv(1024), replies queued per socket in a dict and sent when
the socket is writable. Only the fixes that stop it from crashing under load
were made. It still cannot watch descriptors >= FD_SETSIZE (1024), so it dies
under many connections; compare reports that instead of hiding it.
"""

from __future__ import annotations

import collections
import contextlib
import select
import signal
import socket
import sys
from types import FrameType

from muxio.tools.peers import announce, parse_args


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(host: str, port: int) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setblocking(False)
    server.bind((host, port))
    # The tutorial listens with a backlog of 5; the benchmark opens hundreds of
    # connections at once and would see refusals that measure nothing but that.
    server.listen(1024)
    announce(host, server.getsockname()[1])

    inputs: list[socket.socket] = [server]
    outputs: list[socket.socket] = []
    # The tutorial used queue.Queue; a deque lets an unsent remainder go back in front.
    message_queues: dict[socket.socket, collections.deque[bytes]] = {}

    def drop(s: socket.socket) -> None:
        if s in outputs:
            outputs.remove(s)
        if s in inputs:
            inputs.remove(s)
        message_queues.pop(s, None)
        s.close()

    try:
        while inputs:
            readable, writable, _ = select.select(inputs, outputs, [], 0.5)
            for s in readable:
                if s is server:
                    connection, _addr = s.accept()
                    connection.setblocking(False)
                    inputs.append(connection)
                    message_queues[connection] = collections.deque()
                    continue
                try:
                    data = s.recv(1024)
                except OSError:
                    data = b""
                if data:
                    message_queues[s].append(data.upper())
                    if s not in outputs:
                        outputs.append(s)
                else:
                    drop(s)
            for s in writable:
                queue = message_queues.get(s)
                if queue is None:
                    continue
                if not queue:
                    outputs.remove(s)
                    continue
                next_msg = queue.popleft()
                try:
                    sent = s.send(next_msg)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    drop(s)
                    continue
                if sent < len(next_msg):
                    queue.appendleft(next_msg[sent:])
    finally:
        for s in inputs + outputs:
            s.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Tutorial-style select() uppercase echo server.", argv)
    signal.signal(signal.SIGTERM, _stop)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

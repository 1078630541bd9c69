"""User and system CPU per request inside muxio's loop, without a load generator.

Socket pairs stand in for connections: the client ends live in this same
thread, so each round writes one message to every client end, runs loop
iterations until every reply is back, and charges only the time spent inside
the loop to the server: the median wall time of a round (everything is
ready, so the loop never waits: wall time is CPU time, and the median shrugs
off preemption), and thread user/system time from getrusage.  No second process
and no scheduler noise: a change to the hot path shows as a change here.

    python benchmarks/loop_overhead.py [--connections 100] [--size 1024] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import threading
import time

from muxio.loop import EventLoop
from muxio.services.upper import UpperEcho
from muxio.transports.stream import Transport
from muxio.watchdog import Watchdog


def thread_cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime, r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--poller", default="epoll")
    ap.add_argument("--family", choices=("tcp", "unix"), default="tcp")
    ap.add_argument(
        "--watchdog", action="store_true", help="run the slow-callback watchdog (100 ms) too"
    )
    args = ap.parse_args()
    loop = EventLoop(args.poller, slow_callback_ms=100 if args.watchdog else None)
    if args.watchdog:
        Watchdog(loop, 0.1).start()
        loop._thread_id = threading.get_ident()
    clients = []
    listener = socket.create_server(("127.0.0.1", 0)) if args.family == "tcp" else None
    for _ in range(args.connections):
        if listener is not None:
            client = socket.create_connection(listener.getsockname())
            server, _addr = listener.accept()
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            client, server = socket.socketpair()
        server.setblocking(False)
        Transport(loop, server, UpperEcho()).start()
        clients.append(client)
    message = bytes(range(256)) * (args.size // 256) + b"a" * (args.size % 256)
    expected = message.upper()
    user = system = 0.0
    walls = []
    for _ in range(args.rounds):
        for c in clients:
            c.sendall(message)
        u0, s0 = thread_cpu()
        w0 = time.perf_counter()
        counters = loop._counters  # not stats(): no dict per iteration in the timed part
        target = counters.events + len(clients)
        while counters.events < target:
            loop._run_once()
        walls.append(time.perf_counter() - w0)
        u1, s1 = thread_cpu()
        user += u1 - u0
        system += s1 - s0
        for c in clients:
            got = b""
            while len(got) < len(expected):
                got += c.recv(len(expected) - len(got))
            assert got == expected
    n = args.rounds * args.connections
    print(
        f"{args.connections} connections x {args.size} B, {args.poller}, "
        f"watchdog {'on' if args.watchdog else 'off'}, {n} requests: "
        f"median wall {statistics.median(walls) / args.connections * 1e6:.2f} us/req, "
        f"user {user / n * 1e6:.2f} us/req, sys {system / n * 1e6:.2f} us/req, "
        f"events/poll {loop.stats()['events_per_poll']:.1f}"
    )


if __name__ == "__main__":
    main()

"""A client that sends without reading cannot make the server grow.

Starts `python -m muxio serve`, opens N clients that each send random data
without reading until their sends have blocked for a while (TCP's window is
full end to end), reads the server's peak RSS, then has every client read
its replies and checks them byte-exact against `bytes.upper()`.

    python benchmarks/flood_rss.py [--clients 1] [--poller epoll]
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys
import time

from muxio.tools.process import start_server


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--poller", default="epoll")
    ap.add_argument("--blocked-for", type=float, default=2.0, help="seconds of blocked sends")
    args = ap.parse_args()
    server = start_server(
        [sys.executable, "-m", "muxio", "serve", "--port", "0", "--poller", args.poller]
    )
    try:
        port, proc = server.port, server.proc
        base = status_kib(proc.pid, "VmRSS")
        chunk = os.urandom(1 << 20)
        ring = memoryview(chunk + chunk)  # the stream is chunk repeated, whatever each send takes
        clients = []
        for _ in range(args.clients):
            c = socket.create_connection(("127.0.0.1", port))
            c.setblocking(False)
            clients.append([c, 0])
        last_progress = time.monotonic()
        deadline = last_progress + 120
        while time.monotonic() - last_progress < args.blocked_for:
            if time.monotonic() > deadline:
                raise SystemExit("sends never blocked")
            for entry in clients:
                pos = entry[1] % len(chunk)
                try:
                    n = entry[0].send(ring[pos : pos + len(chunk)])
                except BlockingIOError:
                    continue
                entry[1] += n
                last_progress = time.monotonic()
            time.sleep(0.01)
        peak = status_kib(proc.pid, "VmHWM")
        sent = sum(e[1] for e in clients)
        print(
            f"{args.clients} client(s) sent {sent / 2**20:.1f} MiB without reading until their "
            f"sends blocked for {args.blocked_for:.0f} s; server RSS {base / 1024:.1f} MiB at "
            f"start, peak {peak / 1024:.1f} MiB"
        )
        sel = selectors.DefaultSelector()
        received = {}
        for entry in clients:
            sock = entry[0]
            sock.shutdown(socket.SHUT_WR)
            sel.register(sock, selectors.EVENT_READ)
            received[sock] = bytearray()
        open_ = len(clients)
        while open_:
            for key, _ in sel.select(10):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(1 << 20)
                if data:
                    received[sock] += data
                else:
                    sel.unregister(sock)
                    open_ -= 1
        exact = 0
        for entry in clients:
            sock, n = entry
            full = (chunk * (n // len(chunk) + 1))[:n].upper()
            exact += bytes(received[sock]) == full
            sock.close()
        print(f"every client read back: {exact}/{len(clients)} byte-exact, {sent} bytes each way")
    finally:
        server.stop(10)


if __name__ == "__main__":
    main()

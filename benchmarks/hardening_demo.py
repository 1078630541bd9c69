"""What a hostile client or a careless operator can do to `muxio serve` (issue 11).

Each scenario starts its own `python -m muxio serve` (from --src, default this
checkout's src/) and prints what it measured:

    python benchmarks/hardening_demo.py rst-storm [--connections 112000]
    python benchmarks/hardening_demo.py work-flood [--clients 100]
    python benchmarks/hardening_demo.py dead-clients [--clients 10] [--jobs 64] [--ms 1000]
    python benchmarks/hardening_demo.py sigterm-threads

rst-storm      connections that send one byte, read the reply and close with a
               reset, against --idle-timeout 3600: the server's RSS before and after.
work-flood     clients of the work service that send `work 10000` and 63 lines
               of 64 KiB and never read: the server's RSS; then they close, and
               the descriptors and RSS the server still holds.
dead-clients   clients that queue `work <ms>` jobs and close at once; then how
               long a new client's `work 0` waits.
sigterm-threads  two `work 10000` running under --offload threads; SIGTERM with
               --shutdown-timeout 1: how long until the process exits, and its code.

Pass --src /path/to/other/src to measure another checkout the same way.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from muxio.tools.process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


class Server(ServerProcess):
    """`muxio serve` from `src` on a free port, running once constructed."""

    def __init__(self, src: str, *args: str) -> None:
        super().__init__(
            [sys.executable, "-m", "muxio", "serve", "--port", "0", *args],
            env=dict(os.environ, PYTHONPATH=src),
            name="muxio serve",
        )
        try:
            self.wait_listening(30)
        except BaseException:
            self.stop()
            raise

    @property
    def tcp(self) -> tuple[str, int]:
        return self.host, self.port

    def status_kib(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def rss_mib(self) -> float:
        return self.status_kib("VmRSS") / 1024

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self, timeout: float = 30.0) -> int:
        return super().stop(timeout)


def rst_storm(args: argparse.Namespace) -> None:
    srv = Server(args.src, "--idle-timeout", "3600")
    before = srv.rss_mib()
    linger = struct.pack("ii", 1, 0)
    t0 = time.monotonic()
    for _ in range(args.connections):
        s = socket.create_connection(srv.tcp)
        s.sendall(b"x")
        s.recv(1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()
    took = time.monotonic() - t0
    time.sleep(1.0)  # the last resets reach the server
    after = srv.rss_mib()
    srv.stop()
    print(
        f"rst-storm: {args.connections} connections in {took:.1f} s, --idle-timeout 3600: "
        f"RSS {before:.1f} MiB before, {after:.1f} MiB after "
        f"({(after - before) * 1024 * 1024 / args.connections:.0f} B per closed connection)"
    )


def send_until_blocked(sock: socket.socket, data: bytes, stall: float = 1.0) -> int:
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        while sent < len(data) and sel.select(stall):
            try:
                sent += sock.send(view[sent : sent + (1 << 20)])
            except BlockingIOError:
                continue
    return sent


def work_flood(args: argparse.Namespace) -> None:
    srv = Server(args.src, "--service", "work", "--offload", "processes", "--pool-size", "2")
    before = srv.rss_mib()
    baseline_fds = srv.fds()
    request = b"work 10000\n" + (b"a" * (64 * 1024 - 1) + b"\n") * 63
    clients = []
    sent = 0
    for _ in range(args.clients):
        sock = socket.create_connection(srv.tcp)
        clients.append(sock)
        sent += send_until_blocked(sock, request, stall=0.2)
    time.sleep(2.0)
    during = srv.rss_mib()
    peak = srv.status_kib("VmHWM") / 1024
    fds_during = srv.fds()
    for sock in clients:
        sock.close()
    closed = time.monotonic()
    time.sleep(3.0)
    after = srv.rss_mib()
    fds_after = srv.fds()
    # Their unsent input still sits in the kernels, in front of their FIN, so the server
    # cannot see them go; the client kernels reset the orphaned sockets in the end.
    released = None
    while time.monotonic() - closed < args.wait:
        if srv.fds() <= baseline_fds + 2:
            released = time.monotonic() - closed
            break
        time.sleep(1.0)
    srv.stop()
    print(
        f"work-flood: {args.clients} clients that never read sent {sent / 2**20:.0f} MiB: "
        f"RSS {before:.1f} MiB idle, {during:.1f} MiB with them (peak {peak:.1f}); "
        f"{fds_during} descriptors open; 3 s after they closed: {fds_after} descriptors, "
        f"RSS {after:.1f} MiB; descriptors back to {baseline_fds} "
        + (f"after {released:.0f} s" if released is not None else f"not within {args.wait:g} s")
    )


def dead_clients(args: argparse.Namespace) -> None:
    srv = Server(args.src, "--service", "work", "--offload", "processes", "--pool-size", "2")
    for _ in range(args.clients):
        with socket.create_connection(srv.tcp) as sock:
            sock.sendall(f"work {args.ms}\n".encode() * args.jobs)
    time.sleep(0.2)
    t0 = time.monotonic()
    with socket.create_connection(srv.tcp) as sock:
        sock.settimeout(600)
        sock.sendall(b"work 0\n")
        reply = sock.recv(100)
    waited = time.monotonic() - t0
    srv.stop()
    print(
        f"dead-clients: {args.clients} clients queued {args.jobs} x work {args.ms} and closed; "
        f"a new client's work 0 was answered ({reply!r}) after {waited:.2f} s "
        f"(one job is {args.ms / 1000:g} s)"
    )


def sigterm_threads(args: argparse.Namespace) -> None:
    srv = Server(
        args.src,
        "--service", "work", "--offload", "threads", "--pool-size", "2",
        "--shutdown-timeout", "1",
    )  # fmt: skip
    clients = [socket.create_connection(srv.tcp) for _ in range(2)]
    for sock in clients:
        sock.sendall(b"work 10000\n")
    time.sleep(0.5)
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(60)
    took = time.monotonic() - t0
    for sock in clients:
        sock.close()
    print(
        f"sigterm-threads: two work 10000 in threads, SIGTERM with --shutdown-timeout 1: "
        f"exited after {took:.2f} s with code {rc}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "scenario", choices=["rst-storm", "work-flood", "dead-clients", "sigterm-threads"]
    )
    ap.add_argument("--src", default=str(ROOT / "src"), help="the muxio to run (its src/)")
    ap.add_argument("--connections", type=int, default=112_000)
    ap.add_argument("--clients", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--ms", type=int, default=1000)
    ap.add_argument("--wait", type=float, default=240, help="work-flood: seconds to watch")
    args = ap.parse_args()
    if args.clients is None:
        args.clients = 100 if args.scenario == "work-flood" else 10
    {
        "rst-storm": rst_storm,
        "work-flood": work_flood,
        "dead-clients": dead_clients,
        "sigterm-threads": sigterm_threads,
    }[args.scenario](args)


if __name__ == "__main__":
    main()

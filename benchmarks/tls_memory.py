"""Server memory per TLS connection, idle or still waiting for its ClientHello (issue 19 item 8).

Starts `python -m muxio serve --tls-cert ... --tls-key ...` (the `upper`
service), warms it up with a few full connections, then opens N more and
reads the server's RSS growth once it holds all of them:

- `idle`: handshake done, one 1-byte request answered (which proves the
  server finished its side of the handshake too), then nothing;
- `silent`: TCP connected, no ClientHello sent (the server waits in its
  handshake, until its handshake timeout);
- `after-data`: like `idle`, after a `--data-kib` request and its reply
  (what a connection keeps once a transfer is over: OpenSSL's buffers do
  not shrink back).

The server has accepted them all when its /proc/PID/fd holds N more
descriptors.  Printed: KiB of server RSS per connection, for each kind.

    python benchmarks/tls_memory.py [--connections 2000] [--kinds idle,silent,after-data]
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from muxio.tools.compare import TLSFiles, make_tls_files
from muxio.tools.process import ServerProcess, start_server


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/PID/status")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def idle_connection(port: int, ctx: ssl.SSLContext) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    tls = ctx.wrap_socket(raw)
    tls.sendall(b"x")
    if tls.recv(16) != b"X":
        raise RuntimeError("the server's echo was wrong")
    return tls


def after_data_connection(port: int, ctx: ssl.SSLContext, size: int) -> socket.socket:
    tls = idle_connection(port, ctx)
    payload = os.urandom(size)
    tls.sendall(payload)
    got = bytearray()
    while len(got) < size:
        chunk = tls.recv(size - len(got))
        if not chunk:
            raise RuntimeError("the server closed the connection mid-reply")
        got += chunk
    if got != payload.upper():
        raise RuntimeError("the server's echo was wrong")
    return tls


def silent_connection(port: int, ctx: ssl.SSLContext) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def wait_for_fds(server: ServerProcess, want: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while open_fds(server.pid) < want:
        if time.monotonic() > deadline or not server.alive():
            raise RuntimeError(
                f"server holds {open_fds(server.pid)} descriptors, expected {want}: "
                f"{server.tail()}"
            )
        time.sleep(0.05)


def measure(kind: str, count: int, poller: str, tls: TLSFiles, data_kib: int) -> float:
    argv = [
        sys.executable, "-m", "muxio", "serve", "--port", "0", "--poller", poller,
        "--tls-cert", tls.cert, "--tls-key", tls.key,
    ]  # fmt: skip
    openers: dict[str, Callable[[int, ssl.SSLContext], socket.socket]] = {
        "idle": idle_connection,
        "silent": silent_connection,
        "after-data": functools.partial(after_data_connection, size=data_kib * 1024),
    }
    opener = openers[kind]
    ctx = client_context()
    with start_server(argv) as server:
        port = server.port
        for _ in range(20):  # warm-up: imports, the ssl module's first allocations
            idle_connection(port, ctx).close()
        time.sleep(0.5)
        fds = open_fds(server.pid)
        before = rss_kib(server.pid)
        conns = [opener(port, ctx) for _ in range(count)]
        wait_for_fds(server, fds + count)
        after = rss_kib(server.pid)
        for c in conns:
            c.close()
    return (after - before) / count


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--kinds", default="idle,silent,after-data")
    p.add_argument("--poller", default="epoll")
    p.add_argument("--data-kib", type=int, default=256, help="after-data: the request's size")
    args = p.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in ("idle", "silent", "after-data"):
            print(f"tls_memory: unknown kind {k!r}; use idle, silent, after-data", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as scratch:
        files = make_tls_files(scratch)
        for kind in kinds:
            per = measure(kind, args.connections, args.poller, files, args.data_kib)
            print(f"{kind}: {args.connections} TLS connections, server RSS +{per:.1f} KiB each")
    return 0


if __name__ == "__main__":
    sys.exit(main())

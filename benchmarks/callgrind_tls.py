"""Instructions per TLS connection and per large TLS request, counted by callgrind.

What the TLS read buffer costs (issue 19 item 8): each server runs under
`valgrind --tool=callgrind` with a throwaway certificate; the counters are
zeroed and dumped around two phases, so each count holds that phase only:

- `connections`: N new TLS connections, each handshake, one 1-byte echo, close;
- `requests`: R requests of `--size` bytes (64 KiB by default) and their
  uppercase echoes, over C connections opened before the zero.

The client is this process (blocking `ssl` sockets, one request at a time),
which callgrind does not count.

    python benchmarks/callgrind_tls.py [--servers muxio-epoll-nowatchdog,...]
        [--connections 20] [--requests 100] [--size 65536] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

from callgrind_per_request import _newest_dump, callgrind_control, known_servers, read_instructions

from muxio.tools.compare import ServerSpec, SpecProcess, make_tls_files

DEFAULT = "muxio-epoll-nowatchdog,muxio-asyncio-protocol-nowatchdog"


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=300))
    _echo(tls, b"x")
    return tls


def _echo(tls: ssl.SSLSocket, payload: bytes) -> None:
    tls.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        chunk = tls.recv(len(payload) - len(got))
        if not chunk:
            raise SystemExit("the server closed a connection mid-reply")
        got += chunk
    if got != payload.upper():
        raise SystemExit("the server's echo was wrong")


def _counted(pid: int, out_dir: Path, phase: object) -> int:
    before = set(out_dir.glob("cg.*"))
    callgrind_control("-z", pid)
    phase()  # type: ignore[operator]
    callgrind_control("-d", pid)
    return read_instructions(_newest_dump(out_dir, pid, before))[0]


def measure(spec: ServerSpec, args: argparse.Namespace, tls_argv: tuple[str, ...]) -> list[float]:
    out_dir = Path(tempfile.mkdtemp(prefix="muxio-callgrind-tls-"))
    wrapped = ServerSpec(
        spec.name,
        ("valgrind", "--tool=callgrind", "--instr-atstart=yes",
         f"--callgrind-out-file={out_dir}/cg.%p", *spec.argv, *tls_argv),
    )  # fmt: skip
    ctx = _client_context()
    payload = bytes(b"abcdefghij"[i % 10] for i in range(args.size))
    server = SpecProcess(wrapped, "127.0.0.1")
    try:
        port = server.wait_listening(timeout=180)
        for _ in range(3):
            _connect(port, ctx).close()
        idle = _counted(server.pid, out_dir, lambda: None)

        def connections() -> None:
            for _ in range(args.connections):
                _connect(port, ctx).close()
            time.sleep(1.0)  # the server sees each close and tears the connection down

        per_conn = (_counted(server.pid, out_dir, connections) - idle) / args.connections
        conns = [_connect(port, ctx) for _ in range(args.pool)]
        for c in conns:
            _echo(c, payload)

        def requests() -> None:
            for i in range(args.requests):
                _echo(conns[i % len(conns)], payload)

        per_req = (_counted(server.pid, out_dir, requests) - idle) / args.requests
        for c in conns:
            c.close()
        return [per_conn, per_req]
    finally:
        server.stop(timeout=60)
        for f in out_dir.glob("*"):
            f.unlink()
        out_dir.rmdir()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", default=DEFAULT)
    p.add_argument("--connections", type=int, default=20, help="new connections counted (20)")
    p.add_argument("--requests", type=int, default=100, help="requests counted (100)")
    p.add_argument("--size", type=int, default=65536, help="request bytes (65536)")
    p.add_argument("--pool", type=int, default=4, help="connections the requests go over (4)")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    known = known_servers()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for n in names:
        if n not in known:
            print(f"callgrind_tls: unknown server {n!r}; one of {', '.join(known)}",
                  file=sys.stderr)  # fmt: skip
            return 2
    with tempfile.TemporaryDirectory() as scratch:
        tls = make_tls_files(scratch)
        print(f"| server | Ir per TLS connection | Ir per {args.size}-byte request |")
        print("|---|---:|---:|")
        for name in names:
            for _ in range(args.repeat):
                per_conn, per_req = measure(known[name], args, tls.argv())
                print(f"| {name} | {per_conn:,.0f} | {per_req:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())

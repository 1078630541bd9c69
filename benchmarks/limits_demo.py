"""The overload limits of `muxio serve`, shown as a user would see them.

Three scenarios, each against a real `python -m muxio serve` subprocess:

1. `--max-connections 50` and 60 clients: how many are served, how many are
   closed at once (EOF within 1 s, before sending anything).
2. `--idle-timeout 1`: when a silent connection is closed, and whether an
   active one (a round trip every 100 ms) survives.
3. `ulimit -n 64` (applied to the running server with prlimit) and 100
   clients: the server's CPU share while it is out of descriptors, and
   whether a new client is served once 50 of the old ones leave.

    python benchmarks/limits_demo.py
"""

from __future__ import annotations

import resource
import socket
import sys
import time

from muxio.tools.process import ServerProcess, start_server


def server(*args: str) -> ServerProcess:
    """`muxio serve` on a free port, stopped when its `with` block ends."""
    return start_server([sys.executable, "-m", "muxio", "serve", "--port", "0", *args])


def round_trip(sock: socket.socket, data: bytes) -> bool:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            return False
        got += chunk
    return got == data.upper()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.settimeout(10)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def max_connections() -> None:
    with server("--max-connections", "50") as srv:
        port = srv.port
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(60)]
        served = sum(round_trip(c, b"hello") for c in clients[:50])
        refused = sum(closed_within(c, 1.0) for c in clients[50:])
        again = sum(round_trip(c, b"still there") for c in clients[:50])
        warnings = sum("refused a connection" in line for line in srv.lines)
        for c in clients:
            c.close()
    print(
        f"--max-connections 50, 60 clients: {served} served, {refused} of the other 10 "
        f"closed within 1 s, {again} of the first 50 still served afterwards, "
        f"{warnings} warning line(s)"
    )


def idle_timeout() -> None:
    with server("--idle-timeout", "1") as srv:
        port = srv.port
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        active = socket.create_connection(("127.0.0.1", port), timeout=10)
        start = time.monotonic()
        closed_at = None
        active_ok = True
        while time.monotonic() - start < 3.0:
            active_ok = active_ok and round_trip(active, b"ping")
            if closed_at is None and closed_within(silent, 0.1):
                closed_at = time.monotonic() - start
        silent.close()
        active.close()
    when = f"after {closed_at:.2f} s" if closed_at is not None else "never (within 3 s)"
    print(
        f"--idle-timeout 1: silent connection closed {when}; "
        f"active connection {'kept for 3 s' if active_ok else 'LOST'}"
    )


def out_of_descriptors() -> None:
    with server() as srv:
        port, proc = srv.port, srv.proc
        _, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (64, hard))
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]
        srv.wait_line("cannot accept", timeout=10)
        served = sum(round_trip(c, b"x") for c in clients[:40])
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(2.0)
        share = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        for c in clients[:50]:
            c.close()
        late = socket.create_connection(("127.0.0.1", port), timeout=10)
        late_ok = round_trip(late, b"served after all")
        backlog_ok = sum(round_trip(c, b"y") for c in clients[50:])
        late.close()
        for c in clients[50:]:
            c.close()
    print(
        f"ulimit -n 64, 100 clients: {served}/40 early clients served; server CPU while out "
        f"of descriptors {share:.1%}; after 50 left, a new client "
        f"{'was served' if late_ok else 'was NOT served'} and {backlog_ok}/50 waiting ones too"
    )


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    max_connections()
    idle_timeout()
    out_of_descriptors()


if __name__ == "__main__":
    main()

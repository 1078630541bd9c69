"""Requests lost over SIGHUP reloads of `muxio serve --workers 2` (issue 19).

Two loads at once against the supervisor: `muxio bench --reconnect
--allow-lost` (keep-alive connections, reopened when a drain closes them;
its `lost` count is what no graceful drain explains), and client threads
that open a new connection per request (the load that finds a connection
reset in a listen queue, or accepted and closed unanswered).  The reloads
come one after another, each once the previous one has retired both old
workers.  Run it with the tree to measure first on PYTHONPATH; the
processes it starts run that same muxio:

    PYTHONPATH=src python benchmarks/reload_loss.py --worker-sockets shared --reloads 10 \
        [--service upper-streams]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import threading
import time

from muxio.tools.process import source_env, start_server


class ShortConnections:
    """Threads that connect, send one request, read its reply and close, counting outcomes."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.answered = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as c:
                    c.sendall(b"short")
                    reply = b""
                    while len(reply) < 5:
                        chunk = c.recv(5 - len(reply))
                        if not chunk:
                            break
                        reply += chunk
            except OSError as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")
                continue
            if reply == b"SHORT":
                self.answered += 1
            else:
                self.failed.append(f"reply {reply!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-sockets", choices=("reuseport", "shared"), default="reuseport")
    parser.add_argument("--service", default="upper", help="upper or upper-streams")
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0, help="bench seconds")
    parser.add_argument("--connections", type=int, default=50, help="bench connections")
    parser.add_argument("--short-clients", type=int, default=4)
    args = parser.parse_args()
    env = source_env()
    sp = start_server(
        [sys.executable, "-m", "muxio", "serve", "--port", "0", "--workers", "2",
         "--worker-sockets", args.worker_sockets, "--service", args.service],
        env=env,
        name="muxio supervisor",
    )  # fmt: skip
    try:
        for _ in range(2):
            sp.wait_line(r"worker \d+ \(pid \d+\) ready")
        load = subprocess.Popen(
            [sys.executable, "-m", "muxio", "bench", "--port", str(sp.port), "--reconnect",
             "--allow-lost", "--json", "--processes", "1", "--connections",
             str(args.connections), "--duration", str(args.duration), "--warmup", "0"],
            stdout=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        short = ShortConnections(sp.port, args.short_clients)
        for t in short.threads:
            t.start()
        done = 0
        retired = 0
        began = time.monotonic()
        for _ in range(args.reloads):
            if load.poll() is not None:
                break
            sp.proc.send_signal(signal.SIGHUP)
            for _ in range(2):
                sp.wait_line(r"worker \d+ \(pid \d+\) exited \(exit code 0\)", 30)
                retired += 1
            done += 1
        reloads_took = time.monotonic() - began
        out, _ = load.communicate(timeout=args.duration + 60)
        short.stop.set()
        for t in short.threads:
            t.join(15)
        bench = json.loads(out)
        print(
            f"{args.service}, {args.worker_sockets}: {done} reloads in {reloads_took:.1f} s "
            f"({retired} workers retired, exit 0); "
            f"bench --reconnect: {bench['requests']} requests, "
            f"{bench['reconnects']} reconnects, {bench['lost']} lost, "
            f"{bench['errors']['total']} errors; new connection per request: "
            f"{short.answered} answered, {len(short.failed)} failed"
            + (f" (first: {short.failed[0]})" if short.failed else "")
        )
        if bench["lost"]:
            print(f"  first lost: {bench['first_lost']}")
        return 0 if done == args.reloads else 1
    finally:
        sp.stop(15)


if __name__ == "__main__":
    sys.exit(main())

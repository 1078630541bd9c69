"""TLS handshakes per second: a new connection for every request (issue 8).

`muxio compare --tls` measures requests on connections that shook hands
before the window; this measures the other half of a TLS server's cost.
Each server runs as `muxio compare` starts it (a fresh subprocess pinned to
one CPU, a throwaway P-256 certificate); client processes on the other CPUs
loop: connect, TLS handshake (TLS 1.3, no session resumption, certificate
not verified: the server pays the same either way), one 1 KiB request and its
reply, close. Reported: handshakes per second and the server's CPU time per
handshake, read from the OS over the measured window.

    python benchmarks/tls_handshakes.py [--servers muxio-epoll,uvloop] [--duration 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from muxio.tools.compare import (
    ProcessTree,
    SpecProcess,
    cpu_plan,
    make_tls_files,
    select_servers,
)

DEFAULT = "muxio-epoll,muxio-asyncio-protocol,asyncio-protocol,uvloop"


def _client(
    port: int, start: float, end: float, cpus: list[int], out: multiprocessing.Queue  # type: ignore[type-arg]
) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_TICKET
    payload = os.urandom(1024)
    expected = payload.upper()
    done = errors = 0
    while time.time() < start:
        time.sleep(0.001)
    while time.time() < end:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            with raw, ctx.wrap_socket(raw) as tls:
                tls.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            if got == expected:
                done += 1
            else:
                errors += 1
        except OSError:
            errors += 1
    out.put((done, errors))


def measure(spec_name: str, tls: object, duration: float, clients: int) -> dict[str, float]:
    (spec,) = select_servers(spec_name, tls)  # type: ignore[arg-type]
    server_cpu, load_cpus = cpu_plan()
    server = SpecProcess(spec, "127.0.0.1", server_cpu)
    try:
        port = server.wait_listening()
        tree = ProcessTree(server.pid)
        queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        start = time.time() + 0.5
        end = start + duration
        procs = [
            multiprocessing.Process(target=_client, args=(port, start, end, load_cpus, queue))
            for _ in range(clients)
        ]
        for p in procs:
            p.start()
        time.sleep(max(0.0, start - time.time()))
        cpu0 = tree.cpu_seconds() or 0.0
        time.sleep(max(0.0, end - time.time()))
        cpu1 = tree.cpu_seconds() or 0.0
        results = [queue.get(timeout=duration + 30) for _ in procs]
        for p in procs:
            p.join(10)
        done = sum(r[0] for r in results)
        errors = sum(r[1] for r in results)
        return {
            "handshakes_per_s": done / duration,
            "cpu_ms_per_handshake": (cpu1 - cpu0) / done * 1e3 if done else float("nan"),
            "errors": errors,
        }
    finally:
        server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", default=DEFAULT)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    args = p.parse_args()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    with tempfile.TemporaryDirectory() as scratch:
        tls = make_tls_files(scratch)
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for r in range(args.repeat):
            for name in names:
                m = measure(name, tls, args.duration, args.clients)
                runs[name].append(m)
                print(f"[{r + 1}/{args.repeat}] {name}: {m['handshakes_per_s']:,.0f}/s, "
                      f"{m['cpu_ms_per_handshake']:.3f} ms CPU each, {m['errors']:.0f} errors",
                      file=sys.stderr, flush=True)
    ref = "uvloop" if "uvloop" in runs else names[0]
    ref_cpu = statistics.median(m["cpu_ms_per_handshake"] for m in runs[ref])
    print(f"| server | handshakes/s | server CPU ms/handshake | vs {ref} | errors |")
    print("|---|---:|---:|---:|---:|")
    for name, ms in runs.items():
        rate = statistics.median(m["handshakes_per_s"] for m in ms)
        cpu = statistics.median(m["cpu_ms_per_handshake"] for m in ms)
        errors = sum(m["errors"] for m in ms)
        print(f"| {name} | {rate:,.0f} | {cpu:.3f} | {cpu / ref_cpu:.2f}x | {errors:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

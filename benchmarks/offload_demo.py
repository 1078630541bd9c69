"""What offloading buys: a light client's round trips beside CPU-heavy ones.

For each ``--offload`` mode this starts ``muxio serve --service work`` on a
free port, has two clients send ``work 300`` over and over (each waits for
its reply, then asks again), and has a third send a plain line every 20 ms
on a fixed schedule (open loop: a late reply does not delay the next
send), timing each round trip.  It prints the plain client's p50, p99 and
max, how much work was done and how many slow-callback warnings the
server logged.

    python benchmarks/offload_demo.py                      # none and processes, 5 s each
    python benchmarks/offload_demo.py --modes processes threads none --duration 10

The tests import `run_scenario` from here, so the demo stays runnable.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from muxio.tools.process import ServerProcess


@dataclass
class ScenarioResult:
    mode: str
    rtts: list[float]
    """The plain client's round trips, in seconds, in send order."""
    lost: int
    """Plain lines sent but not answered by the end."""
    work_done: int
    log: list[str] = field(default_factory=list)

    @property
    def slow_warnings(self) -> int:
        return sum("slow callback" in line for line in self.log)

    def percentile(self, p: float) -> float:
        if not self.rtts:
            return math.nan
        ordered = sorted(self.rtts)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]

    def row(self) -> str:
        ms = 1000
        return (
            f"{self.mode:<10} {len(self.rtts):>6} {self.percentile(50) * ms:>8.1f} "
            f"{self.percentile(99) * ms:>8.1f} {max(self.rtts, default=math.nan) * ms:>8.1f} "
            f"{self.work_done:>6} {self.slow_warnings:>6}"
        )


HEADER = (
    f"{'offload':<10} {'plain':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
    f"{'work':>6} {'slow':>6}"
)


class Server(ServerProcess):
    """`python -m muxio serve --service work` with its stderr collected."""

    def __init__(self, mode: str, pool_size: int | None, slow_ms: float) -> None:
        cmd = [
            sys.executable, "-m", "muxio", "serve", "--service", "work", "--port", "0",
            "--offload", mode, "--slow-callback-ms", str(slow_ms),
        ]  # fmt: skip
        if pool_size is not None:
            cmd += ["--pool-size", str(pool_size)]
        super().__init__(cmd, name=f"muxio serve --offload {mode}")

    @property
    def log(self) -> list[str]:
        return self.lines

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT (a graceful shutdown), then SIGTERM and SIGKILL if it overstays."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                super().stop()
                raise
        return super().stop()


def _read_line(sock: socket.socket, buf: bytearray, deadline: float) -> bytes:
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply in time")
        sock.settimeout(remaining)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    end = buf.index(b"\n")
    line = bytes(buf[:end])
    del buf[: end + 1]
    return line


def work_client(
    port: int, work_ms: int, stop: threading.Event, started: threading.Event, done: list[int]
) -> None:
    """`work <ms>`, wait for `WORK <ms>`, again, until `stop`."""
    request = f"work {work_ms}\n".encode()
    expected = f"WORK {work_ms}".encode()
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while not stop.is_set():
            sock.sendall(request)
            started.set()
            # with --offload none two work clients may queue behind each other
            line = _read_line(sock, buf, time.monotonic() + 4 * work_ms / 1000 + 10)
            if line != expected:
                raise AssertionError(f"work client got {line!r}")
            done.append(1)


def plain_client(port: int, duration: float, interval: float) -> tuple[list[float], int]:
    """Send ``ping <n>`` every `interval` s for `duration` s; time each ``PING <n>``.

    Open loop: sends follow the clock, not the replies, so a stalled server
    shows up as the whole stall rather than one slow sample.  Replies still
    missing `duration` + 5 s after the start are counted as lost.
    """
    sent: dict[int, float] = {}
    rtts: list[float] = []
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            start = time.monotonic()
            end_sending = start + duration
            give_up = end_sending + 5.0
            n = 0
            next_send = start
            while True:
                now = time.monotonic()
                if now >= next_send and now < end_sending:
                    sent[n] = now
                    sock.sendall(f"ping {n}\n".encode())  # a few bytes: never blocks
                    n += 1
                    next_send = start + n * interval
                if now >= end_sending and (len(rtts) == len(sent) or now >= give_up):
                    break
                wake = next_send if now < end_sending else give_up
                for _key, _mask in sel.select(max(0.0, wake - time.monotonic())):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("the server closed the plain connection")
                    buf += chunk
                    arrived = time.monotonic()
                    while b"\n" in buf:
                        end = buf.index(b"\n")
                        line = bytes(buf[:end])
                        del buf[: end + 1]
                        word, _, number = line.partition(b" ")
                        if word != b"PING":
                            raise AssertionError(f"plain client got {line!r}")
                        rtts.append(arrived - sent[int(number)])
    return rtts, len(sent) - len(rtts)


def run_scenario(
    mode: str,
    *,
    duration: float = 5.0,
    interval: float = 0.02,
    work_ms: int = 300,
    work_clients: int = 2,
    pool_size: int | None = None,
    slow_ms: float = 100.0,
) -> ScenarioResult:
    server = Server(mode, pool_size, slow_ms)
    stop = threading.Event()
    done: list[int] = []
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []
    try:
        port = server.wait_listening(30)
        for _ in range(work_clients):
            started = threading.Event()

            def run(started: threading.Event = started) -> None:
                try:
                    work_client(port, work_ms, stop, started, done)
                except BaseException as exc:
                    errors.append(exc)
                    started.set()

            t = threading.Thread(target=run, daemon=True)
            t.start()
            threads.append(t)
            if not started.wait(10):
                raise RuntimeError("a work client did not start")
        rtts, lost = plain_client(port, duration, interval)
    finally:
        stop.set()
        for t in threads:
            t.join(4 * work_ms / 1000 + 15)
        with contextlib.suppress(Exception):
            server.stop()
    if errors:
        raise RuntimeError(f"a work client failed: {errors[0]!r}") from errors[0]
    return ScenarioResult(mode, rtts, lost, len(done), server.log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["processes", "none"],
                        choices=["none", "threads", "processes"])  # fmt: skip
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per mode")
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--work-ms", type=int, default=300)
    parser.add_argument("--pool-size", type=int, default=None)
    parser.add_argument("--show-log", action="store_true", help="print the servers' logs")
    args = parser.parse_args()
    results = []
    for mode in args.modes:
        results.append(
            run_scenario(
                mode,
                duration=args.duration,
                interval=args.interval_ms / 1000,
                work_ms=args.work_ms,
                pool_size=args.pool_size,
            )
        )
        if args.show_log:
            print("\n".join(results[-1].log), file=sys.stderr)
    print(
        f"plain client: a line every {args.interval_ms:g} ms for {args.duration:g} s beside "
        f"2 clients sending 'work {args.work_ms}' back to back"
    )
    print(HEADER)
    for r in results:
        print(r.row() + (f"  ({r.lost} unanswered)" if r.lost else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`muxio serve --workers N`: a supervisor and worker processes, driven by real signals and load."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServeProcess, recv_exactly, round_trip

WORKER_READY = re.compile(r"muxio INFO worker (\d+) \(pid (\d+)\) ready")

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="reads connections and processes from Linux's /proc"
)


class Supervised(ServeProcess):
    """A supervisor with its workers; `workers` maps worker number to pid once ready."""

    def __init__(self, *args: str) -> None:
        super().__init__(*args)
        self.workers: dict[int, int] = {}

    def wait_started(self, count: int) -> Supervised:
        self.wait_listening()  # the supervisor's "on HOST:PORT" line comes before any worker's
        while len(self.workers) < count:
            self.wait_worker()
        return self

    def wait_worker(self, timeout: float = 15.0) -> tuple[int, int]:
        m = self.wait_line(WORKER_READY, timeout)  # the supervisor knows it serves
        index, pid = int(m.group(1)), int(m.group(2))
        self.workers[index] = pid
        return index, pid


@pytest.fixture
def supervised() -> Iterator[list[Supervised]]:
    started: list[Supervised] = []
    try:
        yield started
    finally:
        for sp in started:
            if sp.proc.poll() is None:
                sp.signal(signal.SIGQUIT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sp.wait(15)
            for pid in sp.workers.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            sp.kill()


def start(supervised: list[Supervised], *args: str, workers: int = 2) -> Supervised:
    sp = Supervised("--port", "0", "--workers", str(workers), *args)
    supervised.append(sp)
    return sp.wait_started(workers)


def bench(port: int, *args: str, duration: float = 2.0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "muxio", "bench", "--port", str(port), "--connections", "40",
         "--duration", str(duration), "--warmup", "0", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def bench_result(proc: subprocess.Popen[bytes]) -> dict[str, object]:
    out, _ = proc.communicate(timeout=60)
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_two_workers_serve_byte_exact_under_load_and_both_take_connections(
    supervised: list[Supervised], mode: str
) -> None:
    sp = start(supervised, "--worker-sockets", mode)
    result = bench_result(bench(sp.port))
    assert result["ok"], result
    assert result["errors"]["total"] == 0  # type: ignore[index]
    sp.signal(signal.SIGTERM)
    assert sp.wait() == 0
    summary = sp.summary()
    assert summary["drain"] == "complete"
    assert summary["workers"] == "2"
    per_worker = dict(item.split(":") for item in summary["per_worker"].split(","))
    counts = [int(n) for n in per_worker.values()]
    assert sum(counts) == int(summary["connections"]) >= 40
    if mode == "reuseport":
        # the kernel hashes 40 connections from different ports over both sockets
        assert all(n > 0 for n in counts), per_worker


def test_killed_worker_is_replaced_and_the_other_keeps_serving(
    supervised: list[Supervised],
) -> None:
    sp = start(supervised)
    clients = [sp.connect() for _ in range(20)]
    try:
        for c in clients:
            assert round_trip(c, b"before") == b"BEFORE"
        victim = sp.workers[1]
        os.kill(victim, signal.SIGKILL)
        sp.wait_line(rf"worker 1 \(pid {victim}\) died \(killed by SIGKILL\).*restarting it now")
        index, pid = sp.wait_worker(timeout=5)
        assert index == 3 and pid != victim
        survivors = 0
        for c in clients:
            try:
                c.sendall(b"after")
                reply = recv_exactly(c, 5, timeout=5)
            except (ConnectionResetError, BrokenPipeError):
                continue
            if reply:
                assert reply == b"AFTER"
                survivors += 1
        assert survivors > 0  # the other worker's clients did not notice
        with sp.connect() as fresh:
            assert round_trip(fresh, b"new") == b"NEW"
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("mode", ["shared", "reuseport"])
def test_sighup_replaces_every_worker_under_load_with_no_failed_request(
    supervised: list[Supervised], mode: str
) -> None:
    sp = start(supervised, "--worker-sockets", mode)
    load = bench(sp.port, "--reconnect", duration=8.0)
    try:
        deadline = time.monotonic() + 15
        while established(sp.port) < 40:  # every bench connection is up: the load runs
            assert time.monotonic() < deadline and load.poll() is None
            time.sleep(0.02)
        sp.signal(signal.SIGHUP)
        sp.wait_line(r"SIGHUP: replacing 2 workers")
        for old in (1, 2):
            sp.wait_line(rf"worker {old} \(pid \d+\) exited \(exit code 0\)")
            assert old + 2 in {int(m[1]) for m in map(WORKER_READY.search, sp.lines) if m}
        assert load.poll() is None, "the reload must happen while the load runs"
        result = bench_result(load)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert result["errors"]["total"] == 0, result  # type: ignore[index]
    assert result["ok"]
    # the old workers' connections were drained under the load: bench had to reconnect
    assert result["reconnects"] > 0  # type: ignore[operator]
    sp.signal(signal.SIGTERM)
    assert sp.wait() == 0


class ShortConnections:
    """Clients that open a connection per request, as fast as they can, counting outcomes.

    A new connection waits in a listening socket's accept queue first, so
    this is the load that finds a reload resetting queued connections.
    """

    def __init__(self, port: int, clients: int = 6) -> None:
        self.port = port
        self.answered = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> ShortConnections:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as c:
                    c.sendall(b"short")
                    reply = recv_exactly(c, 5, timeout=10)
            except OSError as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")
                continue
            if reply == b"SHORT":
                self.answered += 1
            else:
                self.failed.append(f"reply {reply!r}")


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_sighups_under_a_connection_per_request_lose_no_connection(
    supervised: list[Supervised], mode: str
) -> None:
    sp = start(supervised, "--worker-sockets", mode)
    with ShortConnections(sp.port) as load:
        for reload in range(3):
            before = load.answered
            sp.signal(signal.SIGHUP)
            for old in (2 * reload + 1, 2 * reload + 2):
                sp.wait_line(rf"worker {old} \(pid \d+\) exited \(exit code 0\)")
            deadline = time.monotonic() + 10
            while load.answered < before + 200:  # the new workers serve before the next reload
                assert time.monotonic() < deadline, (load.answered, load.failed[:3])
                time.sleep(0.01)
    print(f"{mode}: {load.answered} connections answered over 3 reloads, "
          f"{len(load.failed)} failed")  # fmt: skip
    assert load.failed == [], (len(load.failed), load.failed[:3], load.answered)
    assert load.answered > 600
    sp.signal(signal.SIGTERM)
    assert sp.wait() == 0


def established(port: int) -> int:
    """Established TCP connections to `port` on this machine (server side), from /proc."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def test_a_stopped_worker_is_killed_and_replaced_and_its_queued_connections_answered(
    supervised: list[Supervised],
) -> None:
    sp = start(supervised, "--worker-timeout", "2")
    victim = sp.workers[1]
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    # the kernel hashes some of these to the stopped worker's socket: they wait in its queue
    clients = [sp.connect(timeout=20) for _ in range(30)]
    try:
        for c in clients:
            c.sendall(b"queued")
        m = sp.wait_line(rf"worker 1 \(pid {victim}\) silent for ([\d.]+) s: killing it", 15)
        assert 2.0 <= float(m.group(1)) < 5.0
        assert time.monotonic() - stopped >= 2.0
        sp.wait_line(rf"worker 1 \(pid {victim}\) died \(killed by SIGKILL\).*restarting it now")
        index, pid = sp.wait_worker(timeout=15)
        assert index == 3 and pid != victim
        for c in clients:  # every one answered, by the live worker or by the replacement
            assert recv_exactly(c, 6, timeout=15) == b"QUEUED"
    finally:
        for c in clients:
            c.close()
    deadline = time.monotonic() + 10
    while _alive(victim):
        assert time.monotonic() < deadline, f"stopped worker {victim} still there"
        time.sleep(0.02)
    assert sum("silent for" in line for line in sp.lines) == 1
    sp.signal(signal.SIGTERM)
    assert sp.wait() == 0


def test_a_retiring_worker_that_is_stopped_is_killed_after_the_shutdown_timeout(
    supervised: list[Supervised],
) -> None:
    sp = start(supervised, "--shutdown-timeout", "1", "--worker-timeout", "0")
    victim = sp.workers[1]
    os.kill(victim, signal.SIGSTOP)
    clients = [sp.connect() for _ in range(20)]  # some wait in the stopped worker's queue
    try:
        for c in clients:
            c.sendall(b"queued")
        sp.signal(signal.SIGHUP)
        sp.wait_line(r"worker 3 \(pid \d+\) ready")
        retired = time.monotonic()
        # its replacement serves the same socket: the queue is answered long before the kill
        for c in clients:
            assert recv_exactly(c, 6, timeout=4) == b"QUEUED"
        assert time.monotonic() - retired < 5.0
    finally:
        for c in clients:
            c.close()
    sp.wait_line(r"worker 4 \(pid \d+\) ready")  # the reload goes on meanwhile
    sp.wait_line(r"worker 2 \(pid \d+\) exited \(exit code 0\)")
    sp.wait_line(rf"worker 1 \(pid {victim}\) still draining after 6 s: killing it", 20)
    assert time.monotonic() - retired >= 5.0
    sp.wait_line(rf"worker 1 \(pid {victim}\) exited \(killed by SIGKILL\)")
    for _ in range(10):
        with sp.connect() as c:
            assert round_trip(c, b"after") == b"AFTER"
    sp.signal(signal.SIGTERM)
    assert sp.wait() == 0


def test_sigttin_adds_and_sigttou_removes_a_worker(supervised: list[Supervised]) -> None:
    sp = start(supervised)
    sp.signal(signal.SIGTTIN)
    sp.wait_line("SIGTTIN: 3 workers")
    index, _ = sp.wait_worker()
    assert index == 3
    sp.signal(signal.SIGTTOU)
    sp.wait_line("SIGTTOU: 2 workers")
    sp.wait_line(r"worker 3 \(pid \d+\) exited \(exit code 0\)")
    with sp.connect() as c:
        assert round_trip(c, b"two") == b"TWO"
    sp.signal(signal.SIGTERM)
    assert sp.wait() == 0
    assert sp.summary()["workers"] == "3"


def test_workers_over_a_unix_socket_share_it_and_remove_it_at_exit(
    supervised: list[Supervised], tmp_path: Path
) -> None:
    path = str(tmp_path / "w.sock")
    sp = Supervised("--unix", path, "--workers", "2")
    supervised.append(sp)
    sp.wait_line(r"supervisor .* shared sockets")
    while len(sp.workers) < 2:
        sp.wait_worker()
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(10)
        c.connect(path)
        assert round_trip(c, b"unix") == b"UNIX"
    sp.signal(signal.SIGINT)
    assert sp.wait() == 0
    assert not os.path.exists(path)


def test_workers_option_errors_exit_2_with_one_line() -> None:
    for args, message in (
        (["--workers", "0"], "use auto or a whole number from 1 to 256"),
        (["--worker-sockets", "shared"], "--worker-sockets applies with --workers only"),
        (["--workers", "2", "--worker-sockets", "reuseport", "--unix", "x.sock"],
         "reuseport needs a TCP"),
        (["--workers", "2", "--worker-timeout", "1"],
         "--worker-timeout must be a number from 2 to"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "muxio", "serve", *args], capture_output=True, timeout=30
        )
        assert proc.returncode == 2, proc
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1 and message in lines[0], lines


def test_workers_dying_at_start_are_restarted_with_doubling_back_off(
    supervised: list[Supervised],
) -> None:
    sp = start(supervised)
    os.kill(sp.workers[1], signal.SIGKILL)  # it had served: replaced at once
    sp.wait_line(r"worker 1 \(pid \d+\) died .*restarting it now")
    delays = []
    for index in (3, 4, 5):
        # killed as soon as it is started, long before its interpreter is up and ready
        m = sp.wait_line(rf"worker {index} started \(pid (\d+)\)")
        os.kill(int(m.group(1)), signal.SIGKILL)
        died = sp.wait_line(rf"worker {index} \(pid \d+\) died .*restarting it in ([\d.]+) s")
        delays.append(float(died.group(1)))
    assert delays == [0.5, 1.0, 2.0]
    index, _ = sp.wait_worker()
    assert index == 6  # one start per death: no storm
    started = [line for line in sp.lines if re.search(r"worker \d+ started", line)]
    assert len(started) == 6
    with sp.connect() as c:
        assert round_trip(c, b"still here") == b"STILL HERE"


def test_workers_drain_and_exit_when_the_supervisor_is_killed(
    supervised: list[Supervised],
) -> None:
    sp = start(supervised)
    sp.proc.kill()
    sp.proc.wait(10)
    deadline = time.monotonic() + 15
    for pid in sp.workers.values():
        while _alive(pid):
            assert time.monotonic() < deadline, f"worker {pid} outlived its supervisor"
            time.sleep(0.02)
    assert sum("the supervisor is gone: shutting down" in line for line in sp.lines) == 2


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper that may never come in a container."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"

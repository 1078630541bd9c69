"""Issue 11: what a hostile client or a careless operator could do to a server.

Each test pins one edge: memory a client can grow, work for clients that
left, signals and shutdown, Unix sockets, user errors, log injection and
the watchdog.  Real sockets, real processes and real signals throughout.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import (
    ServeProcess,
    ServerThread,
    cpu_seconds,
    recv_exactly,
    recv_until_eof,
    round_trip,
    running_server,
    send_until_blocked,
    serve_process,
    terminate,
)

from muxio import EventLoop, Server, bind_unix
from muxio.offload import Mode, Offloader
from muxio.services.upper import UpperEcho
from muxio.services.work import MAX_LINE, WorkService, WorkServiceFactory, burn_cpu

pytestmark = pytest.mark.timeout(60)


def rst_close(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as an RST storm does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- 1. closed connections cost nothing, even with --idle-timeout -----------------


class TrackedEcho(UpperEcho):
    """UpperEcho that can be weakly referenced (its base has __slots__)."""


def test_closed_connections_are_freed_with_a_long_idle_timeout() -> None:
    alive: list[weakref.ref[TrackedEcho]] = []

    def factory() -> TrackedEcho:
        protocol = TrackedEcho()
        alive.append(weakref.ref(protocol))
        return protocol

    with running_server(factory, idle_timeout=3600) as srv:
        for _ in range(50):
            sock = srv.connect()
            sock.sendall(b"x")
            assert sock.recv(1) == b"X"
            rst_close(sock)
        assert srv.wait_for(lambda: not srv.server.connections)
        held = srv.call(lambda: (gc.collect(), sum(r() is not None for r in alive))[1])
        assert len(alive) == 50
        assert held == 0, f"{held} closed connections are still held in memory"


# -- 2. a work client that never reads cannot grow the server ---------------------


@contextlib.contextmanager
def work_server(
    mode: Mode = "threads",
    workers: int = 1,
    offloader: type[Offloader] = Offloader,
    **factory_kwargs: int,
) -> Iterator[tuple[ServerThread, Offloader]]:
    off = offloader(mode, max_workers=workers, preload=("muxio.services.work",))
    srv = ServerThread(WorkServiceFactory(off, **factory_kwargs))
    off.start(srv.loop)
    try:
        srv.start()
        yield srv, off
    finally:
        srv.stop()
        off.close(timeout=0)


def held_bytes(srv: ServerThread) -> int:
    """What the server holds for its connections: input, queued replies, write buffers."""
    total = 0
    for transport in srv.server.connections:
        protocol = transport.get_protocol()
        assert isinstance(protocol, WorkService)
        queued = sum(len(slot.data or b"") for slot in protocol.replies._queue)
        total += len(protocol._buffer) + queued + transport.get_write_buffer_size()
    return total


def stalled(srv: ServerThread) -> bool:
    return bool(srv.server.connections) and not any(t.is_reading() for t in srv.server.connections)


LONG_LINE = b"a" * (64 * 1024 - 1) + b"\n"


def test_replies_queued_behind_work_count_against_flow_control() -> None:
    with work_server() as (srv, _off), srv.connect() as sock:
        send_until_blocked(sock, b"work 1500\n" + LONG_LINE * 63, stall=0.5)
        assert srv.wait_for(lambda: stalled(srv))
        held = srv.call(held_bytes, srv)
        assert held < 256 * 1024, f"one non-reading client made the server hold {held} bytes"


def test_a_connection_not_being_read_notices_its_peer_reset() -> None:
    with work_server() as (srv, off):
        sock = srv.connect()
        send_until_blocked(sock, b"work 5000\n" + LONG_LINE * 63, stall=0.3)
        assert srv.wait_for(lambda: stalled(srv) and off.stats()["pending"] >= 1)
        rst_close(sock)
        # the job takes 5 s; the reset must be noticed long before it ends
        assert srv.wait_for(lambda: not srv.server.connections, timeout=3.0)


# -- 3. work for clients that left; fairness between clients ------------------------


def test_queued_work_of_a_client_that_closed_never_starts() -> None:
    with work_server() as (srv, off):
        with srv.connect() as gone:
            gone.sendall(b"work 200\n" * 20)
            assert srv.wait_for(lambda: off.stats()["pending"] >= 1)
        with srv.connect() as new:
            new.sendall(b"work 0\n")
            assert recv_exactly(new, 7, timeout=10) == b"WORK 0\n"
        # the first job ran; its reply met a reset, and the other 19 never started
        assert off.stats()["submitted"] <= 3, off.stats()


def test_one_client_cannot_hold_every_worker() -> None:
    with work_server(workers=2) as (srv, off), srv.connect() as greedy, srv.connect() as other:
        greedy.sendall(b"work 500\n" * 10)
        assert srv.wait_for(lambda: off.stats()["pending"] >= 1)
        other.sendall(b"work 0\n")
        assert recv_exactly(other, 7, timeout=10) == b"WORK 0\n"
        # answered without waiting behind the greedy client's queue
        assert srv.call(lambda: off.stats()["completed"]) <= 2


def test_max_jobs_per_connection_lets_one_client_use_more_workers() -> None:
    with work_server(workers=2, max_jobs=2) as (srv, off), srv.connect() as sock:
        sock.sendall(b"work 300\n" * 4)
        assert srv.wait_for(lambda: off.running == 2)
        assert recv_exactly(sock, 9 * 4, timeout=10) == b"WORK 300\n" * 4


@pytest.mark.timeout(90)
def test_a_running_process_job_of_a_client_that_left_is_abandoned() -> None:
    with work_server("processes") as (srv, off):
        gone = srv.connect()
        gone.sendall(b"work 10000\n")
        assert srv.wait_for(lambda: off.stats()["pending"] == 1)
        rst_close(gone)
        assert srv.wait_for(lambda: off.stats()["pools_replaced"] == 1, timeout=5)
        with srv.connect() as new:
            new.sendall(b"work 0\n")
            # the abandoned job had 10 s to go: the fresh pool answers long before
            assert recv_exactly(new, 7, timeout=8) == b"WORK 0\n"
        assert off.stats()["abandoned"] == 1


def run_until_released(gate: str, ms: int) -> int:
    """A `work <ms>` job that runs until the file `gate` exists (a minute at most).

    It says it has started by creating `gate + ".started"`.
    """
    Path(gate + ".started").touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate} never appeared")
        time.sleep(0.01)
    return ms


class GatedOffloader(Offloader):
    """Fault injection: a `work <ms>` job with a gate file ends when the test creates it.

    Whether a job is still running is then the test's to say, not a race
    between its duration and how busy this machine is.
    """

    gates: ClassVar[dict[int, str]] = {}

    def submit(self, fn: Callable[..., Any], *args: Any, callback: Any, key: Any = None) -> Any:
        if fn is burn_cpu and args[0] in self.gates:
            fn, args = run_until_released, (self.gates[args[0]], args[0])
        return super().submit(fn, *args, callback=callback, key=key)


@pytest.mark.timeout(90)
def test_an_abandoned_process_job_is_stopped_once_no_live_job_shares_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release_live = tmp_path / "live"
    gates = {1500: str(release_live), 10000: str(tmp_path / "never")}
    monkeypatch.setattr(GatedOffloader, "gates", gates)
    with (
        work_server("processes", workers=2, offloader=GatedOffloader) as (srv, off),
        srv.connect() as live,
    ):
        gone = srv.connect()
        live.sendall(b"work 1500\n")
        gone.sendall(b"work 10000\n")
        assert srv.wait_for(lambda: off.stats()["pending"] == 2)
        # both jobs running in the pool, not waiting for a worker: only a running job is
        # abandoned (one still queued is simply cancelled, and the pool has no reason to go)
        started = [Path(gate + ".started") for gate in gates.values()]
        assert srv.wait_for(lambda: all(p.exists() for p in started), timeout=30)
        rst_close(gone)
        assert srv.wait_for(lambda: off.stats()["cancelled"] == 1)
        # stopping the pool now would break the live client's job, still running, with it
        assert srv.call(lambda: off.stats()["pools_replaced"]) == 0
        release_live.touch()
        assert recv_exactly(live, 10, timeout=10) == b"WORK 1500\n"
        assert srv.wait_for(lambda: off.stats()["pools_replaced"] == 1, timeout=10)
        assert srv.call(lambda: off.stats()["abandoned"]) == 1


# -- 5. shutdown does not wait for a client that neither sends nor closes -----------


def test_shutdown_closes_an_idle_connection_at_once() -> None:
    with serve_process("--port", "0", "--shutdown-timeout", "10") as sp, sp.connect() as idle:
        assert round_trip(idle, b"hi") == b"HI"
        sp.signal(signal.SIGTERM)
        # a well-behaved client sees EOF, and the server does not wait 10 s for it
        assert recv_until_eof(idle, timeout=5) == b""
        assert sp.wait(timeout=5) == 0
        assert "aborting" not in "\n".join(sp.lines)


# -- 4. the shutdown timeout and the second signal hold with worker threads --------


def wait_cpu(pid: int, seconds: float, timeout: float = 10.0) -> None:
    """Wait until the process has burnt `seconds` more CPU: its work has started."""
    start = cpu_seconds(pid)
    deadline = time.monotonic() + timeout
    while cpu_seconds(pid) - start < seconds:
        assert time.monotonic() < deadline, "the work never started"
        time.sleep(0.05)


def busy_threads_server(*extra: str) -> contextlib.AbstractContextManager[ServeProcess]:
    return serve_process(
        "--port", "0", "--service", "work", "--offload", "threads", "--pool-size", "2", *extra
    )


def test_shutdown_timeout_holds_with_work_running_in_threads() -> None:
    with busy_threads_server("--shutdown-timeout", "1") as sp:
        clients = [sp.connect(), sp.connect()]
        try:
            for sock in clients:
                sock.sendall(b"work 10000\n")
            wait_cpu(sp.proc.pid, 0.3)
            sp.signal(signal.SIGTERM)
            # exit 1: the drain was cut short, with most of the 10 s of work still to go
            assert sp.wait(timeout=6) == 1
        finally:
            for sock in clients:
                sock.close()
        assert sp.summary()["drain"] == "timeout"
        assert not any("Traceback" in line for line in sp.lines)


def test_repeated_sigint_with_work_in_threads_stops_without_a_traceback() -> None:
    with busy_threads_server("--shutdown-timeout", "30") as sp, sp.connect() as sock:
        sock.sendall(b"work 10000\n")
        wait_cpu(sp.proc.pid, 0.3)
        sp.signal(signal.SIGINT)
        sp.wait_line("SIGINT: shutting down")
        sp.signal(signal.SIGINT)
        sp.wait_line("SIGINT again: stopping now")
        with contextlib.suppress(ProcessLookupError):
            sp.signal(signal.SIGINT)
        assert sp.wait(timeout=6) == 1
        assert not any("Traceback" in line for line in sp.lines), sp.lines


@contextlib.contextmanager
def unix_server(*args: str) -> Iterator[ServeProcess]:
    """`muxio serve --unix ...` (serve_process waits for a TCP address)."""
    sp = ServeProcess(*args)
    try:
        sp.wait_line("listening on /")
        yield sp
    finally:
        sp.kill()


# -- 6. every signal that would kill the server is handled ---------------------------


def test_sigusr1_logs_statistics_and_sigalrm_is_ignored() -> None:
    with serve_process("--port", "0") as sp, sp.connect() as sock:
        assert round_trip(sock, b"one") == b"ONE"
        sp.signal(signal.SIGUSR1)
        stats = sp.wait_line(r"SIGUSR1: statistics: connections=(\d+) .*bytes_in=(\d+)")
        assert stats.group(1) == "1" and stats.group(2) == "3"
        for signum in (signal.SIGALRM, signal.SIGUSR1):  # SIGUSR2: tests/test_profiler.py
            sp.signal(signum)
        sp.wait_line("SIGUSR1: statistics")
        assert round_trip(sock, b"still here") == b"STILL HERE"
        assert sp.proc.poll() is None
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


def test_sighup_drains_like_sigterm() -> None:
    with serve_process("--port", "0") as sp, sp.connect() as sock:
        assert round_trip(sock, b"hi") == b"HI"
        sp.signal(signal.SIGHUP)
        sp.wait_line("SIGHUP: shutting down, flushing 1 connection")
        assert recv_until_eof(sock) == b""
        assert sp.wait() == 0
        assert sp.summary()["drain"] == "complete"


@pytest.mark.timeout(90)
def test_sigquit_stops_at_once_and_still_cleans_up(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with unix_server(
        "--unix", path, "--service", "work", "--offload", "processes", "--pool-size", "1"
    ) as sp:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b"work 10000\n")
            sp.signal(signal.SIGUSR1)
            sp.wait_line("SIGUSR1: statistics: connections=1")
            sp.signal(signal.SIGQUIT)
            assert sp.wait(timeout=8) == 1
        assert sp.summary()["drain"] == "forced"
        assert not os.path.exists(path), "the socket file was left behind"
        text = "\n".join(sp.lines)
        assert "leaked semaphore" not in text and "Traceback" not in text, text


# -- 7 and 8. Unix sockets: no takeover of a live server, only our file removed, mode --


def muxio(*args: str, input: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "muxio", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode("utf-8", "replace")
    )


def unix_round_trip(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        return round_trip(sock, data)


def test_a_second_server_does_not_take_over_a_live_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with unix_server("--unix", path) as first:
        second = muxio("serve", "--unix", path)
        assert second.returncode == 1
        assert (
            second.stderr == f"muxio: another server is listening on {path} "
            "(stop it or choose another path)\n"
        )
        assert unix_round_trip(path, b"first") == b"FIRST"
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
    assert not os.path.exists(path)


def test_a_server_removes_its_socket_file_only_while_it_is_its_own(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with unix_server("--unix", path) as sp:
        os.unlink(path)
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(path)  # someone else's socket now lives at the path
            other.listen()
            inode = os.stat(path).st_ino
            sp.signal(signal.SIGTERM)
            assert sp.wait() == 0
            assert os.stat(path).st_ino == inode, "the server removed a file that was not its own"


def test_unix_mode_sets_the_socket_file_permissions(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with unix_server("--unix", path, "--unix-mode", "600") as sp:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert unix_round_trip(path, b"mine") == b"MINE"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


# -- 9 and 10. what a user can get wrong: one line, exit 2 (usage) or 1, no traceback --


def test_errors_a_user_can_cause_are_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    dangling = tmp_path / "dangling.sock"
    dangling.symlink_to(tmp_path / "nowhere")
    cases = [
        (["serve", "--unix", str(a_file / "x.sock")], 1, "is a file, not a directory"),
        (["serve", "--unix", "a" * 5000], 2, "at most 107"),
        (["serve", "--unix", str(dangling)], 1, "a symbolic link is there"),
        (["serve", "--unix", ""], 2, "--unix needs a path"),
        (["serve", "--unix", str(tmp_path / "u.sock"), "--port", "9"], 2, "--unix cannot be"),
        (["serve", "--port", "\u0663\u0663\u0663\u06632"], 2, "invalid port"),
        (["connect", "--port", "\u0663\u0663\u0663\u06632"], 2, "invalid port"),
        (["serve", "--backlog", "2147483648"], 2, "from 1 to 65535"),
        (["serve", "--host", "a" * 300], 2, "at most 253"),
        (["serve", "--host", "a" * 70 + ".example"], 2, "1 to 63 characters"),
        (["serve", "--slow-callback-ms", "inf"], 2, "invalid value 'inf'"),
        (["serve", "--slow-callback-ms", "1e300"], 2, "invalid value '1e300'"),
        (["serve", "--idle-timeout", "nan"], 2, "invalid value 'nan'"),
        (["serve", "--shutdown-timeout=-inf"], 2, "invalid value '-inf'"),
        (["serve", "--unix-mode", "600"], 2, "--unix-mode applies to --unix"),
        (["bench", "--warmup", "nan"], 2, "--warmup nan"),
        (["bench", "--stall-timeout", "inf"], 2, "--stall-timeout inf"),
        (["connect", "--unix", str(tmp_path / "missing")], 1, "no such socket file"),
        (["connect", "--timeout", "nan"], 2, "invalid value 'nan'"),
    ]
    for args, code, message in cases:
        result = muxio(*args, timeout=20)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        assert result.returncode == code, (args, result.stderr)


def test_listening_on_every_interface_is_announced() -> None:
    with serve_process("--host", "0.0.0.0", "--port", "0") as sp:
        assert any("every network interface" in line for line in sp.lines)
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


def test_connect_timeout_gives_up_on_a_silent_server() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = str(listener.getsockname()[1])
        result = muxio("connect", "--port", port, "--timeout", "0.5", input=b"hello\n")
    assert result.returncode == 1
    assert result.stderr == "muxio: no reply from the server for 0.5 s (--timeout)\n"


def test_connect_reports_a_server_that_closes_while_input_is_still_coming() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = str(listener.getsockname()[1])
        proc = subprocess.Popen(
            [sys.executable, "-m", "muxio", "connect", "--port", port],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            listener.settimeout(10)
            conn, _ = listener.accept()
            conn.close()  # at once; the client's stdin stays open
            assert proc.wait(timeout=10) == 1
            assert proc.stderr is not None
            assert b"closed the connection before all input was sent" in proc.stderr.read()
        finally:
            terminate(proc)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


# -- 11. a peer cannot forge log lines ----------------------------------------------


class SlowEcho(UpperEcho):
    """Holds the loop in data_received long enough for the watchdog to name it."""

    def data_received(self, data: bytes) -> None:
        time.sleep(0.3)
        super().data_received(data)


def test_a_peer_address_in_a_log_line_is_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server_path = str(tmp_path / "s.sock")
    evil = str(tmp_path / "x\n2026-01-01 muxio WARNING forged\x1b[2J")
    loop = EventLoop(slow_callback_ms=50)  # the loop starts its own watchdog
    server = Server(loop, SlowEcho, bind_unix(server_path))
    with socket.socket(socket.AF_UNIX) as client:
        client.bind(evil)
        client.settimeout(10)
        client.connect(server_path)
        client.sendall(b"hi")
        server.start()
        loop.call_later(0.05, lambda: loop.call_later(0.5, loop.stop))
        with caplog.at_level(logging.WARNING, logger="muxio"):
            loop.run_forever()
        assert client.recv(2) == b"HI"
    server.close()
    for transport in list(server.connections):
        transport.abort()
    loop.stop()
    loop.run_forever()
    loop.close()
    slow = [r.getMessage() for r in caplog.records if "slow callback" in r.getMessage()]
    assert slow and "SlowEcho.data_received" in slow[0], slow
    assert "\\n2026-01-01" in slow[0]  # shown, escaped
    for message in slow:
        assert "\n" not in message and "\x1b" not in message, message


# -- 12. the work service's line edges -----------------------------------------------


def test_a_last_line_without_a_newline_is_answered() -> None:
    with work_server() as (srv, _off):
        for request, reply in ((b"one\ntwo", b"ONE\nTWO\n"), (b"work 5", b"WORK 5\n")):
            with srv.connect() as sock:
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                assert recv_until_eof(sock) == reply


def test_the_line_limit_counts_content_not_the_terminator() -> None:
    content = b"a" * MAX_LINE
    with work_server() as (srv, _off):
        for end in (b"\n", b"\r\n"):
            with srv.connect() as sock:
                sock.sendall(content + end + b"next" + end)
                sock.shutdown(socket.SHUT_WR)
                assert recv_until_eof(sock) == content.upper() + b"\nNEXT\n", end
        with srv.connect() as sock:
            sock.sendall(content + b"a\r\n")
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_eof(sock) == f"ERROR line longer than {MAX_LINE} bytes\n".encode()


# -- 13. a stopped process is not blamed on a callback ---------------------------------


@pytest.mark.timeout(90)
def test_the_watchdog_says_when_the_process_was_not_running() -> None:
    with serve_process("--port", "0", "--slow-callback-ms", "100") as sp:
        stop = threading.Event()

        def flood() -> None:
            payload = b"x" * 65536
            with sp.connect() as sock:
                while not stop.is_set():
                    with contextlib.suppress(OSError):
                        round_trip(sock, payload, timeout=30)

        flooders = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
        for t in flooders:
            t.start()
        found: list[str] = []
        try:
            # a stop that lands while the loop waits in its poller is no stall at all, and
            # one the watchdog had no look at is reported "(not sampled)", blaming nobody:
            # repeat until one lands inside an iteration the watchdog saw
            for _ in range(8):
                sp.signal(signal.SIGSTOP)
                time.sleep(1.2)  # the stall being simulated
                sp.signal(signal.SIGCONT)
                with contextlib.suppress(TimeoutError):
                    m = sp.wait_line(r"slow callback: the loop was blocked for (\d+) ms by (.*)", 3)
                    if int(m.group(1)) >= 1000 and "(not sampled)" not in m.group(2):
                        found.append(m.group(2))
                        break
        finally:
            stop.set()
            for t in flooders:
                t.join(35)
        assert found, "no stop landed inside a loop iteration"
        assert "was not running" in found[0] and "data_received" not in found[0], found


# -- 9. a bench worker does not outlive its killed parent -----------------------------


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(60)
def test_bench_workers_end_when_the_bench_is_killed() -> None:
    with running_server() as srv:
        bench = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "muxio",
                "bench",
                "--port",
                str(srv.port),
                "--processes",
                "2",
                "--connections",
                "4",
                "--duration",
                "60",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            workers: list[int] = []
            while len(workers) < 2:
                assert time.monotonic() < deadline, "the bench workers never started"
                time.sleep(0.05)
                workers = children(bench.pid)
            assert srv.wait_for(lambda: len(srv.server.connections) >= 4)
            bench.kill()
            bench.wait(10)
            deadline = time.monotonic() + 10
            while any(alive(w) for w in workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(alive(w) for w in workers), "a bench worker outlived its parent"
        finally:
            terminate(bench)

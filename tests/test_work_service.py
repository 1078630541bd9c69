"""The `work` service: line protocol, limits, ordering, shutdown, and the demo.

Protocol tests talk to a real `python -m muxio serve --service work`
subprocess; flow-control and shutdown tests run the service in-process
(helpers.ServerThread) to see its state.  The demo runs the scenario from
benchmarks/offload_demo.py against both `--offload processes` and `none`
and checks what it shows structurally (the loop blocked or not, the
watchdog's warning), not how fast this machine happens to be.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import (
    ServeProcess,
    ServerThread,
    exchange,
    recv_exactly,
    recv_until_eof,
    serve_process,
)

from muxio.offload import Offloader
from muxio.services.work import MAX_LINE, WorkServiceFactory, burn_cpu

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "offload_demo", ROOT / "benchmarks" / "offload_demo.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work_server() -> Iterator[ServeProcess]:
    with serve_process(
        "--service", "work", "--offload", "processes", "--pool-size", "2", "--port", "0"
    ) as sp:
        yield sp


def ask(sp: ServeProcess, data: bytes, replies: int, timeout: float = 15.0) -> list[bytes]:
    """Send `data` on a fresh connection, half-close, and return the reply lines."""
    with sp.connect(timeout) as sock:
        out = exchange(sock, data, shut_wr=True, timeout=timeout)
    lines = out.split(b"\n")
    assert len(lines) == replies + 1 and lines[-1] == b"", out
    return lines[:replies]


# -- the line protocol ------------------------------------------------------------


def test_plain_lines_are_uppercased(work_server: ServeProcess) -> None:
    expected = b"HELLO\n\nMIXED CASE 1\nWORKSHOP\n"
    with work_server.connect() as sock:
        got = exchange(
            sock, b"hello\n\nMiXed Case 1\r\nworkshop\n", expect=len(expected), shut_wr=False
        )
    assert got == expected


def test_work_lines_are_answered_after_the_work(work_server: ServeProcess) -> None:
    expected = b"WORK 0\nWORK 50\nWORK 7\n"
    with work_server.connect() as sock:
        got = exchange(sock, b"work 0\nwork 50\nwork   7\n", expect=len(expected), shut_wr=False)
    assert got == expected


@pytest.mark.parametrize(
    "bad", [b"work abc", b"work -1", b"work 10001", b"work", b"work 1.5", b"work 9" * 30]
)
def test_bad_work_values_get_an_error_line_and_the_connection_lives(
    work_server: ServeProcess, bad: bytes
) -> None:
    with work_server.connect() as sock:
        sock.sendall(bad + b"\nstill here\n")
        buf = b""
        while buf.count(b"\n") < 2:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed after {buf!r}"
            buf += chunk
    error, after = buf.split(b"\n")[:2]
    assert error.startswith(b"ERROR work takes a whole number of milliseconds from 0 to 10000")
    assert after == b"STILL HERE"


def test_replies_keep_request_order(work_server: ServeProcess) -> None:
    request = b"work 300\nfirst\nwork 0\nwork 100\nlast\n"
    expected = b"WORK 300\nFIRST\nWORK 0\nWORK 100\nLAST\n"
    with work_server.connect() as sock:
        got = exchange(sock, request, expect=len(expected), shut_wr=False)
    assert got == expected


def test_many_pipelined_requests_are_answered_in_order(work_server: ServeProcess) -> None:
    """More requests than a connection may have pending: reading pauses, nothing is lost."""
    request = b"".join(b"work 1\nn %d\n" % i for i in range(300))
    expected = b"".join(b"WORK 1\nN %d\n" % i for i in range(300))
    with work_server.connect() as sock:
        got = exchange(sock, request, shut_wr=True, timeout=30)
    assert got == expected


def test_a_line_of_exactly_the_limit_is_fine(work_server: ServeProcess) -> None:
    line = b"a" * MAX_LINE + b"\n"
    with work_server.connect() as sock:
        got = exchange(sock, line + b"ok\n", expect=len(line) + 3, shut_wr=False)
    assert got == line.upper() + b"OK\n"


@pytest.mark.parametrize("size", [MAX_LINE + 1, 4 * 1024 * 1024])
def test_an_overlong_line_gets_an_error_and_the_connection_closes(
    work_server: ServeProcess, size: int
) -> None:
    """Even while the client is still sending: the error arrives, then EOF (no reset).

    The server half-closes as soon as the error is written and discards the
    rest of the input, so the client may see EOF before it has sent it all.
    """
    with work_server.connect(20) as sock:
        send_errors: list[OSError] = []

        def send_all() -> None:
            try:
                sock.sendall(b"work 200\n" + b"x" * size)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                send_errors.append(exc)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        try:
            got = recv_until_eof(sock, 20)
        finally:
            sender.join(20)
    assert got == b"WORK 200\nERROR line longer than 65536 bytes\n"
    assert not sender.is_alive() and not send_errors
    # the server is fine
    assert ask(work_server, b"next\n", 1) == [b"NEXT"]


def test_workers_end_with_the_server_even_when_it_is_killed() -> None:
    """SIGKILL leaves no chance to shut the pool down: the workers notice on their own."""
    with serve_process(
        "--service", "work", "--offload", "processes", "--pool-size", "2", "--port", "0"
    ) as sp:
        line = next(line for line in sp.lines if "worker processes ready" in line)
        pids = [int(pid) for pid in line.rsplit("pids ", 1)[1].split()]
        assert len(pids) == 2
        pidfds = [os.pidfd_open(pid) for pid in pids]
        try:
            assert ask(sp, b"work 10\n", 1) == [b"WORK 10"]
            sp.proc.kill()
            sp.proc.wait(10)
            deadline = time.monotonic() + 10
            alive = set(pidfds)
            while alive and time.monotonic() < deadline:
                ready, _, _ = select.select(list(alive), [], [], deadline - time.monotonic())
                alive -= set(ready)
            assert not alive, "worker processes outlived the server"
        finally:
            for fd in pidfds:
                os.close(fd)


def test_bad_offload_options_are_usage_errors() -> None:
    for args in (["--offload", "gpu"], ["--pool-size", "0"]):
        proc = subprocess.run(
            [sys.executable, "-m", "muxio", "serve", "--service", "work", *args],
            capture_output=True,
            timeout=30,
        )
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.decode().strip().splitlines()) == 1


# -- in-process: flow control and graceful shutdown ---------------------------------


class CountingOffloader(Offloader):
    """Remembers the most jobs it ever had pending at once."""

    max_seen = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        job = super().submit(*args, **kwargs)
        self.max_seen = max(self.max_seen, self.stats()["pending"])
        return job


def test_pending_work_per_connection_is_capped() -> None:
    off = CountingOffloader("threads", max_workers=4)
    srv = ServerThread(WorkServiceFactory(off, max_pending=4, max_jobs=8))
    off.start(srv.loop)
    try:
        srv.start()
        with srv.connect() as sock:
            got = exchange(sock, b"work 5\n" * 40, shut_wr=True, timeout=30)
        assert got == b"WORK 5\n" * 40
        assert off.max_seen == 4
    finally:
        srv.stop()
        off.close()


def test_graceful_shutdown_waits_for_offloaded_work() -> None:
    off = Offloader("threads", max_workers=2)
    srv = ServerThread(WorkServiceFactory(off))
    off.start(srv.loop)
    closed = threading.Event()
    try:
        srv.start()
        with srv.connect() as sock:
            sock.sendall(b"hi\nwork 300\nbye\n")
            assert recv_exactly(sock, 3) == b"HI\n"
            busy = srv.wait_for(
                lambda: any(t.get_protocol().is_busy() for t in srv.server.connections)
            )
            assert busy, "the work never started"
            srv.call(srv.server.shutdown, 10.0, closed.set)
            got = recv_until_eof(sock, 10)
        # the pending work was finished and flushed before the half-close
        assert got == b"WORK 300\nBYE\n"
        assert closed.wait(10)
    finally:
        srv.stop()
        off.close()


# -- the demo ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    return load_demo()


def caught_in_the_work(warning: str) -> bool:
    """Whether a slow-callback warning found the loop thread inside `burn_cpu` itself.

    The watchdog samples the loop thread's stack during a stall: a stall of
    this machine's making can land anywhere, but only work run on the loop
    lands in `burn_cpu`.
    """
    m = re.search(r"work\.py:(\d+)", warning)
    lines, first = inspect.getsourcelines(burn_cpu)
    return m is not None and first <= int(m.group(1)) < first + len(lines)


def test_demo_processes_keep_the_work_off_the_loop(demo: ModuleType) -> None:
    result = demo.run_scenario("processes", duration=2.0, pool_size=2)
    print(f"\n{demo.HEADER}\n{result.row()}")
    assert result.lost == 0 and len(result.rtts) >= 50
    assert result.work_done >= 2, "the work clients were not both served"
    # however slow this machine, the watchdog never caught the loop doing the work
    slow = [line for line in result.log if "slow callback" in line]
    assert not any(caught_in_the_work(line) for line in slow), slow


def test_demo_without_offload_blocks_the_loop(demo: ModuleType) -> None:
    result = demo.run_scenario("none", duration=2.0)
    print(f"\n{demo.HEADER}\n{result.row()}")
    assert result.lost == 0 and result.rtts
    assert result.work_done >= 2, "the work clients were not both served"
    # the loop was blocked by the work itself, and the watchdog named the culprit
    slow = [line for line in result.log if "slow callback" in line]
    assert any(caught_in_the_work(line) for line in slow), result.log
    assert all("WorkService" in line for line in slow if caught_in_the_work(line))

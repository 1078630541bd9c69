"""A drain waits for the work in progress of every connection, and answers what it found.

Two ways a graceful drain used to lose requests: a coroutine handler
(`--service mod:handler`, `upper-streams`) never counted as busy, so its
connection was closed under it and the task destroyed pending; and a request
already in the socket when the drain began was never read (the reader was
removed before the loop got to it) and then thrown away with the close.
Each test drives a real `muxio serve` process with real signals.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServeProcess, recv_exactly, recv_until_eof, round_trip, serve_process

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="waits for a stopped process in Linux's /proc"
)

HANDLERS = textwrap.dedent(
    """
    import asyncio
    import sys

    async def drain_reached(writer):
        # a draining server stops reading a connection once it reaches it
        for _ in range(4000):
            if not writer.transport.is_reading():
                return
            await asyncio.sleep(0.005)
        raise RuntimeError("the drain never came")

    async def answer_after_drain(reader, writer):
        line = await reader.readline()
        print("handling", line.decode().strip(), file=sys.stderr, flush=True)
        await drain_reached(writer)
        writer.write(b"done " + line)
        await writer.drain()
        writer.close()

    async def never_answers(reader, writer):
        await reader.readline()
        print("handling forever", file=sys.stderr, flush=True)
        await asyncio.Event().wait()
    """
)


@pytest.fixture
def handlers_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "drainmod.py").write_text(HANDLERS)
    existing = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{existing}")
    return tmp_path


def no_destroyed_task(lines: list[str]) -> None:
    assert not [ln for ln in lines if "Task was destroyed" in ln], lines


def test_sigterm_mid_request_waits_for_the_coroutine_handler_reply(
    handlers_on_path: Path,
) -> None:
    with serve_process("--port", "0", "--service", "drainmod:answer_after_drain") as srv:
        with srv.connect() as conn:
            conn.sendall(b"one\n")
            srv.wait_line(r"handling one")
            srv.signal(signal.SIGTERM)
            assert recv_exactly(conn, 9) == b"done one\n"
            assert recv_until_eof(conn) == b""
        assert srv.wait() == 0
        assert srv.summary()["drain"] == "complete"
        no_destroyed_task(srv.lines)


def test_a_handler_that_never_finishes_makes_the_drain_time_out_and_exit_1(
    handlers_on_path: Path,
) -> None:
    with serve_process(
        "--port", "0", "--service", "drainmod:never_answers", "--shutdown-timeout", "1"
    ) as srv:
        with srv.connect() as conn:
            conn.sendall(b"one\n")
            srv.wait_line(r"handling forever")
            began = time.monotonic()
            srv.signal(signal.SIGTERM)
            srv.wait_line(r"shutting down")
            with contextlib.suppress(ConnectionResetError):
                assert recv_until_eof(conn) == b""
        assert srv.wait() == 1
        assert time.monotonic() - began >= 1.0  # held until --shutdown-timeout, not cut short
        assert srv.summary()["drain"] == "timeout"
        no_destroyed_task(srv.lines)


# -- a request in the socket when the drain begins ------------------------------


def wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Until the kernel has stopped `pid` (state T), so what we send next waits unread."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        assert time.monotonic() < deadline, f"pid {pid} is in state {state}"
        time.sleep(0.005)


SERVICES = [
    ("upper", (), b"ping\n", b"PING\n"),
    ("upper-streams", (), b"ping\n", b"PING\n"),
    ("work", ("--offload", "threads", "--pool-size", "1"), b"work 20\n", b"WORK 20\n"),
]


@pytest.mark.parametrize(
    ("service", "options", "request_", "reply"), SERVICES, ids=[s[0] for s in SERVICES]
)
def test_a_request_sent_while_the_server_was_stopped_is_answered_by_the_drain(
    service: str, options: tuple[str, ...], request_: bytes, reply: bytes
) -> None:
    for _ in range(3):  # the loop used to see the signal first in most rounds, not all
        with serve_process("--port", "0", "--service", service, *options) as srv:
            with srv.connect() as conn:
                assert round_trip(conn, request_) == reply  # accepted and served once
                os.kill(srv.pid, signal.SIGSTOP)
                try:
                    wait_stopped(srv.pid)
                    conn.sendall(request_)
                    srv.signal(signal.SIGTERM)
                finally:
                    os.kill(srv.pid, signal.SIGCONT)
                assert recv_exactly(conn, len(reply)) == reply
                assert recv_until_eof(conn) == b""
            assert srv.wait() == 0
            assert srv.summary()["drain"] == "complete"


def test_a_connection_queued_while_the_server_was_stopped_is_accepted_and_answered() -> None:
    with serve_process("--port", "0") as srv:
        os.kill(srv.pid, signal.SIGSTOP)
        try:
            wait_stopped(srv.pid)
            conn = srv.connect()  # the kernel completes it into the listen backlog
            conn.sendall(b"queued")
            srv.signal(signal.SIGTERM)
        finally:
            os.kill(srv.pid, signal.SIGCONT)
        with conn:
            assert recv_exactly(conn, 6) == b"QUEUED"
            assert recv_until_eof(conn) == b""
        assert srv.wait() == 0
        assert srv.summary()["connections"] == "1"


# -- a reload with coroutine requests in flight ---------------------------------

WORKER_READY = re.compile(r"muxio INFO worker (\d+) \(pid (\d+)\) ready")


@contextlib.contextmanager
def supervisor(*args: str) -> Iterator[ServeProcess]:
    sp = ServeProcess("--port", "0", "--workers", "2", *args)
    try:
        sp.wait_listening()
        for _ in range(2):
            sp.wait_line(WORKER_READY)
        yield sp
    finally:
        if sp.proc.poll() is None:
            sp.signal(signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                sp.wait(15)
        sp.kill()


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_sighup_answers_every_coroutine_request_in_flight(
    handlers_on_path: Path, mode: str
) -> None:
    with supervisor(
        "--worker-sockets", mode, "--service", "drainmod:answer_after_drain"
    ) as sp:
        conns: list[socket.socket] = []
        try:
            for i in range(10):
                conn = sp.connect()
                conns.append(conn)
                conn.sendall(b"r%d\n" % i)
            for _ in range(10):
                sp.wait_line(r"handling r\d")
            sp.signal(signal.SIGHUP)
            for i, conn in enumerate(conns):
                expected = b"done r%d\n" % i
                assert recv_exactly(conn, len(expected)) == expected
                assert recv_until_eof(conn) == b""
        finally:
            for conn in conns:
                conn.close()
        for old in (1, 2):
            sp.wait_line(rf"worker {old} \(pid \d+\) exited \(exit code 0\)")
        no_destroyed_task(sp.lines)
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0

"""A drain waits for the work in progress of every connection, and answers what it found.

Ways a graceful drain used to lose requests: a coroutine handler
(`--service mod:handler`, `upper-streams`, `muxio.serve(handler)`) or a plain
`asyncio.Protocol` answering later never counted as busy, so the connection
was closed under it (and the task destroyed pending); a request already in
the socket when the drain began was never read (the loop ran the signal's
callback before that iteration's reads) and was thrown away with the close;
a connection still in the listen queue was reset with the listener.  Each
test drives a real server process with real signals.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    ServeProcess,
    cpu_seconds,
    recv_exactly,
    recv_until_eof,
    round_trip,
    serve_process,
)

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="waits for a stopped process in Linux's /proc"
)

HANDLERS = textwrap.dedent(
    """
    import asyncio
    import os

    async def drain_reached(writer):
        # a draining server stops reading a connection once it reaches it
        for _ in range(4000):
            if not writer.transport.is_reading():
                return
            await asyncio.sleep(0.005)
        raise RuntimeError("the drain never came")

    async def answer_after_drain(reader, writer):
        line = await reader.readline()
        os.write(2, b"handling " + line)  # one write: workers share the pipe
        await drain_reached(writer)
        writer.write(b"done " + line)
        await writer.drain()
        writer.close()

    class BigReply(asyncio.Protocol):
        # a plain asyncio protocol: no is_busy(), its reply waits in the transport
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(b"x" * (32 << 20))
            os.write(2, b"replying\\n")

    class LateReply(asyncio.Protocol):
        # a plain asyncio protocol answering from a timer, once the drain reached it
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            os.write(2, b"late " + data)
            self.poll(data, 4000)
        def poll(self, data, left):
            if not self.transport.is_reading() or not left:
                self.transport.write(b"late " + data)
                return
            asyncio.get_running_loop().call_later(0.005, self.poll, data, left - 1)

    class Sink(asyncio.Protocol):
        def data_received(self, data):
            os.write(2, b"swallowed\\n")

    async def never_answers(reader, writer):
        await reader.readline()
        os.write(2, b"handling forever\\n")
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


SERVE_API = textwrap.dedent(
    """
    import logging, sys
    import muxio
    from drainmod import answer_after_drain
    logging.basicConfig(level=logging.INFO)
    totals = muxio.serve(answer_after_drain, port=0, shutdown_timeout=10)
    print("drain", totals["drain"], file=sys.stderr, flush=True)
    """
)


def test_muxio_serve_waits_for_the_coroutine_handler_reply(handlers_on_path: Path) -> None:
    srv = ServeProcess(argv=[sys.executable, "-c", SERVE_API])
    try:
        srv.wait_listening()
        with srv.connect() as conn:
            conn.sendall(b"api\n")
            srv.wait_line(r"handling api")
            srv.signal(signal.SIGTERM)
            assert recv_exactly(conn, 9) == b"done api\n"
            assert recv_until_eof(conn) == b""
        assert srv.wait() == 0
        srv.wait_line(r"^drain complete$")
        no_destroyed_task(srv.lines)
    finally:
        srv.kill()


def test_a_plain_asyncio_protocol_has_its_unsent_reply_flushed_by_the_drain(
    handlers_on_path: Path,
) -> None:
    with serve_process("--port", "0", "--service", "drainmod:BigReply") as srv:
        with srv.connect() as conn:
            conn.sendall(b"big\n")
            srv.wait_line(r"replying")
            srv.signal(signal.SIGTERM)
            srv.wait_line(r"shutting down")  # the reply is still in the server's buffers
            assert len(recv_until_eof(conn, timeout=30)) == 32 << 20
        assert srv.wait() == 0
        assert srv.summary()["drain"] == "complete"


def test_a_plain_asyncio_protocol_answering_later_is_waited_for(handlers_on_path: Path) -> None:
    with serve_process("--port", "0", "--service", "drainmod:LateReply") as srv:
        with srv.connect() as conn:
            conn.sendall(b"x\n")
            srv.wait_line(r"late x")
            srv.signal(signal.SIGTERM)
            assert recv_exactly(conn, 7) == b"late x\n"
            assert recv_until_eof(conn) == b""
        assert srv.wait() == 0
        assert srv.summary()["drain"] == "complete"


def test_a_plain_asyncio_protocol_that_read_and_never_answers_holds_the_drain_to_its_timeout(
    handlers_on_path: Path,
) -> None:
    with serve_process(
        "--port", "0", "--service", "drainmod:Sink", "--shutdown-timeout", "1"
    ) as srv:
        with srv.connect() as conn:
            conn.sendall(b"x\n")
            srv.wait_line(r"swallowed")
            srv.signal(signal.SIGTERM)
            with contextlib.suppress(ConnectionResetError):
                assert recv_until_eof(conn) == b""
        assert srv.wait() == 1
        assert srv.summary()["drain"] == "timeout"


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


def signal_then_work(srv: ServeProcess, conn: socket.socket) -> None:
    """SIGTERM and a `work 500` on `conn` seen in one poll; return once the loop is in the work.

    The server is stopped while both are sent, so on SIGCONT its loop reads
    them in one iteration: the signal's callback is queued for the next one,
    and the work holds the loop (`--offload none`) for 500 ms meanwhile.
    """
    os.kill(srv.pid, signal.SIGSTOP)
    try:
        wait_stopped(srv.pid)
        conn.sendall(b"work 500\n")
        srv.signal(signal.SIGTERM)
        spent = cpu_seconds(srv.pid)
    finally:
        os.kill(srv.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while cpu_seconds(srv.pid) < spent + 0.1:
        assert time.monotonic() < deadline, "the server never started the work"
        time.sleep(0.005)


@pytest.fixture
def tls_args(ca: Any, tmp_path: Path) -> tuple[str, ...]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return ("--tls-cert", str(cert), "--tls-key", str(key))


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_request_arriving_while_the_loop_works_after_reading_the_signal_is_answered(
    tls: bool, tls_args: tuple[str, ...], client_ctx: ssl.SSLContext
) -> None:
    """The loss in its plainest form: the signal is read, then a request comes, then the drain.

    On SIGCONT the loop finds A's request and the signal in one poll; A's
    `work 500` holds the loop for 500 ms (`--offload none`), during which
    B's request arrives.  The next iteration runs the drain before its
    readiness events, so B's request used to be read and dropped by the close.
    """
    extra = tls_args if tls else ()
    with serve_process("--port", "0", "--service", "work", "--offload", "none", *extra) as srv:

        def connect() -> socket.socket:
            conn = srv.connect()
            return client_ctx.wrap_socket(conn, server_hostname="127.0.0.1") if tls else conn

        with connect() as a, connect() as b:
            assert round_trip(a, b"a\n") == b"A\n"
            assert round_trip(b, b"b\n") == b"B\n"
            signal_then_work(srv, a)
            b.sendall(b"ping\n")
            assert recv_exactly(a, 9) == b"WORK 500\n"
            assert recv_exactly(b, 5) == b"PING\n"
            for conn in (a, b):
                with contextlib.suppress(ssl.SSLError):
                    assert recv_until_eof(conn) == b""  # TLS: close_notify, or a bare FIN
        assert srv.wait() == 0
        assert srv.summary()["drain"] == "complete"


@pytest.mark.parametrize("service", ["upper", "upper-streams"])
def test_a_tls_request_sent_while_the_server_was_stopped_is_answered_by_the_drain(
    service: str, tls_args: tuple[str, ...], client_ctx: ssl.SSLContext
) -> None:
    for _ in range(2):
        with serve_process("--port", "0", "--service", service, *tls_args) as srv:
            with client_ctx.wrap_socket(srv.connect(), server_hostname="127.0.0.1") as conn:
                conn.sendall(b"ping\n")
                assert recv_exactly(conn, 5) == b"PING\n"
                os.kill(srv.pid, signal.SIGSTOP)
                try:
                    wait_stopped(srv.pid)
                    conn.sendall(b"ping\n")
                    srv.signal(signal.SIGTERM)
                finally:
                    os.kill(srv.pid, signal.SIGCONT)
                assert recv_exactly(conn, 5) == b"PING\n"
                with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                    assert recv_until_eof(conn) == b""  # close_notify, or a bare FIN
            assert srv.wait() == 0
            assert srv.summary()["drain"] == "complete"


def test_a_connection_still_in_the_listen_queue_when_the_drain_begins_is_answered() -> None:
    """As above, but C connects during A's work: it waits in the kernel's accept queue.

    The drain closes the listening socket, which used to reset C; what the
    queue holds is accepted first and served with the first-request grace.
    """
    with serve_process("--port", "0", "--service", "work", "--offload", "none") as srv:
        with srv.connect() as a:
            assert round_trip(a, b"a\n") == b"A\n"
            signal_then_work(srv, a)
            with srv.connect() as c:  # the kernel completes it; muxio is busy
                c.sendall(b"queued\n")
                assert recv_exactly(a, 9) == b"WORK 500\n"
                assert recv_exactly(c, 7) == b"QUEUED\n"
                assert recv_until_eof(c) == b""
            assert recv_until_eof(a) == b""
        assert srv.wait() == 0
        assert srv.summary()["connections"] == "2"
        assert srv.summary()["drain"] == "complete"


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

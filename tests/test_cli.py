"""The `muxio` command, run as a real process and stopped with real signals."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from helpers import (
    ServeProcess,
    ServerThread,
    has_ipv6_loopback,
    one_line,
    recv_until_eof,
    round_trip,
    running_server,
    send_until_blocked,
    serve_process,
)

from muxio import Protocol, Transport
from muxio.pollers import BACKENDS, available

MISSING_POLLER = next((name for name in BACKENDS if name not in available()), "")
"""A poller this OS lacks (kqueue on Linux, epoll on macOS), or "" if it has them all."""

pytestmark = pytest.mark.timeout(60)

MUXIO = [sys.executable, "-m", "muxio"]


def run_muxio(
    *args: str, timeout: float = 30, **kwargs: object
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*MUXIO, *args],
        capture_output="stdout" not in kwargs,
        timeout=timeout,
        **kwargs,  # type: ignore[call-overload]
    )


# -- serve: load, then a graceful stop ---------------------------------------------


async def load(sp: ServeProcess, clients: int, size: int) -> int:
    async def client(i: int) -> int:
        reader, writer = await asyncio.open_connection(sp.host, sp.port)
        try:
            payload = os.urandom(size)
            writer.write(payload)
            await writer.drain()
            assert await reader.readexactly(size) == payload.upper()
            writer.write_eof()
            assert await reader.read() == b""
        finally:
            writer.close()
            await writer.wait_closed()
        return size

    sizes = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), 40)
    return sum(sizes)


def test_serve_each_poller_then_sigterm(poller: str) -> None:
    with serve_process("--port", "0", "--poller", poller) as sp:
        assert any(f"(poller {poller}," in line for line in sp.lines if "listening on" in line)
        sent = asyncio.run(load(sp, 100, 1024))
        sent += asyncio.run(load(sp, 10, 64 * 1024))
        sp.signal(signal.SIGTERM)
        assert sp.wait(20) == 0
        totals = sp.summary()
    assert sent == 100 * 1024 + 10 * 64 * 1024
    assert int(totals["bytes_in"]) == int(totals["bytes_out"]) == sent
    assert int(totals["connections"]) == 110
    assert not any("Traceback" in line for line in sp.lines)


def test_serve_coroutine_service_upper_streams_then_sigterm(poller: str) -> None:
    """The echo as `async def handle(reader, writer)` on muxio's loop, same lifecycle."""
    with serve_process("--port", "0", "--poller", poller, "--service", "upper-streams") as sp:
        assert any("service upper-streams" in line for line in sp.lines if "listening on" in line)
        sent = asyncio.run(load(sp, 50, 1024))
        sent += asyncio.run(load(sp, 5, 64 * 1024))
        sp.signal(signal.SIGTERM)
        assert sp.wait(20) == 0
        totals = sp.summary()
    assert int(totals["bytes_in"]) == int(totals["bytes_out"]) == sent
    assert not any("Traceback" in line for line in sp.lines)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_flushes_pending_replies(signum: int) -> None:
    data = os.urandom(4 * 1024 * 1024)
    with serve_process("--port", "0") as sp:
        sock = sp.connect(SO_RCVBUF=4096)
        try:
            sent = send_until_blocked(sock, data, stall=0.3, timeout=10)
            assert sent > 0
            sp.signal(signum)
            sp.wait_line(r"shutting down, flushing 1 connection", timeout=10)
            received = recv_until_eof(sock, timeout=30)
        finally:
            sock.close()
        assert sp.wait(20) == 0
        totals = sp.summary()
    assert 0 < len(received) <= sent
    assert received == data[: len(received)].upper()
    assert int(totals["bytes_out"]) == len(received)
    assert int(totals["bytes_in"]) == len(received)


def test_second_signal_stops_at_once() -> None:
    with serve_process("--port", "0", "--shutdown-timeout", "30") as sp:
        sock = sp.connect(SO_RCVBUF=4096)
        try:
            assert send_until_blocked(sock, os.urandom(8 * 1024 * 1024), stall=0.3) > 0
            sp.signal(signal.SIGTERM)
            sp.wait_line(r"SIGTERM: shutting down, flushing 1 connection")
            sp.signal(signal.SIGINT)
            sp.wait_line(r"WARNING SIGINT again: stopping now")
            # far sooner than the 30 s shutdown timeout; exit 1: the drain was cut short
            assert sp.wait(10) == 1
        finally:
            sock.close()
    assert int(sp.summary()["open"]) == 0
    assert sp.summary()["drain"] == "forced"


def test_shutdown_timeout_aborts_a_peer_that_never_reads() -> None:
    with serve_process("--port", "0", "--shutdown-timeout", "0.5") as sp:
        sock = sp.connect(SO_RCVBUF=4096)
        try:
            assert send_until_blocked(sock, os.urandom(8 * 1024 * 1024), stall=0.3) > 0
            sp.signal(signal.SIGTERM)
            sp.wait_line(r"WARNING shutdown timeout: aborting 1 connection", timeout=10)
            assert sp.wait(10) == 1
        finally:
            sock.close()
    totals = sp.summary()
    assert int(totals["bytes_out"]) < int(totals["bytes_in"])
    assert totals["drain"] == "timeout"


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this host has no IPv6 loopback (::1)")
def test_serve_ipv6() -> None:
    with serve_process("--host", "::1", "--port", "0") as sp:
        assert sp.host == "::1"
        with sp.connect() as sock:
            assert round_trip(sock, b"over ipv6") == b"OVER IPV6"
        result = run_muxio("connect", "--host", "::1", "--port", str(sp.port), input=b"v6")
        assert result.stdout == b"V6"
        sp.signal(signal.SIGTERM)
        assert sp.wait(20) == 0


# -- one line on stderr, the right exit code ------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "abc"],
        ["serve", "--port", "70000"],
        ["serve", "--port", "-1"],
        ["serve", "--port", "0", "--poller", "nosuch"],
        ["serve", "--port", "0", "--poller", MISSING_POLLER],
        ["serve", "--port", "0", "--service", "nosuch"],
        ["serve", "--port", "0", "--max-connections", "0"],
        ["serve", "--port", "0", "--idle-timeout", "-1"],
        ["serve", "--port", "0", "--log-level", "loud"],
        ["connect", "--port", "abc"],
        ["frobnicate"],
    ],
    ids=lambda a: " ".join(a),
)
def test_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    if "" in args:
        pytest.skip("this OS provides every poller: none to refuse")
    result = run_muxio(*args, stdin=subprocess.DEVNULL)
    line = one_line(result.stderr)
    assert result.returncode == 2, line
    assert result.stdout == b""
    assert line.startswith("muxio")


def test_address_in_use_exits_1_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_muxio("serve", "--port", str(port), stdin=subprocess.DEVNULL)
    line = one_line(result.stderr)
    assert result.returncode == 1, line
    assert "address already in use" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["serve", "--unix", "/nonexistent-dir/muxio.sock"], "cannot listen on"),
        (["serve", "--host", "nosuch.invalid", "--port", "0"], "cannot resolve"),
        (["serve", "--host", "192.0.2.1", "--port", "0"], "address not available"),
        (["connect", "--unix", "/nonexistent-dir/muxio.sock"], "cannot connect"),
    ],
    ids=["unix-dir", "bad-host", "foreign-address", "connect-unix"],
)
def test_runtime_errors_exit_1_with_one_line(args: list[str], message: str) -> None:
    result = run_muxio(*args, input=b"")
    line = one_line(result.stderr)
    assert result.returncode == 1, line
    assert message in line


def test_connect_to_closed_port_exits_1_with_one_line() -> None:
    with socket.socket() as reserved:
        # bound but not listening: the port is ours and refuses connections
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        result = run_muxio("connect", "--port", str(port), input=b"hi")
    line = one_line(result.stderr)
    assert result.returncode == 1, line
    assert "connection refused" in line
    assert result.stdout == b""


# -- connect, piped ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def upper_server() -> Iterator[ServerThread]:
    with running_server() as srv:
        yield srv


def test_connect_pipe_hi(upper_server: ServerThread) -> None:
    result = run_muxio("connect", "--port", str(upper_server.port), input=b"hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"HI"
    assert result.stderr == b""


@pytest.mark.timeout(120)
def test_connect_pipe_100mib_binary_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(100 * 1024 * 1024)
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(data)
    expected = hashlib.sha256(data.upper()).hexdigest()
    del data
    with serve_process("--port", "0") as sp, src.open("rb") as fin, dst.open("wb") as fout:
        result = run_muxio(
            "connect",
            "--port",
            str(sp.port),
            stdin=fin,
            stdout=fout,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert dst.stat().st_size == src.stat().st_size
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == expected


# -- connect, on a terminal ----------------------------------------------------------------


class Terminal:
    """`muxio connect` with a pseudo-terminal as stdin, stdout and stderr."""

    def __init__(self, port: int) -> None:
        master, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(
                [*MUXIO, "connect", "--port", str(port)],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
            )
        finally:
            os.close(slave)
        self.master = master
        self.out = bytearray()
        self.eof = False

    def read_until(self, done: Callable[[bytes], bool], timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while not done(bytes(self.out)):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise AssertionError(f"terminal output so far: {bytes(self.out)!r}")
            readable, _, _ = select.select([self.master], [], [], remaining)
            if not readable:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed its side
                chunk = b""
            if not chunk:
                self.eof = True
            self.out += chunk
        return bytes(self.out)

    def read_to_end(self, timeout: float = 10.0) -> bytes:
        with contextlib.suppress(AssertionError):
            self.read_until(lambda _: False, timeout)
        return bytes(self.out)

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def prompts(self) -> int:
        return bytes(self.out).count(b">>>:")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        os.close(self.master)


@contextlib.contextmanager
def terminal(port: int) -> Iterator[Terminal]:
    term = Terminal(port)
    try:
        yield term
    finally:
        term.close()


class Recorder(Protocol):
    """Uppercase echo that keeps every byte it received."""

    received = bytearray()
    lock = threading.Lock()

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        with self.lock:
            self.received += data
        self.transport.write(data.upper())


def test_connect_interactive(server_factory: Callable[..., ServerThread]) -> None:
    Recorder.received = bytearray()
    srv = server_factory(Recorder)
    with terminal(srv.port) as term:
        term.read_until(lambda out: b">>>:" in out)
        term.type(b"hello\n")
        term.read_until(lambda out: b"HELLO" in out and out.count(b">>>:") == 2)
        # an empty line sends nothing and prompts again
        term.type(b"\n")
        term.read_until(lambda out: out.count(b">>>:") == 3)
        # just the echo of the Enter key (the reply may be printed after the prompt)
        assert term.out.split(b">>>:")[2].replace(b"HELLO\r\n", b"") == b"\r\n"
        term.type(b"  abc  \n")
        term.read_until(lambda out: b"ABC" in out and out.count(b">>>:") == 4)
        with Recorder.lock:
            assert bytes(Recorder.received) == b"hello\nabc\n"
        term.type(b"\x04")  # Ctrl-D
        assert term.proc.wait(10) == 0
        out = term.read_to_end(2)
    assert b"Traceback" not in out
    assert b"muxio:" not in out


def test_connect_interactive_server_killed() -> None:
    with serve_process("--port", "0") as sp, terminal(sp.port) as term:
        term.read_until(lambda out: b">>>:" in out)
        term.type(b"hello\n")
        term.read_until(lambda out: b"HELLO" in out and out.count(b">>>:") == 2)
        sp.proc.kill()
        sp.proc.wait(10)
        term.type(b"anyone there?\n")
        assert term.proc.wait(10) == 1
        out = term.read_to_end(2).decode("utf-8", "replace")
    assert "Traceback" not in out
    after = out.split("anyone there?", 1)[1]
    messages = [line for line in after.splitlines() if line.strip()]
    assert len(messages) == 1, out
    assert messages[0].startswith("muxio: the server"), out


def test_connect_interactive_shows_line_service_replies_as_they_arrive() -> None:
    with serve_process("--port", "0", "--service", "work", "--offload", "threads") as sp:
        with terminal(sp.port) as term:
            term.read_until(lambda out: b">>>:" in out)
            term.type(b"work 50\n")
            term.read_until(lambda out: b"WORK 50\r\n" in out)
            term.type(b"hi there\n")
            term.read_until(lambda out: b"HI THERE\r\n" in out)
            term.type(b"\x04")
            assert term.proc.wait(10) == 0
            out = term.read_to_end(2)
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert b"Traceback" not in out
    assert b"muxio:" not in out


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(factory: Callable[[], Protocol]) -> ServerThread:
        srv = ServerThread(factory).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def test_serve_round_trip_unix_socket(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cli.sock"
    sp = ServeProcess("--unix", str(path))
    try:
        sp.wait_line(r"listening on", timeout=15)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            assert round_trip(sock, b"over unix") == b"OVER UNIX"
        result = run_muxio("connect", "--unix", str(path), input=b"piped")
        assert result.stdout == b"PIPED"
        sp.signal(signal.SIGTERM)
        assert sp.wait(20) == 0
    finally:
        sp.kill()
    assert not path.exists()


class ChatMember(Protocol):
    """A line-based chat: every line a member sends goes to every other member."""

    def __init__(self, members: set[ChatMember]) -> None:
        self.members = members
        self.buffer = b""

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.members.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            for other in self.members - {self}:
                other.transport.write(line + b"\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.members.discard(self)


def test_connect_interactive_prints_broadcasts_it_did_not_ask_for() -> None:
    members: set[ChatMember] = set()
    srv = ServerThread(lambda: ChatMember(members)).start()
    try:
        with terminal(srv.port) as alice, terminal(srv.port) as bob:
            alice.read_until(lambda out: b">>>:" in out)
            bob.read_until(lambda out: b">>>:" in out)
            assert srv.call(len, members) == 2
            alice.type(b"hello from alice\n")
            bob.read_until(lambda out: b"hello from alice\r\n" in out)
            bob.type(b"hi alice\n")
            alice.read_until(lambda out: b"hi alice\r\n" in out)
            for term in (alice, bob):
                term.type(b"\x04")
                assert term.proc.wait(10) == 0
            # the terminal echoes what was typed; the chat does not echo it back
            assert alice.read_to_end(1).count(b"hello from alice\r\n") == 1
            assert bob.read_to_end(1).count(b"hi alice\r\n") == 1
    finally:
        srv.stop()

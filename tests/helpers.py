"""Shared test helpers: an in-process server thread, a `muxio serve` subprocess,
and bounded socket I/O.

Every wait here has a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import muxio
from muxio import EventLoop, Server, bind_tcp
from muxio.services.upper import UpperEcho
from muxio.tools.process import ServerProcess

MUXIO_PATH = str(Path(muxio.__file__).resolve().parents[1])
"""Where the tests' muxio is imported from: a subprocess given it runs the same build."""

SUMMARY_RE = re.compile(r"shutdown complete: (?P<fields>.*)$")


def raise_nofile(wanted: int | None = None) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if wanted is not None:
        target = min(target, max(wanted, soft))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def one_line(stderr: bytes) -> str:
    """The one line a command wrote on stderr, no traceback: how muxio reports a mistake."""
    text = stderr.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (for a peer's config)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- an in-process server ------------------------------------------------------


class ServerThread:
    """EventLoop + Server running in a background thread.

    Everything that touches the loop's state from the test thread goes
    through `call()`, which runs a function on the loop thread and waits
    (bounded) for its result.
    """

    def __init__(
        self,
        protocol_factory: Callable[[], Any] = UpperEcho,
        *,
        poller: str = "auto",
        sockets: list[socket.socket] | None = None,
        **server_kwargs: Any,
    ) -> None:
        if sockets is None:
            sockets = bind_tcp("127.0.0.1", 0)
        self.loop = EventLoop(poller, slow_callback_ms=None)
        self.server = Server(self.loop, protocol_factory, sockets, **server_kwargs)
        self.sockets = sockets
        self.family = sockets[0].family
        self.address = sockets[0].getsockname()
        self._thread = threading.Thread(target=self._run, name="muxio-test-loop", daemon=True)
        self.error: BaseException | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self.address[1])

    def _run(self) -> None:
        try:
            self.loop.run_forever()
        except BaseException as exc:  # pragma: no cover - reported by stop()
            self.error = exc

    def start(self) -> ServerThread:
        self.server.start()
        self._thread.start()
        return self

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run `fn(*args)` on the loop thread and return its result."""
        fut: Future[Any] = Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll `predicate` on the loop thread until true or the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            if self.call(predicate):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def connection_count(self) -> int:
        return int(self.call(lambda: len(self.server.connections)))

    def connect(self, timeout: float = 10.0, **sockopts: int) -> socket.socket:
        """A blocking client socket (with `timeout`), sockopts set before connect."""
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        for name, value in sockopts.items():
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), value)
        sock.settimeout(timeout)
        sock.connect(self.address)
        return sock

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        assert not self._thread.is_alive(), "the server loop did not stop"
        # The loop thread is gone: its state now belongs to this thread.
        self.server.close()
        for transport in list(self.server.connections):
            transport.abort()
        self.loop.stop()
        self.loop.run_forever()
        self.loop.close()
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def running_server(*args: Any, **kwargs: Any) -> Iterator[ServerThread]:
    srv = ServerThread(*args, **kwargs).start()
    try:
        yield srv
    finally:
        srv.stop()


# -- a `muxio serve` subprocess -------------------------------------------------


class ServeProcess(ServerProcess):
    """`python -m muxio serve ARGS` (or any `argv`) with its stderr collected line by line.

    Starting, reading the "listening on" line and stopping are
    `muxio.tools.process`'s, shared with compare and the benchmark scripts.
    """

    def __init__(
        self,
        *args: str,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        cmd = [sys.executable, "-m", "muxio", "serve", *args] if argv is None else argv
        super().__init__(cmd, env=env, pass_fds=pass_fds, name="muxio serve")
        self.started_at = time.monotonic()

    def connect(self, timeout: float = 10.0, **sockopts: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        for name, value in sockopts.items():
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), value)
        sock.settimeout(timeout)
        sock.connect((self.host, self.port))
        return sock

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        rc = self.proc.wait(timeout)
        self.kill()  # already gone: only collects the rest of stderr
        return rc

    def summary(self) -> dict[str, str]:
        for line in reversed(self.lines):
            m = SUMMARY_RE.search(line)
            if m:
                return dict(f.split("=", 1) for f in m.group("fields").split())
        raise AssertionError(f"no summary line in {self.lines!r}")


@contextlib.contextmanager
def serve_process(*args: str) -> Iterator[ServeProcess]:
    sp = ServeProcess(*args)
    try:
        sp.wait_listening()
        yield sp
    finally:
        sp.kill()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# -- bounded socket I/O ------------------------------------------------------------


def recv_exactly(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    """Read exactly `n` bytes (fewer only at EOF), within `timeout` overall."""
    deadline = time.monotonic() + timeout
    parts: list[bytes] = []
    got = 0
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"got {got} of {n} bytes")
        sock.settimeout(remaining)
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def recv_until_eof(sock: socket.socket, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    parts: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no EOF after {sum(map(len, parts))} bytes")
        sock.settimeout(remaining)
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def sees_close(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True once the peer closed (EOF or reset) within `timeout`; data is skipped."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, ConnectionAbortedError):
            return True
        except TimeoutError:
            return False


def round_trip(sock: socket.socket, data: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    sock.sendall(data)
    return recv_exactly(sock, len(data), timeout)


def exchange(
    sock: socket.socket,
    data: bytes | list[bytes],
    *,
    expect: int | None = None,
    shut_wr: bool = True,
    timeout: float = 30.0,
) -> bytes:
    """Send `data` while reading replies, so neither side can deadlock.

    A list is sent chunk by chunk (no send crosses a chunk boundary).  Reads
    until `expect` bytes arrived or, if `expect` is None, until EOF.  With
    `shut_wr` the write side is shut down once everything was sent.
    """
    chunks = [data] if isinstance(data, bytes) else list(data)
    payload = b"".join(chunks)
    ends: list[int] = []
    pos = 0
    for c in chunks:
        pos += len(c)
        if c:
            ends.append(pos)
    if expect is None and not shut_wr:
        expect = len(payload)
    view = memoryview(payload)
    sent = 0
    boundary = 0
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    received = bytearray()
    sending = True
    try:
        if not ends:
            sending = False
            if shut_wr:
                sock.shutdown(socket.SHUT_WR)
            sel.register(sock, selectors.EVENT_READ)
        else:
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while True:
            if not sending and expect is not None and len(received) >= expect:
                return bytes(received)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"exchange: sent {sent}/{len(payload)}, received {len(received)} bytes"
                )
            for _key, mask in sel.select(min(remaining, 1.0)):
                if mask & selectors.EVENT_WRITE and sending:
                    with contextlib.suppress(BlockingIOError):
                        while sent < len(payload):
                            sent += sock.send(view[sent : ends[boundary]])
                            if sent == ends[boundary]:
                                boundary += 1
                    if sent == len(payload):
                        sending = False
                        if shut_wr:
                            sock.shutdown(socket.SHUT_WR)
                        sel.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        if sending or (expect is not None and len(received) < expect):
                            raise ConnectionError(f"EOF after {len(received)} bytes")
                        return bytes(received)
                    received += chunk
    finally:
        sel.close()
        sock.setblocking(True)


def send_until_blocked(
    sock: socket.socket, data: bytes, *, stall: float = 0.5, timeout: float = 10.0
) -> int:
    """Send `data` without reading until the socket stays unwritable for `stall` s.

    Returns how many bytes the kernel took.  Bounded by `timeout` overall.
    """
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        while sent < len(data) and time.monotonic() < deadline:
            if not sel.select(stall):
                break
            try:
                sent += sock.send(view[sent : sent + (1 << 20)])
            except BlockingIOError:
                continue
    sock.setblocking(True)
    return sent


def terminate(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

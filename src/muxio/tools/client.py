"""`muxio connect`: the tutorial's interactive client, and `nc` when piped.

On a terminal it prompts for lines, sends each with its newline, and
prints whatever the server sends as it arrives: an echo's replies, a line
service's late answers, a chat's broadcasts.  With stdin not a terminal it
streams both directions at once, so neither side can deadlock waiting on the other.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import sys
import threading
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import ssl

from ..errors import RuntimeFailure, UsageError

CHUNK = 256 * 1024


def open_connection(host: str, port: int, unix: str | None, timeout: float = 10.0) -> socket.socket:
    """Connect, turning the usual failures into one actionable sentence."""
    where = unix if unix else f"{host}:{port}"
    try:
        if unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(unix)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except FileNotFoundError:
        raise RuntimeFailure(
            f"cannot connect to {where}: no such socket file (is `muxio serve --unix` "
            "running with that path?)"
        ) from None
    except ConnectionRefusedError:
        if unix:
            raise RuntimeFailure(
                f"cannot connect to {where}: nothing is listening on that socket file "
                "(a server that stopped without removing it?)"
            ) from None
        raise RuntimeFailure(
            f"cannot connect to {where}: connection refused (is `muxio serve` running there?)"
        ) from None
    except UnicodeError:
        raise UsageError(
            "invalid --host: each dot-separated part of a name is 1 to 63 characters"
        ) from None
    except socket.gaierror as exc:
        raise RuntimeFailure(f"cannot resolve {host!r}: {exc.strerror}") from None
    except TimeoutError:
        raise RuntimeFailure(f"cannot connect to {where}: timed out") from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot connect to {where}: {exc.strerror or exc}") from None
    sock.settimeout(None)
    return sock


def _tls_failure(exc: OSError, where: str) -> RuntimeFailure:
    """One sentence for a handshake that did not end in a TLS connection."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return RuntimeFailure(
            f"TLS with {where}: the server's certificate is not trusted "
            f"({exc.verify_message}); pass --ca FILE with its CA, --server-name NAME "
            "with the name it was issued for, or --insecure to skip the check"
        )
    if isinstance(exc, TimeoutError):
        return RuntimeFailure(f"TLS handshake with {where} timed out")
    if isinstance(exc, ssl.SSLError) and exc.reason:
        reason = exc.reason
    else:
        reason = exc.strerror or "the server closed the connection"
    return RuntimeFailure(
        f"TLS handshake with {where} failed: {reason} "
        "(is the server speaking TLS? does it want a client certificate?)"
    )


def start_tls(
    sock: socket.socket, ctx: ssl.SSLContext, server_name: str | None, where: str, timeout: float
) -> ssl.SSLSocket:
    """The TLS handshake on a blocking socket, for the interactive client."""
    sock.settimeout(timeout)
    try:
        tls = ctx.wrap_socket(sock, server_hostname=server_name)
    except OSError as exc:
        sock.close()
        raise _tls_failure(exc, where) from None
    tls.settimeout(None)
    return tls


def interactive(sock: socket.socket) -> int:
    """Prompt for lines and show whatever the server sends, as it arrives.

    Replies are not tied to requests: a line service may answer late (``work``),
    a chat server broadcasts unasked, so one thread owns the socket, printing
    everything received while the prompt waits for the next line, which is
    sent with its newline since line servers need it.  Only that thread
    touches the socket: an `ssl.SSLSocket` must not read in one thread while
    another writes (OpenSSL's objects are not thread-safe; a reply was lost
    that way).  A server that closed is reported once, when the next line
    cannot be delivered.
    """
    session = _Session(sock)
    with sock, session:
        while True:
            try:
                line = input(">>>:").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return 0
            if session.gone.is_set():
                print("muxio: the server closed the connection", file=sys.stderr)
                return 1
            if not line:
                continue
            try:
                problem = session.send(line.encode("utf-8") + b"\n")
            except KeyboardInterrupt:
                print()
                return 0
            if problem is not None:
                print(f"muxio: the server went away ({problem})", file=sys.stderr)
                return 1


class _Line:
    """One line handed to the socket's thread; `done` is set once it is written or lost."""

    __slots__ = ("done", "view", "written")

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.done = threading.Event()
        self.written = False


class _Session:
    """The socket's one thread: prints what arrives, writes what `send` hands it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.gone = threading.Event()
        self.problem = "it closed the connection"
        self._fd = sock.fileno()
        self._pending = getattr(sock, "pending", None)  # TLS: bytes decrypted, not yet read
        ssl = sys.modules.get("ssl") if self._pending is not None else None
        # TLS's want-read/want-write are, on a non-blocking socket, just "not yet"
        self._not_yet: tuple[type[BaseException], ...] = (BlockingIOError, InterruptedError)
        if ssl is not None:
            self._not_yet += (ssl.SSLWantReadError, ssl.SSLWantWriteError)
        self._lock = threading.Lock()
        self._outbox: list[_Line] = []
        self._wake_r, self._wake_w = os.pipe()
        sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="muxio-connect-io", daemon=True)
        self._thread.start()

    def send(self, data: bytes) -> str | None:
        """Hand `data` to the socket's thread; wait until it is written or the server is gone."""
        line = _Line(data)
        with self._lock:
            if self.gone.is_set():
                return self.problem
            self._outbox.append(line)
        os.write(self._wake_w, b"x")
        line.done.wait()
        return None if line.written else self.problem

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        os.write(self._wake_w, b"q")
        self._thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        fd, out = self._fd, sys.stdout.fileno()
        current: _Line | None = None
        try:
            while True:
                buffered = self._pending is not None and self._pending()
                readable, _, _ = select.select(
                    [fd, self._wake_r], [fd] if current else [], [], 0 if buffered else None
                )
                if self._wake_r in readable and b"q" in os.read(self._wake_r, 512):
                    return
                # Read first: a server killed while a line was typed has sent its FIN, and
                # writing the line first would succeed (the kernel takes it), report it
                # delivered, and leave the prompt waiting for input that nobody answers.
                if buffered or fd in readable:
                    got = self._read()
                    if got == b"":
                        return
                    view = memoryview(got or b"")
                    while view:
                        view = view[os.write(out, view) :]
                while True:
                    if current is None:
                        with self._lock:
                            if not self._outbox:
                                break
                            current = self._outbox.pop(0)
                    if not self._write(current):
                        break
                    current = None
        except OSError as exc:
            self.problem = exc.strerror or str(exc)
        finally:
            with self._lock:
                self.gone.set()
                lost, self._outbox = self._outbox, []
            for line in (current, *lost):
                if line is not None:
                    line.done.set()

    def _write(self, line: _Line) -> bool:
        """One non-blocking send: whether the line is all written (a retry sends the same bytes)."""
        try:
            line.view = line.view[self.sock.send(line.view) :]
        except self._not_yet:
            return False
        if line.view:
            return False
        line.written = True
        line.done.set()
        return True

    def _read(self) -> bytes | None:
        try:
            return self.sock.recv(CHUNK)
        except self._not_yet:
            return None


def pipe(
    sock: socket.socket, stdin: BinaryIO, stdout: BinaryIO, timeout: float | None = None
) -> int:
    """Copy stdin to the server and the server to stdout until both directions end.

    A server that closes while input is still being sent ends the copy at
    once, with exit 1: waiting for stdin to end (perhaps never, on a pipe
    from a live program) would report nothing.  With `timeout`, a server
    silent for that long ends it too.
    """
    failure: list[str] = []

    def upload() -> None:
        fd = stdin.fileno()
        try:
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                failure.append(f"sending failed: {exc.strerror or exc}")
            else:
                failure.append("the server closed the connection before all input was sent")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    sender = threading.Thread(target=upload, name="muxio-upload", daemon=True)
    sender.start()
    out = stdout.fileno()
    try:
        while True:
            try:
                chunk = _recv(sock, timeout)
            except TimeoutError:
                print(
                    f"muxio: no reply from the server for {timeout:g} s (--timeout)",
                    file=sys.stderr,
                )
                return 1
            if not chunk:
                sender.join(0.5)  # a sender that just sent its EOF is about to end
                if sender.is_alive() and not failure:
                    print(
                        "muxio: the server closed the connection before all input was sent",
                        file=sys.stderr,
                    )
                    return 1
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
    except ConnectionResetError:
        failure.append("the server reset the connection")
    except BrokenPipeError:
        return 0
    sender.join()
    sock.close()
    if failure:
        print(f"muxio: {failure[0]}", file=sys.stderr)
        return 1
    return 0


def _recv(sock: socket.socket, timeout: float | None) -> bytes:
    """One recv, waiting at most `timeout` (the socket itself stays blocking for the sender)."""
    if timeout is not None:
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            raise TimeoutError
    return sock.recv(CHUNK)


def pipe_tls(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    server_name: str | None,
    where: str,
    stdin: BinaryIO,
    stdout: BinaryIO,
    *,
    timeout: float | None = None,
    handshake_timeout: float = 10.0,
) -> int:
    """`pipe()` over TLS, in one thread, on a memory BIO.

    An SSL connection is not safe to share between two threads, and an
    `SSLSocket` cannot send its close_notify and go on reading (its `unwrap`
    hands back the raw socket), so this drives the TLS engine by hand: at
    the end of input goes our close_notify, then a FIN; the copy ends at the
    server's close_notify or EOF, as over plain TCP.
    """
    import selectors
    import ssl
    import time

    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    sock.setblocking(False)
    fd_in = stdin.fileno()
    out = stdout.fileno()
    wire = bytearray()
    handshaking = True
    input_done = notified = fin = eof = False
    deadline = time.monotonic() + handshake_timeout
    # poll and select accept a regular file on stdin; epoll refuses it
    kind = getattr(selectors, "PollSelector", selectors.SelectSelector)
    with kind() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while True:
            if handshaking:
                try:
                    tls.do_handshake()
                    handshaking = False
                except ssl.SSLWantReadError:
                    if eof:
                        raise _tls_failure(ConnectionResetError(), where) from None
                except ssl.SSLError as exc:
                    raise _tls_failure(exc, where) from None
            if input_done and not notified:
                notified = True
                with contextlib.suppress(ssl.SSLWantReadError):
                    tls.unwrap()
            wire += outgoing.read()
            if notified and not wire and not fin:
                fin = True
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            reading_input = not (handshaking or input_done) and len(wire) < CHUNK
            if reading_input and fd_in not in sel.get_map():
                sel.register(fd_in, selectors.EVENT_READ)
            elif not reading_input and fd_in in sel.get_map():
                sel.unregister(fd_in)
            want = (0 if eof else selectors.EVENT_READ) | (selectors.EVENT_WRITE if wire else 0)
            if want:
                sel.modify(sock, want)
            elif sock in sel.get_map():
                sel.unregister(sock)
            wait = timeout
            if handshaking:
                wait = max(0.0, deadline - time.monotonic())
            ready = sel.select(wait)
            if not ready:
                if handshaking:
                    raise _tls_failure(TimeoutError(), where)
                print(
                    f"muxio: no reply from the server for {timeout:g} s (--timeout)",
                    file=sys.stderr,
                )
                return 1
            for key, mask in ready:
                if key.fd == fd_in:
                    chunk = os.read(fd_in, CHUNK)
                    if chunk:
                        tls.write(chunk)
                    else:
                        input_done = True
                    continue
                if mask & selectors.EVENT_WRITE:
                    try:
                        del wire[: sock.send(wire)]
                    except BlockingIOError:
                        pass
                    except OSError:
                        print(
                            "muxio: the server closed the connection before all input was sent",
                            file=sys.stderr,
                        )
                        return 1
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        print(
                            f"muxio: the server went away ({exc.strerror or exc})",
                            file=sys.stderr,
                        )
                        return 1
                    if data:
                        incoming.write(data)
                    else:
                        eof = True
                        incoming.write_eof()
            if handshaking:
                continue
            while True:
                try:
                    data = tls.read(CHUNK)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    data = b""
                except ssl.SSLEOFError:
                    print(
                        "muxio: the server closed the connection without a TLS close_notify "
                        "(a refused client certificate, or a reply cut short)",
                        file=sys.stderr,
                    )
                    return 1
                except ssl.SSLError as exc:
                    print(f"muxio: the server went away ({exc.reason or exc})", file=sys.stderr)
                    return 1
                if not data:
                    if not (input_done and not wire):
                        print(
                            "muxio: the server closed the connection before all input was sent",
                            file=sys.stderr,
                        )
                        return 1
                    return 0
                view = memoryview(data)
                try:
                    while view:
                        view = view[os.write(out, view) :]
                except BrokenPipeError:
                    return 0


def run_client(
    host: str,
    port: int,
    unix: str | None,
    *,
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> int:
    sock = open_connection(host, port, unix, timeout=timeout or 10.0)
    if tls is not None:
        where = unix if unix else f"{host}:{port}"
        if not sys.stdin.isatty():
            sys.stdout.flush()
            with sock:
                return pipe_tls(
                    sock,
                    tls,
                    server_name,
                    where,
                    sys.stdin.buffer,
                    sys.stdout.buffer,
                    timeout=timeout,
                    handshake_timeout=timeout or 10.0,
                )
        sock = start_tls(sock, tls, server_name, where, timeout or 10.0)
    if sys.stdin.isatty():
        if timeout is not None:
            sock.settimeout(timeout)
        return interactive(sock)
    sys.stdout.flush()
    return pipe(sock, sys.stdin.buffer, sys.stdout.buffer, timeout)

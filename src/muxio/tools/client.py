"""`muxio connect`: the tutorial's interactive client, and `nc` when piped.

On a terminal it is the tutorial's loop — prompt, send a line, print the
reply.  The uppercase echo answers with exactly as many bytes as it was sent,
so the client waits for that many instead of trusting one `recv` to hold a
whole reply.  With stdin not a terminal it streams both directions at once,
one thread each, so neither side can deadlock waiting on the other.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import threading
from typing import BinaryIO

from ..errors import RuntimeFailure

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
    except (ConnectionRefusedError, FileNotFoundError):
        raise RuntimeFailure(
            f"cannot connect to {where}: connection refused (is `muxio serve` running there?)"
        ) from None
    except socket.gaierror as exc:
        raise RuntimeFailure(f"cannot resolve {host!r}: {exc.strerror}") from None
    except TimeoutError:
        raise RuntimeFailure(f"cannot connect to {where}: timed out") from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot connect to {where}: {exc.strerror or exc}") from None
    sock.settimeout(None)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read `n` bytes; fewer means the server closed the connection."""
    parts = []
    while n > 0:
        chunk = sock.recv(min(n, CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def interactive(sock: socket.socket) -> int:
    """The tutorial's loop, with the ends it left open closed."""
    with sock:
        while True:
            try:
                line = input(">>>:").strip()
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print()
                return 0
            if not line:
                continue
            data = line.encode("utf-8")
            try:
                sock.sendall(data)
                reply = recv_exactly(sock, len(data))
            except OSError as exc:
                print(f"muxio: the server went away ({exc.strerror or exc})", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print()
                return 0
            if len(reply) < len(data):
                print("muxio: the server closed the connection", file=sys.stderr)
                return 1
            print(reply.decode("utf-8", errors="replace"))


def pipe(sock: socket.socket, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Copy stdin to the server and the server to stdout until both directions end."""
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
            chunk = sock.recv(CHUNK)
            if not chunk:
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


def run(host: str, port: int, unix: str | None) -> int:
    sock = open_connection(host, port, unix)
    if sys.stdin.isatty():
        return interactive(sock)
    sys.stdout.flush()
    return pipe(sock, sys.stdin.buffer, sys.stdout.buffer)

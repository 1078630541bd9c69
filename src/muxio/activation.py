"""Listening sockets handed in by another process: a descriptor number, or systemd's.

A service manager (systemd, s6, a supervisor of our own) binds the port and
passes the open socket down, so the server needs no privilege for port 80,
restarts lose no connection the kernel already queued, and several
processes can share one socket.  What comes in is checked before it is
served: a descriptor that is not a listening stream socket of a family we
serve is refused with one line, not discovered later as a strange failure.

systemd's protocol (sd_listen_fds(3)): descriptors from 3 on, ``LISTEN_FDS``
of them, meant for the process whose pid is ``LISTEN_PID``, with optional
colon-separated ``LISTEN_FDNAMES``.  The variables are removed once taken,
so a child process (the offload pool, a worker) does not take them too.
"""

from __future__ import annotations

import os
import socket

from .errors import UsageError

SD_LISTEN_FDS_START = 3
_FAMILIES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6", socket.AF_UNIX: "Unix"}


def socket_from_fd(fd: int, source: str) -> socket.socket:
    """The listening stream socket open on `fd`; `source` names where `fd` came from.

    The socket is switched to non-blocking and marked close-on-exec, as
    bound ones are.
    """
    try:
        os.fstat(fd)
    except OSError:
        raise UsageError(
            f"{source}: descriptor {fd} is not open (pass an open listening socket)"
        ) from None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        raise UsageError(
            f"{source}: descriptor {fd} is not a socket (pass a listening TCP or Unix socket)"
        ) from None
    try:
        if sock.family not in _FAMILIES:
            raise UsageError(
                f"{source}: descriptor {fd} is a socket of family {sock.family!r}; "
                "muxio serves IPv4, IPv6 and Unix sockets"
            )
        if sock.type != socket.SOCK_STREAM:
            raise UsageError(
                f"{source}: descriptor {fd} is a {sock.type.name} socket, not a stream one "
                "(in a .socket unit use ListenStream=)"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise UsageError(
                f"{source}: descriptor {fd} is a socket that is not listening "
                "(call listen() on it before handing it in)"
            )
    except BaseException:
        sock.detach()  # the descriptor is the caller's: never close what we did not open
        raise
    sock.setblocking(False)
    os.set_inheritable(fd, False)
    return sock


def systemd_sockets(environ: dict[str, str] | None = None) -> list[socket.socket] | None:
    """The sockets systemd passed to this process, or None when it passed none.

    The ``LISTEN_*`` variables are removed from `environ` (default
    `os.environ`) when they name this process.
    """
    env = os.environ if environ is None else environ
    count_text = env.get("LISTEN_FDS")
    if count_text is None:
        return None
    pid_text = env.get("LISTEN_PID", "")
    if pid_text.strip() != str(os.getpid()):
        return None  # meant for another process (our parent, most likely)
    names_text = env.get("LISTEN_FDNAMES")
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if not (count_text.isascii() and count_text.isdigit()) or not 0 < int(count_text) < 1024:
        raise UsageError(
            f"LISTEN_FDS={count_text[:20]!r} is not a number of sockets from 1 to 1023"
        )
    count = int(count_text)
    names = names_text.split(":") if names_text else []
    sockets: list[socket.socket] = []
    try:
        for i in range(count):
            name = f" ({names[i]})" if i < len(names) and names[i] else ""
            fd = SD_LISTEN_FDS_START + i
            sockets.append(socket_from_fd(fd, f"LISTEN_FDS socket {i + 1}{name}"))
    except BaseException:
        for sock in sockets:
            sock.detach()
        raise
    return sockets


__all__ = ["socket_from_fd", "systemd_sockets"]
